"""Shared GPU pieces: launch geometry, tap maps on the device, the fold of the
transposed op's non-zero padding modes (on :func:`numbaconv.common.with_fold`),
dtype helpers."""

from __future__ import annotations

import functools

import numba
import numpy as np
from numba import cuda

from .. import common, config
from ..shapes import conv_tap_map, gather_tap_map, scatter_tap_map

MAX_GRID_Y = 65535


def blocks_1d(total: int) -> tuple[int, int]:
    """(blocks, threads) of a 1-D grid-stride launch over ``total`` items."""
    threads = int(config.cuda_threads)
    return max(1, min(-(-total // threads), int(config.cuda_max_blocks))), threads


def to_device(a):
    return cuda.to_device(np.ascontiguousarray(a))


class DeviceMaps(tuple):
    """``(fd, fh, fw, geo)`` on the device (what the kernels take, splatted),
    with ``.geo``, the geometry on the host: the index of position ``o`` at
    tap ``k`` in dim ``i`` is ``f[o * geo[3i] + k * geo[3i+1] + geo[3i+2]]``
    (-1: none)."""

    geo: list


def _device_maps(pairs) -> DeviceMaps:
    """The compact maps ``(f, geo)`` of the three dims (``shapes.*_tap_map``) on the device."""
    geo = [int(v) for _, g in pairs for v in g[:3]]
    maps = DeviceMaps((*(to_device(f) for f, _ in pairs), to_device(np.array(geo, dtype=np.int64))))
    maps.geo = geo
    return maps


def conv_maps(plan) -> DeviceMaps:
    """The conv's tap maps: output position x tap -> input (or -1)."""
    return _device_maps(
        [
            conv_tap_map(
                plan.in_size[i],
                plan.out_size[i],
                plan.kernel[i],
                plan.stride[i],
                plan.dilation[i],
                *plan.padding[i],
                plan.mode(i),
            )  # fmt: skip
            for i in range(3)
        ]
    )


def gather_maps(plan, lo, size) -> DeviceMaps:
    """The transposed op's gather maps (output position x tap -> input or -1)
    for a target of ``size`` with padding ``lo`` removed."""
    return _device_maps(
        [
            gather_tap_map(size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo[i], plan.in_size[i])
            for i in range(3)
        ]
    )


def scatter_maps(plan, lo, size) -> DeviceMaps:
    """Input position x tap -> output position (or -1) of the transposed op."""
    return _device_maps(
        [
            scatter_tap_map(plan.in_size[i], size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo[i])
            for i in range(3)
        ]
    )


def zeros(shape, dtype):
    out = cuda.device_array(shape, dtype=dtype)
    fill(out.reshape(out.size), np.dtype(dtype).type(0))
    return out


def fill(flat, value):
    """Set every element of the 1-D device array ``flat`` to ``value``."""
    blocks, threads = blocks_1d(flat.size)
    _fill_kernel[blocks, threads](flat, value)


@cuda.jit
def _fill_kernel(flat, value):
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < flat.size:
        flat[i] = value
        i += step


@cuda.jit
def _set_nan_kernel(out, mask, value):
    # out[n, o, d, h, w] = value where mask[o, d, h, w]
    N, O, OD, OH, OW = out.shape
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < N * O * OD * OH * OW:
        w = i % OW
        r = i // OW
        h = r % OH
        r //= OH
        d = r % OD
        r //= OD
        o = r % O
        n = r // O
        if mask[o, d, h, w]:
            out[n, o, d, h, w] = value
        i += step


@cuda.jit
def _nonfinite_kernel(flat, flag):
    # flag[0] = 1 if any value of flat is NaN or +-Inf (v - v is NaN exactly then)
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < flat.size:
        d = flat[i] - flat[i]
        if d != d:
            flag[0] = 1
        i += step


def any_nonfinite(arr) -> bool:
    """Whether a device array holds a NaN or an Inf (one int copied back)."""
    flag = to_device(np.zeros(1, np.int32))
    blocks, threads = blocks_1d(arr.size)
    _nonfinite_kernel[blocks, threads](arr.reshape(arr.size), flag)
    return bool(flag.copy_to_host()[0])


def set_nan(out5, mask) -> None:
    """NaN into the device result where the host ``mask`` (C_out, OD, OH, OW) is set (None: nothing)."""
    if mask is None:
        return
    blocks, threads = blocks_1d(out5.size)
    _set_nan_kernel[blocks, threads](
        out5, to_device(mask.astype(np.uint8)), np.dtype(out5.dtype).type(np.nan)
    )


def bias_or_zeros(bias, plan):
    if bias is not None:
        return bias
    return zeros((plan.c_out,), plan.dtype)


# ----------------------------------------------------------------------------
# non-zero padding modes of the transposed op: extended output, then a fold.
# The fold is a gather (a thread per output element sums the extended
# positions that fold onto it: CSR lists per dim), so it is deterministic.


def _fold_lists(f, out: int):
    """CSR (indptr, positions): the extended positions folding onto each of the
    ``out`` outputs, from the fold map ``f`` (``common.fold_maps``)."""
    order = np.argsort(f, kind="stable")
    f_sorted = f[order]
    keep = f_sorted >= 0
    order, f_sorted = order[keep], f_sorted[keep]
    indptr = np.searchsorted(f_sorted, np.arange(out + 1))
    return indptr.astype(np.int64), order.astype(np.int64)


@cuda.jit
def _fold_kernel(ext, bias, out, pd, qd, ph, qh, pw, qw):
    # out[n, o, a, b, c] = bias[o] + sum of ext[n, o, e0, e1, e2] over the
    # extended positions e folding onto (a, b, c)
    N, O, OD, OH, OW = out.shape
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    total = N * O * OD * OH * OW
    while i < total:
        c = i % OW
        r = i // OW
        b = r % OH
        r //= OH
        a = r % OD
        r //= OD
        o = r % O
        n = r // O
        acc = bias[o]
        for u in range(pd[a], pd[a + 1]):
            for v in range(ph[b], ph[b + 1]):
                for t in range(pw[c], pw[c + 1]):
                    acc += ext[n, o, qd[u], qh[v], qw[t]]
        out[n, o, a, b, c] = acc
        i += step


def with_fold(plan, x5, bias, out5, body):
    """:func:`numbaconv.common.with_fold` on device arrays; the fold is a
    gather kernel over CSR lists (deterministic, no atomics)."""
    if bias is None:
        bias = zeros((plan.c_out,), plan.dtype)
    dev = []
    if plan.folds:
        maps = common.fold_maps(plan)
        lists = [_fold_lists(maps[i], plan.out_size[i]) for i in range(3)]
        dev = [to_device(a) for pair in lists for a in pair]

    def fold(ext, b, dst):
        blocks, threads = blocks_1d(dst.size)
        _fold_kernel[blocks, threads](ext, b, dst, *dev)

    return common.with_fold(
        plan,
        x5,
        bias,
        out5,
        body,
        empty=lambda shape: cuda.device_array(shape, dtype=plan.dtype),
        zeros=lambda shape: zeros(shape, plan.dtype),
        fold=fold,
    )


def fold_fits(plan) -> str | None:
    """None when the extended output of the non-zero padding modes fits
    ``config.workspace_bytes``, else why not."""
    need = common.fold_workspace(plan)
    if need > config.workspace_bytes:
        return (
            f"the extended output of one sample ({need} bytes) for padding_mode="
            f"{plan.padding_mode!r} exceeds config.workspace_bytes={config.workspace_bytes}"
        )
    return None


@functools.cache
def numba_type(dtype_str: str):
    return numba.from_dtype(np.dtype(dtype_str))
