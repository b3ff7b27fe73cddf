"""What the CPU and GPU paths share: weight re-layouts, the dilated flipped
kernel, the transposed op's fold of non-zero padding modes, workspace chunking
and the GPU roofline's operation counts.

Array helpers take NumPy arrays or anything with the same API (CuPy arrays),
so both devices use one definition. Nothing here compiles a kernel.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections import OrderedDict

import numpy as np

from . import config
from .shapes import ConvPlan, conv_tap_maps, expand, tap_table


def batch_chunk(batch: int, per_sample: int) -> int:
    """Samples per chunk so a per-sample buffer fits ``config.workspace_bytes``
    (at least one: a single sample may exceed the budget)."""
    return max(1, min(batch, config.workspace_bytes // max(per_sample, 1)))


def aligned_copy(a: np.ndarray, align: int = 64) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data starts on an ``align``-byte
    boundary (NumPy's large arrays start 16 bytes into a page: every vector
    load of a packed weight then spans two cache lines)."""
    raw = np.empty(a.nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


class WeightCache:
    """Values derived from a weight (packed layouts, kernel spectra), kept for
    recent weights up to ``config.<setting>`` bytes in all (0: off), least
    recently used dropped first. A lookup compares the weight's bytes in full
    with a kept copy (no hash, so no collisions; a memory compare is ~10x
    cheaper than hashing), so an edited weight array is never served stale.
    Values are made read-only; thread-safe."""

    def __init__(self, setting: str):
        self.setting = setting
        self.entries: OrderedDict = OrderedDict()
        self.lock = threading.Lock()
        self.serial = itertools.count()  # distinguishes entries of equal keys

    def __len__(self):
        return len(self.entries)

    def clear(self):
        with self.lock:
            self.entries.clear()

    def get(self, w, key, make):
        """``make()``'s value for weight ``w`` under ``key`` (a tuple of the
        other things the value depends on), from the cache when kept."""
        limit = getattr(config, self.setting)
        wbytes = np.ascontiguousarray(w).view(np.uint8)
        key = (w.shape, w.dtype.str, key)
        if limit > 0:
            with self.lock:
                for k, (kept, value, _) in reversed(self.entries.items()):
                    if k[0] == key and _same_bytes(kept, wbytes):
                        self.entries.move_to_end(k)
                        return value
        value = make()
        arrays = [v for v in (value if isinstance(value, tuple) else (value,)) if isinstance(v, np.ndarray)]
        for a in arrays:
            a.flags.writeable = False
        size = wbytes.nbytes + sum(a.nbytes for a in arrays)
        if 0 < size <= limit:
            with self.lock:
                self.entries[key, next(self.serial)] = (wbytes.copy(), value, size)
                while sum(e[2] for e in self.entries.values()) > limit:
                    self.entries.popitem(last=False)
        return value


def _libc_memcmp():
    """The C library's ``memcmp`` (None where ctypes cannot find it)."""
    try:
        fn = ctypes.CDLL(None).memcmp
    except (OSError, AttributeError, TypeError):  # no C library linked in by name (Windows)
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    return fn


_MEMCMP = _libc_memcmp()


def _same_bytes(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two equal-length C-contiguous byte arrays hold the same bytes:
    small ones as Python bytes (~0.2 us where array_equal took ~3), large
    ones by the C library's ``memcmp`` (two streams read, no temporary, the
    GIL released: a 9.4 MB weight, out of cache, 0.67 ms where NumPy's
    compare of 8-byte words, which writes a mask, took 0.97 ms), else by
    NumPy."""
    a, b = a.reshape(-1), b.reshape(-1)
    if a.size <= 1 << 16:
        return a.tobytes() == b.tobytes()
    if _MEMCMP is not None:
        return _MEMCMP(a.ctypes.data, b.ctypes.data, a.size) == 0
    if a.size % 8 == 0:
        return bool(np.array_equal(a.view(np.uint64), b.view(np.uint64)))
    return bool(np.array_equal(a, b))


def transposed_as_conv(w5, groups: int):
    """The transposed op's weight ``(C_in, C_out/groups, *k)`` as the conv
    weight ``(C_out, C_in/groups, *k)`` of the same groups (a view where the
    array allows it): ``out[g*Og + o, c] = w[g*Cg + c, o]``."""
    c_in, og = w5.shape[0], w5.shape[1]
    k = tuple(w5.shape[2:])
    cg = c_in // groups
    return w5.reshape((groups, cg, og) + k).transpose(0, 2, 1, 3, 4, 5).reshape((groups * og, cg) + k)


def flipped(w5):
    """The kernel reversed along its three spatial dims (a view)."""
    return w5[:, :, ::-1, ::-1, ::-1]


def dilated_flipped(w5, dilation, zeros):
    """The dilated kernel (``dilation - 1`` zeros between taps), flipped:
    correlation with ``w5`` is convolution with this. ``zeros(shape, dtype)``
    allocates on the array's device (``np.zeros``, ``cupy.zeros``)."""
    spans = tuple(dilation[i] * (w5.shape[2 + i] - 1) + 1 for i in range(3))
    wd = zeros(tuple(w5.shape[:2]) + spans, dtype=w5.dtype)
    wd[:, :, :: dilation[0], :: dilation[1], :: dilation[2]] = w5
    return flipped(wd)


def nonfinite_padding_mask(plan: ConvPlan, w5):
    """Conv with zero padding: the outputs ``(C_out, OD, OH, OW)`` whose window
    puts a NaN or Inf weight on a padded position (None when there are none).
    PyTorch multiplies the padding's zeros too, and ``0 * inf`` and ``0 * nan``
    are NaN (as in the GEMM and FFT paths); kernels that skip padded taps set
    these outputs to NaN afterwards. One summing pass over the weights when
    they are finite (an overflowing sum only costs the exact check). ``w5`` is a host array."""
    if not any(plan.mode(i) == "zeros" and (lo or hi) for i, (lo, hi) in enumerate(plan.padding)):
        return None  # no zero padding in any dim (per-dim modes: the zero dims count)
    with np.errstate(all="ignore"):
        if np.isfinite(w5.sum()):  # one fast pass: NaN/Inf anywhere makes the sum non-finite
            return None
    bad = ~np.isfinite(w5).all(axis=1)  # (C_out, KD, KH, KW): a non-finite weight at that tap
    if not bad.any():
        return None
    fd, gd, fh, gh, fw, gw = conv_tap_maps(plan)
    pads = [expand(f, g) < 0 for f, g in ((fd, gd), (fh, gh), (fw, gw))]  # (out, taps): reads padding
    mask = np.zeros((plan.c_out,) + plan.out_size, dtype=bool)
    for kd, kh, kw in zip(*np.nonzero(bad.any(axis=0))):
        at_tap = pads[0][:, kd, None, None] | pads[1][None, :, kh, None] | pads[2][None, None, :, kw]
        mask[bad[:, kd, kh, kw]] |= at_tap
    return mask if mask.any() else None


def nan_where_padding_meets_nonfinite_weights(plan: ConvPlan, w5, out5) -> None:
    """:func:`nonfinite_padding_mask` applied to a host result ``out5``."""
    mask = nonfinite_padding_mask(plan, w5)
    if mask is not None:
        out5[:, mask] = np.nan


# ---------------------------------------------------------------------------
# The transposed op's non-zero padding modes: the adjoint of conv with mode m
# computes the result without padding onto the extended output
# (``plan.extended_size``) and then adds extended position q into output
# fold(q - lo), the same index map conv reads through (``shapes.tap_table``).


def fold_maps(plan: ConvPlan) -> list:
    """Per dim, the output position each extended position folds onto (-1: none)."""
    ext = plan.extended_size
    return [
        tap_table(ext[i], 1, 1, 1, plan.padding[i][0], plan.out_size[i], plan.mode(i))[:, 0] for i in range(3)
    ]


def fold_chunk(plan: ConvPlan) -> int:
    """Samples per extended buffer within ``config.workspace_bytes``."""
    return batch_chunk(plan.batch, _extended_sample_bytes(plan))


def _extended_sample_bytes(plan: ConvPlan) -> int:
    return plan.c_out * int(np.prod(plan.extended_size)) * plan.dtype.itemsize


def fold_workspace(plan: ConvPlan) -> int:
    """Bytes of the extended buffer (0 for zeros, which writes the output directly)."""
    if not plan.folds:
        return 0
    return fold_chunk(plan) * _extended_sample_bytes(plan)


def with_fold(plan: ConvPlan, x5, bias, out5, body, *, empty, zeros, fold):
    """Run the transposed op's ``body(x, bias, target, lo, size)`` straight into
    ``out5`` (zeros mode, ``lo`` the low padding and ``size`` the output size),
    or onto extended buffers (``lo`` 0, ``size`` the extended size, zero bias)
    that ``fold(ext, bias, dst)`` adds into ``out5`` chunk by chunk.

    ``empty(shape)`` and ``zeros(shape)`` allocate on the device of the
    arrays; ``bias`` None means zeros.
    """
    if bias is None:
        bias = zeros((plan.c_out,))
    if not plan.folds:
        body(x5, bias, out5, plan.padding_lo, plan.out_size)
        return out5
    ext_size = plan.extended_size
    chunk = fold_chunk(plan)
    buf = empty((chunk, plan.c_out) + ext_size)
    no_bias = zeros((plan.c_out,))
    for n0 in range(0, plan.batch, chunk):
        m = min(chunk, plan.batch - n0)
        ext = buf[:m]
        body(x5[n0 : n0 + m], no_bias, ext, (0, 0, 0), ext_size)
        fold(ext, bias, out5[n0 : n0 + m])
    return out5


# ---------------------------------------------------------------------------
# GPU rows: a roofline per method (see costs.SHIPPED_GPU)


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def gpu_roofline(method: str, plan: ConvPlan) -> dict[str, float]:
    """FLOPs and bytes moved by one GPU call of ``method`` (the FFT path:
    transform work), and one call."""
    item = plan.dtype.itemsize
    ins = plan.batch * plan.c_in * _prod(plan.in_size)
    outs = plan.batch * plan.c_out * _prod(plan.out_size)
    wts = plan.c_out * (plan.c_in // plan.groups) * _prod(plan.kernel)
    moved = (ins + outs + wts) * item
    flops = float(plan.flops)
    if method == "gemm":  # the patch matrix is written and read once more
        moved += 2 * plan.batch * _prod(plan.out_size) * plan.c_in * _prod(plan.kernel) * item
    if method == "fft":
        m = _prod(plan.padded_size)
        signals = plan.batch * (plan.c_in + plan.c_out) + wts // max(1, _prod(plan.kernel))
        flops = (
            5.0 * signals * m * max(1.0, float(np.log2(max(m, 2))))
            + 8.0 * plan.batch * plan.c_out * (plan.c_in // plan.groups) * m
        )
        moved += 4 * signals * m * item
    return {"call": 1.0, "flops": flops, "bytes": float(moved)}
