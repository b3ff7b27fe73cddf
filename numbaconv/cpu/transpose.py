"""Transposed convolution on the CPU: ``method="scatter"`` and ``method="gather"``.

Both take the canonical 5-D form: input ``(N, C_in, D, H, W)``, weight
``(C_in, C_out/groups, KD, KH, KW)``, output ``(N, C_out, OD, OH, OW)``.

* **scatter** (``_scatter_kernel``): every input element adds ``x * w`` into
  the outputs it touches, output position ``i * stride + k * dilation - lo``.
  Each prange task owns one output row (sample, block of 8 output channels,
  od, oh): it finds the input rows that reach it through the gather tables of
  D and H, and every element of those rows scatters into the row along W,
  held channels-last (the 8 channels adjacent) in a private accumulator. No
  two tasks write the same element (no atomics) and the order of the
  additions is fixed: results are bitwise identical from run to run.
* **gather**: every output element sums the inputs that reach it, i.e. the
  "zero-inserted input, stride-1 conv" view done by index arithmetic (a gather
  table of output position x tap -> input index or -1, no zero-inserted copy).
  It runs the channels-last kernel of :mod:`numbaconv.cpu.direct` with those
  tables, register tiles of two output pixels one stride apart (same phase,
  so the same taps are valid for both).

Padding modes other than zeros are the adjoint of conv with that mode: the
result is computed without padding onto an extended output of size
``(L - 1) * stride + dilation * (k - 1) + 1`` per dim and then folded back
(``_fold_kernel``): extended position ``q`` adds into output
``fold(q - lo)``, the same index map conv reads through (``shapes.tap_table``).
The extended buffer is chunked over the batch within ``config.workspace_bytes``.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .. import config
from ..shapes import gather_tap_map, tap_table
from . import direct

# Kept literal here (not imported) because numba's on-disk cache keys on this
# file's contents; must equal numbaconv.config.FASTMATH.
_FASTMATH = {"reassoc", "contract"}


@njit(inline="always")
def _tap(f, g, o, k):
    # entry [o, k] of a compact tap map (shapes.gather_tap_map); kept here,
    # not imported, because numba's cache keys on this file's contents
    return f[o * g[0] + k * g[1] + g[2]]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _scatter_kernel(x, w8, bias, out, fd, gd, fh, gh, sw, dw, lo_w):
    # One task: sample n, group g, a block of 8 output channels, one output row
    # (od, oh). The inputs reaching that row are found through the gather
    # tables gd/gh (D, H); along W every input element of those rows scatters
    # x * w into the row, held channels-last in a small accumulator acc[ow, j]
    # so the 8 channels are one vector. w8: (G, nob, Cg, KD, KH, KW, 8), zero
    # past the group's last channel.
    N, C, D, H, W = x.shape
    G, nob, Cg, KD, KH, KW = w8.shape[0], w8.shape[1], w8.shape[2], w8.shape[3], w8.shape[4], w8.shape[5]
    O = out.shape[1]
    OD, OH, OW = out.shape[2], out.shape[3], out.shape[4]
    Og = O // G
    us = np.uint64(sw)
    for t in prange(N * G * nob * OD * OH):
        oh = t % OH
        r1 = t // OH
        od = r1 % OD
        r2 = r1 // OD
        b = r2 % nob
        r3 = r2 // nob
        g = r3 % G
        n = r3 // G
        nb = min(8, Og - b * 8)
        acc = np.zeros(OW * 8, dtype=out.dtype)
        for kd in range(KD):
            idd = _tap(fd, gd, od, kd)
            if idd < 0:
                continue
            for kh in range(KH):
                ih = _tap(fh, gh, oh, kh)
                if ih < 0:
                    continue
                for cl in range(Cg):
                    c = g * Cg + cl
                    for kw in range(KW):
                        off = kw * dw - lo_w
                        # inputs whose output iw * sw + off lies in [0, OW)
                        lo = min(max(0, -(off // sw)), W)
                        hi = max(min(W, (OW - 1 - off) // sw + 1), lo)
                        v0 = w8[g, b, cl, kd, kh, kw, 0]
                        v1 = w8[g, b, cl, kd, kh, kw, 1]
                        v2 = w8[g, b, cl, kd, kh, kw, 2]
                        v3 = w8[g, b, cl, kd, kh, kw, 3]
                        v4 = w8[g, b, cl, kd, kh, kw, 4]
                        v5 = w8[g, b, cl, kd, kh, kw, 5]
                        v6 = w8[g, b, cl, kd, kh, kw, 6]
                        v7 = w8[g, b, cl, kd, kh, kw, 7]
                        ulo = np.uint64(lo)
                        up = np.uint64(8 * (lo * sw + off))
                        step = np.uint64(8) * us
                        for i in range(np.uint64(hi - lo)):
                            xv = x[n, c, idd, ih, ulo + i]
                            q = up + i * step
                            acc[q] += xv * v0
                            acc[q + 1] += xv * v1
                            acc[q + 2] += xv * v2
                            acc[q + 3] += xv * v3
                            acc[q + 4] += xv * v4
                            acc[q + 5] += xv * v5
                            acc[q + 6] += xv * v6
                            acc[q + 7] += xv * v7
        for j in range(nb):
            o = g * Og + b * 8 + j
            bv = bias[o]
            for ow in range(OW):
                out[n, o, od, oh, ow] = acc[ow * 8 + j] + bv


@njit(parallel=True, cache=True)
def _fold_kernel(ext, bias, out, fd, fh, fw):
    # out[n, o] = bias[o] + sum over extended positions q of ext[n, o, q] at fold(q)
    N, O, ED, EH, EW = ext.shape
    for t in prange(N * O):
        o = t % O
        n = t // O
        out[n, o] = bias[o]
        for qd in range(ED):
            pd = fd[qd]
            if pd < 0:
                continue
            for qh in range(EH):
                ph = fh[qh]
                if ph < 0:
                    continue
                for qw in range(EW):
                    pw = fw[qw]
                    if pw >= 0:
                        out[n, o, pd, ph, pw] += ext[n, o, qd, qh, qw]


def extended_size(plan) -> tuple[int, int, int]:
    """Every position the transposed op reaches before padding is removed:
    ``(L - 1) * stride + dilation * (k - 1) + 1`` per dim."""
    return tuple(
        (plan.in_size[i] - 1) * plan.stride[i] + plan.dilation[i] * (plan.kernel[i] - 1) + 1 for i in range(3)
    )


def folds(plan) -> bool:
    """Whether the result goes through the extended buffer and the fold (modes other than zeros)."""
    return plan.padding_mode != "zeros"


def extended_workspace(plan) -> int:
    """Bytes of the extended-output buffer the non-zero padding modes use (0 for zeros)."""
    if not folds(plan):
        return 0
    ed, eh, ew = extended_size(plan)
    per_sample = plan.c_out * ed * eh * ew * plan.dtype.itemsize
    return direct.batch_chunk(plan.batch, per_sample) * per_sample


def with_fold(plan, x5, bias, out5, body):
    """Run ``body(x_chunk, bias, target, lo, size)`` straight into ``out5`` (zeros
    mode) or onto extended buffers folded into ``out5`` chunk by chunk."""
    if bias is None:
        bias = np.zeros(plan.c_out, dtype=plan.dtype)
    if not folds(plan):
        lo = tuple(p[0] for p in plan.padding)
        body(x5, bias, out5, lo, plan.out_size)
        return out5
    ext_size = extended_size(plan)
    per_sample = plan.c_out * int(np.prod(ext_size)) * plan.dtype.itemsize
    chunk = direct.batch_chunk(plan.batch, per_sample)
    buf = np.empty((chunk, plan.c_out) + ext_size, dtype=plan.dtype)
    zeros = np.zeros(plan.c_out, dtype=plan.dtype)
    fd, fh, fw = (
        tap_table(ext_size[i], 1, 1, 1, plan.padding[i][0], plan.out_size[i], plan.padding_mode)[:, 0]
        for i in range(3)
    )
    for n0 in range(0, plan.batch, chunk):
        m = min(chunk, plan.batch - n0)
        ext = buf[:m]
        body(x5[n0 : n0 + m], zeros, ext, (0, 0, 0), ext_size)
        _fold_kernel(ext, bias, out5[n0 : n0 + m], fd, fh, fw)
    return out5


def run_scatter(x5, w5, bias, plan, out5):
    """Transposed convolution by scatter-add (canonical 5-D arrays, see module doc)."""
    g = plan.groups
    cg = plan.c_in // g
    og = plan.c_out // g
    nob = -(-og // 8)
    kd, kh, kw = plan.kernel
    # (C_in, Og, k) -> (G, nob, Cg, k, 8), zero-padded to whole blocks of 8
    w8 = np.zeros((g, cg, nob * 8, kd, kh, kw), dtype=plan.dtype)
    w8[:, :, :og] = w5.reshape(g, cg, og, kd, kh, kw)
    w8 = np.ascontiguousarray(w8.reshape(g, cg, nob, 8, kd, kh, kw).transpose(0, 2, 1, 4, 5, 6, 3))

    def body(x, b, target, lo, size):
        (fd, gd), (fh, gh) = (
            gather_tap_map(size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo[i], plan.in_size[i])
            for i in range(2)
        )
        _scatter_kernel(x, w8, b, target, fd, gd, fh, gh, plan.stride[2], plan.dilation[2], lo[2])

    return with_fold(plan, x5, bias, out5, body)


def gather_supports(plan) -> str | None:
    """None when ``method="gather"`` can run the plan, else why not."""
    if not direct.channels_last_fits(plan):
        return (
            f"its channels-last copy of one input sample ({direct._sample_bytes(plan)} bytes) exceeds "
            f"config.workspace_bytes={config.workspace_bytes}"
        )
    return None


def run_gather(x5, w5, bias, plan, out5):
    """Transposed convolution by gathering (canonical 5-D arrays, see module doc)."""
    g = plan.groups
    cg = plan.c_in // g
    og = plan.c_out // g
    kd, kh, kw = plan.kernel
    # (C_in, Og, k) -> (G, Cg, Og, k) -> (G, Og, k, Cg) -> (C_out, KD, KH, KW * Cg)
    wc = np.ascontiguousarray(w5.reshape(g, cg, og, kd, kh, kw).transpose(0, 2, 3, 4, 5, 1))
    wc = wc.reshape(plan.c_out, kd, kh, kw * cg)

    def body(x, b, target, lo, size):
        tables = sum(
            (
                gather_tap_map(
                    size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo[i], plan.in_size[i]
                )
                for i in range(3)
            ),
            (),
        )
        runs = _gather_runs(plan, w5, lo[2], size[2])
        direct.run_channels_last(x, wc, b, target, tables, runs, plan.stride[2])

    return with_fold(plan, x5, bias, out5, body)


def _gather_runs(plan, w5, lo: int, size: int):
    """Contiguous runs for the gather (one group, dilation 1 in W).

    Output ``ow`` of phase ``r = (ow + lo) % s`` gathers taps ``kw = r, r + s,
    ...`` from inputs ``iw0, iw0 - 1, ...``: adjacent, so in the channels-last
    row they form one run of ``J * C`` elements, read against the phase's
    weight laid out in run order (taps reversed). Only phases with the full
    ``J = ceil(KW / s)`` taps and runs inside the input use it.
    """
    if plan.groups != 1 or plan.dilation[2] != 1:
        return None
    s = plan.stride[2]
    kw = plan.kernel[2]
    width = plan.in_size[2]
    c = plan.c_in
    j = -(-kw // s)
    ow = np.arange(size, dtype=np.int64)
    r = (ow + lo) % s
    taps = -(-(kw - r) // s)  # number of kw < KW with kw % s == r
    first = (ow + lo - r) // s  # input of tap r; tap r + m*s reads first - m
    last = first - (j - 1)
    rok = (taps == j) & (last >= 0) & (first < width)
    rst = np.where(rok, last * c, 0).astype(np.int64)
    # wr[r, o, kd, kh, m*C + c] = w[c, o, kd, kh, r + (J-1-m)*s] for full phases
    wconv = w5.transpose(1, 0, 2, 3, 4)  # (O, C, KD, KH, KW), one group
    o, _, kd, kh, _ = wconv.shape
    wr = np.zeros((s, o, kd, kh, j * c), dtype=w5.dtype)
    for ph in range(min(s, kw)):
        if -(-(kw - ph) // s) != j:
            continue
        for m in range(j):
            tap = ph + (j - 1 - m) * s
            wr[ph, :, :, :, m * c : (m + 1) * c] = wconv[:, :, :, :, tap].transpose(0, 2, 3, 1)
    return wr, rok, rst, r
