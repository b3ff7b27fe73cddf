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

import numpy as np
from numba import prange

from ..runtime import kernel_section, njit
from ..shapes import fold_index

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


# Sweeps over a row: dst[i] (+)= sum_j w_j * a_j[i] for i < n (1-D views and
# unsigned indices: no wraparound test per element, so LLVM vectorizes them)
@njit(inline="always")
def _set1(dst, b, a0, w0, n):
    for i in range(n):
        dst[i] = b + w0 * a0[i]


@njit(inline="always")
def _add1(dst, a0, w0, n):
    for i in range(n):
        dst[i] += w0 * a0[i]


@njit(inline="always")
def _add8(dst, a0, a1, a2, a3, a4, a5, a6, a7, w, n):
    w0, w1, w2, w3, w4, w5, w6, w7 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]
    for i in range(n):
        dst[i] += ((w0 * a0[i] + w1 * a1[i] + w2 * a2[i]) + (w3 * a3[i] + w4 * a4[i])) + (
            (w5 * a5[i] + w6 * a6[i]) + w7 * a7[i]
        )


@njit(inline="always")
def _add4(dst, a0, a1, a2, a3, w, n):
    w0, w1, w2, w3 = w[0], w[1], w[2], w[3]
    for i in range(n):
        dst[i] += (w0 * a0[i] + w1 * a1[i] + w2 * a2[i]) + w3 * a3[i]


@njit(inline="always")
def _add2(dst, a0, a1, w, n):
    w0, w1 = w[0], w[1]
    for i in range(n):
        dst[i] += w0 * a0[i] + w1 * a1[i]


@njit(inline="always")
def _column_pass(x, n, c, d, rows, wts, count, v, lo_w):
    # v[lo_w + col] = sum_j wts[j] * x[n, c, d, rows[j], col]: the first row
    # sets, the others add 8, 4, 2, 1 rows a sweep (fewer passes over v)
    W = np.uint64(x.shape[4])
    vi = v[lo_w:]
    if count == 0:
        for i in range(W):
            vi[i] = 0
        return
    _set1(vi, 0, x[n, c, d, rows[0]], wts[0], W)
    j = 1
    while j + 8 <= count:
        r = rows[j : j + 8]
        _add8(vi, x[n, c, d, r[0]], x[n, c, d, r[1]], x[n, c, d, r[2]], x[n, c, d, r[3]], x[n, c, d, r[4]],
              x[n, c, d, r[5]], x[n, c, d, r[6]], x[n, c, d, r[7]], wts[j : j + 8], W)  # fmt: skip
        j += 8
    if j + 4 <= count:
        r = rows[j : j + 4]
        _add4(vi, x[n, c, d, r[0]], x[n, c, d, r[1]], x[n, c, d, r[2]], x[n, c, d, r[3]], wts[j : j + 4], W)
        j += 4
    if j + 2 <= count:
        _add2(vi, x[n, c, d, rows[j]], x[n, c, d, rows[j + 1]], wts[j : j + 2], W)
        j += 2
    if j < count:
        _add1(vi, x[n, c, d, rows[j]], wts[j], W)


@njit(inline="always")
def _row_pass(v, wh, c, dw, b, orow):
    # orow[ow] = b + sum_t wh[c, t] * v[ow + t * dw]: the first tap sets,
    # the others add 8, 4, 2, 1 taps a sweep
    OW = np.uint64(orow.shape[0])
    kw = wh.shape[1]
    w = wh[c]
    _set1(orow, b, v, w[0], OW)
    t = 1
    while t + 8 <= kw:
        _add8(orow, v[t * dw :], v[(t + 1) * dw :], v[(t + 2) * dw :], v[(t + 3) * dw :], v[(t + 4) * dw :],
              v[(t + 5) * dw :], v[(t + 6) * dw :], v[(t + 7) * dw :], w[t : t + 8], OW)  # fmt: skip
        t += 8
    if t + 4 <= kw:
        _add4(orow, v[t * dw :], v[(t + 1) * dw :], v[(t + 2) * dw :], v[(t + 3) * dw :], w[t : t + 4], OW)
        t += 4
    if t + 2 <= kw:
        _add2(orow, v[t * dw :], v[(t + 1) * dw :], w[t : t + 2], OW)
        t += 2
    if t < kw:
        _add1(orow, v[t * dw :], w[t], OW)


@njit(inline="always")
def _make_row(x, wv, wh, b, rmap, cmap, lo_w, dw, n, c, d, oh, v, rows, wts, target):
    # output row (n, c, d, oh) into ``target`` (a float row of OW values)
    W = x.shape[4]
    count = 0
    for t in range(rmap.shape[1]):
        if rmap[oh, t] >= 0:
            rows[count] = rmap[oh, t]
            wts[count] = wv[c, t]
            count += 1
    _column_pass(x, n, c, d, rows, wts, count, v, lo_w)
    for e in range(lo_w):  # the edges: copies of folded interior columns, or zeros
        v[e] = v[lo_w + cmap[e]] if cmap[e] >= 0 else 0
    for e in range(lo_w + W, cmap.shape[0]):
        v[e] = v[lo_w + cmap[e]] if cmap[e] >= 0 else 0
    _row_pass(v, wh, c, dw, b, target)


@njit(inline="always")
def _task(task, strips, D, C):
    # (strip, n, c, d) of a task
    s = task % strips
    p = task // strips
    return s, p // (D * C), (p // D) % C, p % D


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _fused(x, wv, wh, bias, rmap, cmap, lo_w, dw, strip, out):
    # x (N, C, D, H, W) float or 8/16-bit integer; out (N, C, D, OH, OW) of
    # the weights' float dtype; wv (C, KH), wh (C, KW), bias (C,); rmap
    # (OH, KH) input row or -1; cmap (E,) input column of extended column e or -1
    OH = out.shape[3]
    strips = (OH + strip - 1) // strip
    for task in prange(x.shape[0] * x.shape[1] * x.shape[2] * strips):
        s, n, c, d = _task(task, strips, x.shape[2], x.shape[1])
        v = np.empty(cmap.shape[0], wv.dtype)
        rows = np.empty(rmap.shape[1], np.int64)
        wts = np.empty(rmap.shape[1], wv.dtype)
        for oh in range(s * strip, min(OH, (s + 1) * strip)):
            _make_row(x, wv, wh, bias[c], rmap, cmap, lo_w, dw, n, c, d, oh, v, rows, wts, out[n, c, d, oh])


@njit(inline="always")
def _truncate_row(buf, orow):
    # orow[i] = int64(buf[i]), wrapped in orow's dtype. Through int32 first:
    # AVX2 has no vector float -> int64 conversion (LLVM went value by
    # value); a value out of int32's range converts to INT32_MIN, and a row
    # with one is redone through int64 (rare: the filters' sums are small)
    low = np.int32(-2147483648)
    seen = np.int32(0)
    for i in range(np.uint64(orow.shape[0])):
        t = np.int32(buf[i])
        orow[i] = t
        seen |= np.int32(t == low)
    if seen:
        for i in range(orow.shape[0]):
            orow[i] = np.int64(buf[i])


@njit(cache=True, parallel=True, fastmath=_FASTMATH)
def _fused_int(x, wv, wh, bias, rmap, cmap, lo_w, dw, strip, out):
    # _fused into an integer ``out``: each value truncated toward zero and
    # wrapped in out's dtype, as SciPy's C loops store a double
    # (numbaconv.cpu.convert.truncate_into)
    OH, OW = out.shape[3], out.shape[4]
    strips = (OH + strip - 1) // strip
    for task in prange(x.shape[0] * x.shape[1] * x.shape[2] * strips):
        s, n, c, d = _task(task, strips, x.shape[2], x.shape[1])
        v = np.empty(cmap.shape[0], wv.dtype)
        rows = np.empty(rmap.shape[1], np.int64)
        wts = np.empty(rmap.shape[1], wv.dtype)
        buf = np.empty(OW, wv.dtype)
        for oh in range(s * strip, min(OH, (s + 1) * strip)):
            _make_row(x, wv, wh, bias[c], rmap, cmap, lo_w, dw, n, c, d, oh, v, rows, wts, buf)
            _truncate_row(buf, out[n, c, d, oh])


def run(x5, pass_weights, bias, plan, out5) -> None:
    """The H and W passes of ``plan`` (:func:`fits`) in one kernel;
    ``pass_weights``: :func:`numbaconv.separable.pass_weights`, W then H.
    ``out5`` has the plan's dtype, or an integer dtype (not uint64: values
    truncated toward zero and wrapped, as SciPy stores them)."""
    (kh, kw), (dh, dw) = plan.kernel[1:], plan.dilation[1:]
    (lo_h, _), (lo_w, hi_w) = plan.padding[1:]
    oh, ow = plan.out_size[1:]
    h, w = plan.in_size[1:]
    rmap = np.arange(oh)[:, None] + np.arange(kh)[None, :] * dh - lo_h
    rmap = np.ascontiguousarray(fold_index(rmap, h, plan.mode(1)), dtype=np.int64)
    cmap = np.ascontiguousarray(
        fold_index(np.arange(w + lo_w + hi_w) - lo_w, w, plan.mode(2)), dtype=np.int64
    )
    wh = np.ascontiguousarray(pass_weights[0].reshape(plan.c_out, kw))
    wv = np.ascontiguousarray(pass_weights[1].reshape(plan.c_out, kh))
    b = np.zeros(plan.c_out, plan.dtype) if bias is None else np.ascontiguousarray(bias, dtype=plan.dtype)
    kernel = _fused_int if out5.dtype.kind in "iu" else _fused
    with kernel_section():
        kernel(x5, wv, wh, b, rmap, cmap, lo_w, dw, _STRIP_ROWS, out5)
