"""Transposed convolution on the CPU: ``method="scatter"`` and ``method="gather"``.

Both take the canonical 5-D form: input ``(N, C_in, D, H, W)``, weight
``(C_in, C_out/groups, KD, KH, KW)``, output ``(N, C_out, OD, OH, OW)``.

* **scatter** (``_scatter_kernel``): every input element adds ``x * w`` into
  the outputs it touches, output position ``i * stride + k * dilation - lo``.
  Each prange task owns one sample and a block of output channels and walks
  all the inputs of its group, so no two tasks write the same element (no
  atomics) and the order of the additions is fixed: results are bitwise
  identical from run to run.
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

import numba
import numpy as np
from numba import njit, prange

from .. import config
from ..shapes import gather_table, tap_table
from . import direct

# Kept literal here (not imported) because numba's on-disk cache keys on this
# file's contents; must equal numbaconv.config.FASTMATH.
_FASTMATH = {"reassoc", "contract"}
_SCATTER_OB = 8  # output channels per scatter task (at most)


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _scatter_kernel(x, w, bias, out, td, th, sw, dw, lo_w, ob):
    # td, th: (input index, tap) -> output index or -1; W by arithmetic.
    N, C, D, H, W = x.shape
    Og, KD, KH, KW = w.shape[1], w.shape[2], w.shape[3], w.shape[4]
    O = out.shape[1]
    OW = out.shape[4]
    G = O // Og
    Cg = C // G
    nob = (Og + ob - 1) // ob
    for t in prange(N * G * nob):
        b = t % nob
        r1 = t // nob
        g = r1 % G
        n = r1 // G
        ol = b * ob  # first output channel of the block within the group
        nb = min(ob, Og - ol)
        for j in range(nb):
            out[n, g * Og + ol + j] = bias[g * Og + ol + j]
        us = np.uint64(sw)
        for cl in range(Cg):
            c = g * Cg + cl
            for idd in range(D):
                for kd in range(KD):
                    pd = td[idd, kd]
                    if pd < 0:
                        continue
                    for ih in range(H):
                        for kh in range(KH):
                            ph = th[ih, kh]
                            if ph < 0:
                                continue
                            for kw in range(KW):
                                off = kw * dw - lo_w
                                # inputs whose output iw * sw + off lies in [0, OW)
                                lo = min(max(0, -(off // sw)), W)
                                hi = max(min(W, (OW - 1 - off) // sw + 1), lo)
                                cnt = np.uint64(hi - lo)
                                ulo = np.uint64(lo)
                                up = np.uint64(lo * sw + off)
                                for j in range(nb):
                                    o = g * Og + ol + j
                                    wv = w[c, ol + j, kd, kh, kw]
                                    if sw == 1:
                                        for i in range(cnt):
                                            out[n, o, pd, ph, up + i] += wv * x[n, c, idd, ih, ulo + i]
                                    else:
                                        for i in range(cnt):
                                            out[n, o, pd, ph, up + i * us] += wv * x[n, c, idd, ih, ulo + i]


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


def _extended_size(plan, i: int) -> int:
    return (plan.in_size[i] - 1) * plan.stride[i] + plan.dilation[i] * (plan.kernel[i] - 1) + 1


def _ext_plan_size(plan):
    return tuple(_extended_size(plan, i) for i in range(3))


def folds(plan) -> bool:
    """Whether the result goes through the extended buffer and the fold (modes other than zeros)."""
    return plan.padding_mode != "zeros"


def extended_workspace(plan) -> int:
    """Bytes of the extended-output buffer the non-zero padding modes use (0 for zeros)."""
    if not folds(plan):
        return 0
    ed, eh, ew = _ext_plan_size(plan)
    per_sample = plan.c_out * ed * eh * ew * plan.dtype.itemsize
    return max(1, min(plan.batch, config.workspace_bytes // per_sample)) * per_sample


def _with_fold(plan, x5, bias, out5, body):
    """Run ``body(x_chunk, bias, target, lo, size)`` straight into ``out5`` (zeros
    mode) or onto extended buffers folded into ``out5`` chunk by chunk."""
    if bias is None:
        bias = np.zeros(plan.c_out, dtype=plan.dtype)
    if not folds(plan):
        lo = tuple(p[0] for p in plan.padding)
        body(x5, bias, out5, lo, plan.out_size)
        return out5
    ext_size = _ext_plan_size(plan)
    per_sample = plan.c_out * int(np.prod(ext_size)) * plan.dtype.itemsize
    chunk = max(1, min(plan.batch, config.workspace_bytes // per_sample))
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


def _scatter_block(plan, batch: int) -> int:
    og = plan.c_out // plan.groups
    ob = min(og, _SCATTER_OB)
    want = 4 * numba.get_num_threads()
    while ob > 1 and batch * plan.groups * (-(-og // ob)) < want:
        ob = (ob + 1) // 2
    return ob


def run_scatter(x5, w5, bias, plan, out5):
    """Transposed convolution by scatter-add (canonical 5-D arrays, see module doc)."""

    def body(x, b, target, lo, size):
        td, th = (
            tap_table(
                plan.in_size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo[i], size[i], "zeros"
            )
            for i in range(2)
        )
        ob = _scatter_block(plan, x.shape[0])
        _scatter_kernel(x, w5, b, target, td, th, plan.stride[2], plan.dilation[2], lo[2], ob)

    return _with_fold(plan, x5, bias, out5, body)


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
        tables = tuple(
            gather_table(size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo[i], plan.in_size[i])
            for i in range(3)
        )
        runs = _gather_runs(plan, w5, lo[2], size[2])
        direct.run_channels_last(x, wc, b, target, tables, runs, plan.stride[2])

    return _with_fold(plan, x5, bias, out5, body)


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
