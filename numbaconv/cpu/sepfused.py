"""A separable filter over H and W in one pass over the image (the CPU
``method="separable"`` where its plan allows, :func:`fits`).

The two 1-D passes of :mod:`numbaconv.separable` write and read back a whole
intermediate image: for a 7x7 Gaussian on a 2048^2 uint8 image that is 16 MB
out and 16 MB in around 8 MB of input and output, and the passes' time is
memory traffic. Here each output row is made while its inputs are in cache,
as OpenCV's ``sepFilter2D`` does: the column factor combines the ``KH``
input rows the row reads (converting 8/16-bit integers on the fly) into one
row extended by the W padding, and the row factor runs along it into the
output. Rows of one plane are split into strips, a task per (plane, strip);
a task's extended row is its only buffer.

Padding folds by index: the rows a output row reads come from a table
(``-1``: a zero row), the extended row's edge columns are copies of its
folded interior columns (the column pass is linear and column by column, so
the combination of a folded column is the folded column of the combination)
or zeros. Taps go four at a time (four loads and one load and store of the
accumulator row per four FMAs), the inner loops over columns vectorized by
LLVM.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange
from numba.extending import overload

from ..runtime import kernel_section, njit
from ..shapes import fold_index
from .microkernel import fma_band, spec_for, vector_run, vectors_for

# literal, as the other kernels' (numba's cache keys on the file's contents);
# must equal numbaconv.config.FASTMATH (tested)
_FASTMATH = {"reassoc", "contract"}
_STRIP_ROWS = 32  # output rows a task makes: enough tasks for the threads, rows reused in cache


def flops(plan) -> int:
    """Multiplies and adds of one call: both factors' taps at every output."""
    return 2 * (plan.kernel[1] + plan.kernel[2]) * int(np.prod(plan.output_shape5))


def fits(plan) -> bool:
    """Whether the fused kernel runs ``plan``'s passes: taps along H and W
    only (one along D, no D padding), stride 1, non-negative padding."""
    return (
        plan.kernel[0] == 1
        and plan.padding[0] == (0, 0)
        and plan.stride == (1, 1, 1)
        and plan.kernel[1] > 1
        and plan.kernel[2] > 1
        and all(lo >= 0 and hi >= 0 for lo, hi in plan.padding[1:])
        and plan.dtype.kind == "f"
    )


@njit(inline="always")
def _fill(x, n, c, d, prow, base, lo, hi, W, buf, spec):
    # buf rows lo..hi-1 := padded rows base + lo .. base + hi - 1: input rows
    # converted (or copied) to the weights' dtype, zeros past the edges
    for i in range(lo, hi):
        r = prow[base + i] if base + i < prow.shape[0] else -1
        if r >= 0:
            vector_run(buf, i * W, x[n, c, d, r], 0, W, 0.0, 0, spec)
        else:
            buf[i * W : (i + 1) * W] = 0


@njit(inline="always")
def _columns(wv, buf, v, tab, kh, c, b0, rp, R, W, ewp, lo_w, step, spec):
    # v rows 0..R-1 (ewp apart), columns lo_w..lo_w+W-1 := the column
    # factor over the buffer's rows (output row r, tap h: buffer row
    # (b0 + (r + h) * rp) / W); tab: one zero (the one tap along the row).
    # Whole blocks, unmasked: what lands past a row's W columns (its edge
    # columns, its slack, rows past the strip's last) is rewritten or unread
    for p0 in range(0, W, step):
        if R == 4:
            fma_band(wv, buf, v, tab, 1, kh, c * kh, b0 + p0, 1, 0, 0, rp, lo_w + p0, ewp, 0, 0, 0.0, 0,
                     spec, 4, 0, 0)  # fmt: skip
        elif R == 2:
            fma_band(wv, buf, v, tab, 1, kh, c * kh, b0 + p0, 1, 0, 0, rp, lo_w + p0, ewp, 0, 0, 0.0, 0,
                     spec, 2, 0, 0)  # fmt: skip
        else:
            fma_band(wv, buf, v, tab, 1, kh, c * kh, b0 + p0, 1, 0, 0, rp, lo_w + p0, ewp, 0, 0, 0.0, 0,
                     spec, 1, 0, 0)  # fmt: skip


@njit(inline="always")
def _row(wh, v, e0, tabw, c, b, cmap, lo_w, W, target, scratch, step, spec):
    # the v row at e0's edge columns (copies of folded interior columns, or
    # zeros), then target[ow] = b + sum_t wh[c, t] * v[e0 + ow + tabw[t]]:
    # whole blocks stored unmasked where no bias is added and the block ends
    # inside the target (or the target is a scratch row with slack), masked
    # (from the bias) otherwise
    for e in range(lo_w):
        v[e0 + e] = v[e0 + lo_w + cmap[e]] if cmap[e] >= 0 else 0
    for e in range(lo_w + W, cmap.shape[0]):
        v[e0 + e] = v[e0 + lo_w + cmap[e]] if cmap[e] >= 0 else 0
    kw, OW = tabw.shape[0], target.shape[0]
    for p0 in range(0, OW, step):
        if b == 0 and (scratch or p0 + step <= OW):
            fma_band(
                wh, v, target, tabw, kw, 1, c * kw, e0 + p0, 1, 0, 0, 0, p0, 0, 0, 0, b, 0, spec, 1, 0, 0
            )
        else:
            fma_band(
                wh,
                v,
                target,
                tabw,
                kw,
                1,
                c * kw,
                e0 + p0,
                1,
                0,
                0,
                0,
                p0,
                0,
                OW - p0,
                1,
                b,
                0,
                spec,
                1,
                0,
                2,
            )


@njit(inline="always")
def _task(task, strips, D, C):
    # (strip, n, c, d) of a task
    s = task % strips
    p = task // strips
    return s, p // (D * C), (p // D) % C, p % D


@njit(inline="always")
def _strip(x, wv, wh, bias, prow, cmap, tabw, lo_w, dh, R, strip, steps, spec, s, n, c, d, OH, narrow, out):
    # the output rows of strip s of plane (n, c, d): blocks of R rows (dh
    # apart where R = 1) made from a buffer of the strip's padded input rows
    kh, W, ew = wv.shape[0] // out.shape[1], x.shape[4], cmap.shape[0]
    ewp = ew + steps[0]  # v's row stride: room for a column block's overrun
    o0, o1 = s * strip, min(OH, (s + 1) * strip)
    span = R - 1 + (kh - 1) * dh + 1  # buffer rows a block reads
    slack = steps[0] + steps[1] + ew
    buf = np.empty((o1 - o0 + span - 1) * W + slack, wv.dtype)
    buf[buf.shape[0] - slack :] = 0
    v = np.empty(R * ewp + slack, wv.dtype)
    v[R * ewp :] = 0
    row = np.empty(out.shape[4] + slack, wv.dtype)
    rp = W if R > 1 else dh * W
    tab = np.zeros(1, np.int64)
    filled = 0
    for oh in range(o0, o1, R):
        nrows = min(R, o1 - oh)
        need = oh - o0 + span
        _fill(x, n, c, d, prow, o0, filled, need, W, buf, spec)
        filled = need
        _columns(wv, buf, v, tab, kh, c, (oh - o0) * W, rp, R, W, ewp, lo_w, steps[0], spec)
        for r in range(nrows):
            target, scratch = _target(out, n, c, d, oh + r, row)
            _row(wh, v, r * ewp, tabw, c, bias[c], cmap, lo_w, W, target, scratch, steps[1], spec)
            _finish(out, n, c, d, oh + r, row, narrow)


def _target(out, n, c, d, oh, row):
    """The float row the row pass writes and whether it is scratch (slack
    past its end): output row (n, c, d, oh) of a float ``out``, else ``row``
    (then truncated into the integer output)."""


@overload(_target, inline="always")
def _target_impl(out, n, c, d, oh, row):
    if out.dtype == row.dtype:
        return lambda out, n, c, d, oh, row: (out[n, c, d, oh], False)
    return lambda out, n, c, d, oh, row: (row[: out.shape[4]], True)


def _finish(out, n, c, d, oh, row, narrow):
    """An integer ``out``: its row (n, c, d, oh) := ``row`` truncated
    (:func:`_truncate_row`); a float one holds its row already."""


@overload(_finish, inline="always")
def _finish_impl(out, n, c, d, oh, row, narrow):
    if out.dtype == row.dtype:
        return lambda out, n, c, d, oh, row, narrow: None
    return lambda out, n, c, d, oh, row, narrow: _truncate_row(row, out[n, c, d, oh], narrow)


@njit(inline="always")
def _truncate_row(buf, orow, narrow):
    # orow[i] = int64(buf[i]), wrapped in orow's dtype. Through int32: AVX2
    # has no vector float -> int64 conversion (LLVM went value by value).
    # ``narrow``: every value is known to lie inside int32's range (a bound
    # from the input's dtype and the weights: :func:`narrow_sums`); else a
    # value out of it converts to INT32_MIN, and a row with one is redone
    # through int64 (the check halved this loop's speed)
    n = np.uint64(orow.shape[0])
    if narrow:
        for i in range(n):
            orow[i] = np.int32(buf[i])
        return
    low = np.int32(-2147483648)
    seen = np.int32(0)
    for i in range(n):
        t = np.int32(buf[i])
        orow[i] = t
        seen |= np.int32(t == low)
    if seen:
        for i in range(orow.shape[0]):
            orow[i] = np.int64(buf[i])


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _fused(x, wv, wh, bias, prow, cmap, tabw, lo_w, dh, R, strip, steps, spec, narrow, out):
    # x (N, C, D, H, W) C-contiguous, float or 8/16-bit integer; out (N, C,
    # D, OH, OW) C-contiguous, of the weights' float dtype or an integer
    # dtype (values truncated toward zero and wrapped, as SciPy's C loops
    # store a double: numbaconv.cpu.convert.truncate_into); wv (C * KH,), wh
    # (C * KW,), bias (C,); prow: input row of padded row p, or -1; cmap:
    # input column of extended column e, or -1; tabw: the row taps' offsets;
    # R: output rows a block (4 or 2; 1 for dh > 1); steps: pixels of a
    # column-pass and a row-pass block; narrow: the sums fit int32 (integer out)
    OH = out.shape[3]
    strips = (OH + strip - 1) // strip
    for task in prange(x.shape[0] * x.shape[1] * x.shape[2] * strips):
        s, n, c, d = _task(task, strips, x.shape[2], x.shape[1])
        _strip(
            x, wv, wh, bias, prow, cmap, tabw, lo_w, dh, R, strip, steps, spec, s, n, c, d, OH, narrow, out
        )


def narrow_sums(x_dtype, wv, wh, bias) -> bool:
    """Whether every output lies well inside int32's range whatever an
    integer input holds: max|x| * sum|column factor| * sum|row factor| +
    max|bias| below 2^31 with a margin for the float sums' rounding (no bound
    for float inputs: False)."""
    x_dtype = np.dtype(x_dtype)
    if x_dtype.kind not in "iub":
        return False
    info = np.iinfo(x_dtype) if x_dtype.kind != "b" else None
    big = 1.0 if info is None else float(max(abs(int(info.min)), int(info.max)))
    C = bias.shape[0]
    sv = np.abs(wv.astype(np.float64).reshape(C, -1)).sum(axis=1)
    sh = np.abs(wh.astype(np.float64).reshape(C, -1)).sum(axis=1)
    bound = float(np.max(big * sv * sh + np.abs(bias.astype(np.float64)), initial=0.0))
    return bool(np.isfinite(bound) and bound < 0.99 * 2.0**31)


def block_rows(plan) -> int:
    """Output rows of a block (they share the input rows they read): 4, or
    2 for a 2-tap column factor (a block reads ``kh >= rows - 1`` rows),
    1 with dilation along H (rows dh apart share none)."""
    if plan.dilation[1] > 1:
        return 1
    return 4 if plan.kernel[1] >= 3 else 2


@functools.lru_cache(maxsize=64)
def _maps(plan, spec) -> tuple:
    """``(R, prow, cmap, tabw, steps)`` of the kernel for ``plan`` (kept per
    plan: ~0.2 ms of index arithmetic a call)."""
    (kh, kw), (dh, dw) = plan.kernel[1:], plan.dilation[1:]
    (lo_h, hi_h), (lo_w, hi_w) = plan.padding[1:]
    h, w = plan.in_size[1:]
    R = block_rows(plan)
    span = R - 1 + (kh - 1) * dh + 1
    p = np.arange(plan.out_size[1] + span) - lo_h  # padded rows past the last block's are read as zeros
    prow = np.where(p < h + hi_h, fold_index(p, h, plan.mode(1)), -1).astype(np.int64)
    cmap = fold_index(np.arange(w + lo_w + hi_w) - lo_w, w, plan.mode(2)).astype(np.int64)
    tabw = np.arange(kw, dtype=np.int64) * dw
    steps = np.array([vectors_for(R, spec.registers), vectors_for(1, spec.registers)], np.int64) * spec.lanes
    return R, prow, cmap, tabw, steps


def run(x5, pass_weights, bias, plan, out5) -> None:
    """The H and W passes of ``plan`` (:func:`fits`) in one kernel;
    ``pass_weights``: :func:`numbaconv.separable.pass_weights`, W then H.
    ``out5`` has the plan's dtype, or an integer dtype (not uint64: values
    truncated toward zero and wrapped, as SciPy stores them)."""
    spec = spec_for(plan.dtype)
    R, prow, cmap, tabw, steps = _maps(plan, spec)
    wh = np.ascontiguousarray(pass_weights[0].reshape(-1))
    wv = np.ascontiguousarray(pass_weights[1].reshape(-1))
    b = np.zeros(plan.c_out, plan.dtype) if bias is None else np.ascontiguousarray(bias, dtype=plan.dtype)
    x5 = np.ascontiguousarray(x5)
    target = out5 if out5.flags.c_contiguous else np.empty(out5.shape, out5.dtype)
    narrow = out5.dtype.kind in "iu" and narrow_sums(x5.dtype, wv, wh, b)
    lo_w, dh = plan.padding[2][0], plan.dilation[1]
    with kernel_section():
        _fused(x5, wv, wh, b, prow, cmap, tabw, lo_w, dh, R, _STRIP_ROWS, steps, spec, narrow, target)
    if target is not out5:
        out5[...] = target
