"""A separable filter over H and W in one pass over the image (the CPU
``method="separable"`` where its plan allows, :func:`fits`).

The two 1-D passes of :mod:`numbaconv.separable` write and read back a whole
intermediate image: for a 7x7 Gaussian on a 2048^2 uint8 image that is 16 MB
out and 16 MB in around 8 MB of input and output, and the passes' time is
memory traffic. Here output rows are made while their inputs are in cache,
as OpenCV's ``sepFilter2D`` does. A task owns a strip of rows and a tile of
columns of one plane (rows of 64 K samples would not stay in cache). Its
input rows are converted (8/16-bit integers) or copied once each into a
buffer of the tile's extended columns, the W padding folded in by index
(runs of input columns, zeros past the edges); blocks of 4 output rows
(2 for a 2-tap column factor, 1 with dilation along H) take the column
factor over the buffer rows they share on the band micro-kernel
(:func:`numbaconv.cpu.microkernel.fma_band`: each loaded row feeds every
output row it reaches, accumulators in registers), and the row factor runs
along each result row on the same kernel (one row, the taps' offsets in a
table) straight into the output. Integer outputs (ndimage's default for an
integer image) are truncated and wrapped as SciPy stores a double.

Padding folds by index: the rows an output row reads come from a table
(``-1``: a zero row); the column factor is linear and column by column, so
its value at a folded column is the folded column's.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import prange
from numba.extending import overload

from ..runtime import kernel_section, njit
from ..shapes import fold_index
from .microkernel import INTEGER_TARGETS, fma_band, spec_for, vector_run, vectors_for

# literal, as the other kernels' (numba's cache keys on the file's contents);
# must equal numbaconv.config.FASTMATH (tested)
_FASTMATH = {"reassoc", "contract"}
_STRIP_ROWS = 32  # output rows a task makes: enough tasks for the threads, rows reused in cache
_TILE_COLS = 2048  # output columns at most a task makes: its rows stay in L1/L2 (a 64 K-sample row does not)


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


ROW_MIN_WIDTH = (
    4096  # output columns a row filter needs (shorter rows: dwcl, igemm; a task a row of 512 ran 1.4x slower)
)


def row_filter(plan) -> bool:
    """Whether the direct method runs ``plan`` here as a row filter (its
    column factor a single 1): one channel per group (single-channel
    filters, depthwise), a kernel of one row along W, stride 1,
    non-negative padding (H and W; none along D), a real dtype, rows of at
    least :data:`ROW_MIN_WIDTH` outputs."""
    return (
        plan.op == "conv"
        and plan.c_in == plan.groups == plan.c_out
        and plan.kernel[:2] == (1, 1)
        and plan.padding[0] == (0, 0)
        and plan.stride == (1, 1, 1)
        and all(lo >= 0 and hi >= 0 for lo, hi in plan.padding[1:])
        and plan.dtype.kind == "f"
        and plan.out_size[2] >= ROW_MIN_WIDTH
    )


def row_weights(w5, plan) -> tuple[np.ndarray, np.ndarray]:
    """:func:`run`'s pass weights of a row filter (:func:`row_filter`): the
    kernel's row, and a column factor of ones."""
    return w5.reshape(plan.c_out, -1), np.ones(plan.c_out, plan.dtype)


def cost_features(plan, names) -> dict[str, float]:
    """Its counts in the direct path's units (``names``: its feature names):
    its FLOPs as one-tap FLOPs (each block streams a row per tap past its
    accumulators, as the one-tap blocks do) and the image read and written
    as elements copied (``tile``)."""
    f = dict.fromkeys(names, 0.0)
    f["call"] = 1.0
    f["flops_px_1tap"] = float(flops(plan))
    f["tile"] = float(plan.batch * plan.c_in * int(np.prod(plan.in_size)) + int(np.prod(plan.output_shape5)))
    return f


@njit(inline="always")
def _fill(x, n, c, d, prow, base, lo, hi, runs, eb, buf, spec):
    # buf rows lo..hi-1 (eb apart) := the tile's extended columns of padded
    # rows base + lo .. base + hi - 1: runs of input columns converted (or
    # copied) to the weights' dtype, zeros past the edges. runs (k, 3): a
    # run's offset in the extended row, its first input column (-1: zeros),
    # its length
    for i in range(lo, hi):
        r = prow[base + i]
        for k in range(runs.shape[0]):
            e, src, m = i * eb + runs[k, 0], runs[k, 1], runs[k, 2]
            if r >= 0 and src >= 0:
                vector_run(buf, e, x[n, c, d, r], src, m, 0.0, 0, spec)
            else:
                buf[e : e + m] = 0


@njit(inline="always")
def _columns(wv, buf, v, tab, kh, c, b0, rp, R, E, ewp, step, spec):
    # v rows 0..R-1 (ewp apart), columns 0..E-1 := the column factor over
    # the buffer's rows (output row r, tap h: the row at b0 + (r + h) * rp);
    # tab: one zero (the one tap along the row). Whole blocks, unmasked:
    # what lands past a row's E columns (its slack, rows past the strip's
    # last) is never read
    for p0 in range(0, E, step):
        if R == 4:
            fma_band(
                wv, buf, v, tab, 1, kh, c * kh, b0 + p0, 1, 0, 0, rp, p0, ewp, 0, 0, 0.0, 0, spec, 4, 0, 0
            )
        elif R == 2:
            fma_band(
                wv, buf, v, tab, 1, kh, c * kh, b0 + p0, 1, 0, 0, rp, p0, ewp, 0, 0, 0.0, 0, spec, 2, 0, 0
            )
        else:
            fma_band(
                wv, buf, v, tab, 1, kh, c * kh, b0 + p0, 1, 0, 0, rp, p0, ewp, 0, 0, 0.0, 0, spec, 1, 0, 0
            )


@njit(inline="always")
def _row(wh, v, e0, tabw, c, b, target, scratch, step, spec):
    # target[ow] = b + sum_t wh[c, t] * v[e0 + ow + tabw[t]]: whole blocks
    # stored unmasked where no bias is added and the block ends inside the
    # target (or the target is a scratch row with slack), masked (from the
    # bias) otherwise
    kw, OW = tabw.shape[0], target.shape[0]
    for p0 in range(0, OW, step):
        if b == 0 and (scratch or p0 + step <= OW):
            fma_band(
                wh, v, target, tabw, kw, 1, c * kw, e0 + p0, 1, 0, 0, 0, p0, 0, 0, 0, b, 0, spec, 1, 0, 0
            )
        else:
            cnt = OW - p0
            fma_band(
                wh, v, target, tabw, kw, 1, c * kw, e0 + p0, 1, 0, 0, 0, p0, 0, cnt, 1, b, 0, spec, 1, 0, 2
            )


@njit(inline="always")
def _task(task, strips, tiles, D, C):
    # (strip, tile, n, c, d) of a task
    j = task % tiles
    p = task // tiles
    s = p % strips
    p = p // strips
    return s, j, p // (D * C), (p // D) % C, p % D


@njit(inline="always")
def _strip(x, wv, wh, bias, prow, geo, runs, tabw, s, j, n, c, d, spec, narrow, out):
    # the output rows of strip s, columns of tile j, of plane (n, c, d):
    # blocks of R rows (dh apart where R = 1) made from a buffer of the
    # strip's padded input rows, the tile's extended columns
    R, dh, strip, eb, step0, step1, slack = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
    c0, c1, r0, r1 = geo[7 + 4 * j], geo[8 + 4 * j], geo[9 + 4 * j], geo[10 + 4 * j]
    kh, kw = wv.shape[0] // out.shape[1], wh.shape[0] // out.shape[1]
    E = c1 - c0 + tabw[kw - 1]  # the tile's extended columns
    ewp = eb + step0  # v's row stride: room for a column block's overrun
    o0, o1 = s * strip, min(out.shape[3], (s + 1) * strip)
    span = R - 1 + (kh - 1) * dh + 1  # buffer rows a block reads
    buf = np.empty((o1 - o0 + span - 1) * eb + slack, wv.dtype)
    buf[buf.shape[0] - slack :] = 0
    v = np.empty(R * ewp + slack, wv.dtype)
    v[R * ewp :] = 0
    row = np.empty(c1 - c0 + slack, wv.dtype)
    rp = eb if R > 1 else dh * eb
    tab = np.zeros(1, np.int64)
    filled = 0
    for oh in range(o0, o1, R):
        need = oh - o0 + span
        _fill(x, n, c, d, prow, o0, filled, need, runs[r0:r1], eb, buf, spec)
        filled = need
        _columns(wv, buf, v, tab, kh, c, (oh - o0) * eb, rp, R, E, ewp, step0, spec)
        for r in range(min(R, o1 - oh)):
            _emit(out, n, c, d, oh + r, c0, c1, row, wh, v, r * ewp, tabw, bias[c], step1, spec, narrow)


def _emit(out, n, c, d, oh, c0, c1, row, wh, v, e0, tabw, b, step, spec, narrow):
    """Columns c0..c1-1 of output row (n, c, d, oh) from the v row at e0
    (:func:`_row`): into a float ``out`` directly; into an integer one,
    truncated and wrapped (:func:`_row_int`)."""


@overload(_emit, inline="always")
def _emit_impl(out, n, c, d, oh, c0, c1, row, wh, v, e0, tabw, b, step, spec, narrow):
    if out.dtype == row.dtype:

        def impl(out, n, c, d, oh, c0, c1, row, wh, v, e0, tabw, b, step, spec, narrow):
            _row(wh, v, e0, tabw, c, b, out[n, c, d, oh, c0:c1], False, step, spec)

        return impl

    if out.dtype.name in INTEGER_TARGETS:

        def impl_int(out, n, c, d, oh, c0, c1, row, wh, v, e0, tabw, b, step, spec, narrow):
            _row_int(wh, v, e0, tabw, c, b, out[n, c, d, oh, c0:c1], row, step, spec, narrow)

        return impl_int

    def impl_wide(out, n, c, d, oh, c0, c1, row, wh, v, e0, tabw, b, step, spec, narrow):
        _row(wh, v, e0, tabw, c, b, row[: c1 - c0], True, step, spec)
        _truncate_row(row, out[n, c, d, oh, c0:c1], narrow)

    return impl_wide


@njit(inline="always")
def _row_int(wh, v, e0, tabw, c, b, orow, row, step, spec, narrow):
    # _row into the integer row ``orow``: where every sum is known to lie
    # inside int32 (narrow) and the out dtype is one fma_band's mode 3
    # stores, whole blocks truncated by the micro-kernel; the rest through
    # the float scratch ``row`` and _truncate_row
    kw, OW = tabw.shape[0], orow.shape[0]
    p0 = 0
    if narrow:
        while p0 + step <= OW:
            fma_band(wh, v, orow, tabw, kw, 1, c * kw, e0 + p0, 1, 0, 0, 0, p0, 0, 0, 0, b, 0, spec, 1, 0, 3)
            p0 += step
    if p0 < OW:
        _row(wh, v, e0 + p0, tabw, c, b, row[: OW - p0], True, step, spec)
        _truncate_row(row, orow[p0:], narrow)


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
def _fused(x, wv, wh, bias, prow, geo, runs, tabw, spec, narrow, out):
    # x (N, C, D, H, W) C-contiguous, float or 8/16-bit integer; out (N, C,
    # D, OH, OW) C-contiguous, of the weights' float dtype or an integer
    # dtype (values truncated toward zero and wrapped, as SciPy's C loops
    # store a double: numbaconv.cpu.convert.truncate_into); wv (C * KH,), wh
    # (C * KW,), bias (C,); prow: input row of padded row p, or -1; tabw:
    # the row taps' offsets; geo, runs: see _geometry; narrow: the sums fit
    # int32 (integer out). A task per (plane, strip of rows, tile of columns)
    strips = (out.shape[3] + geo[2] - 1) // geo[2]
    tiles = (geo.shape[0] - 7) // 4
    for task in prange(x.shape[0] * x.shape[1] * x.shape[2] * strips * tiles):
        s, j, n, c, d = _task(task, strips, tiles, x.shape[2], x.shape[1])
        _strip(x, wv, wh, bias, prow, geo, runs, tabw, s, j, n, c, d, spec, narrow, out)


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


@functools.lru_cache(maxsize=256)
def _narrow(x_dtype, wv, wh, bias, dtype) -> bool:
    # narrow_sums kept per input dtype and weights (given as bytes): ~30 us a call
    def arr(raw):
        return np.frombuffer(raw, dtype)

    return narrow_sums(x_dtype, arr(wv), arr(wh), arr(bias))


def block_rows(plan) -> int:
    """Output rows of a block (they share the input rows they read): 4, or
    2 for a 2-tap column factor (a block reads ``kh >= rows - 1`` rows),
    1 with dilation along H (rows dh apart share none)."""
    if plan.dilation[1] > 1:
        return 1
    return 4 if plan.kernel[1] >= 3 else 2


def _runs(cols: np.ndarray) -> np.ndarray:
    """``cols`` (input column of each extended column, -1: zero) as runs
    ``(offset, first column or -1, length)``: consecutive columns, or zeros."""
    cut = np.flatnonzero((np.diff(cols) != 1) | (cols[1:] < 0) | (cols[:-1] < 0)) + 1
    starts = np.concatenate([[0], cut])
    lengths = np.diff(np.concatenate([starts, [cols.size]]))
    return np.stack([starts, cols[starts], lengths], axis=1).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _geometry(plan, spec) -> tuple:
    """``(prow, geo, runs, tabw)`` of the kernel for ``plan`` (kept per plan:
    index arithmetic of ~0.2 ms a call). ``geo``: block rows, dh, strip
    rows, the buffer's row stride, the column and row passes' block widths,
    the buffers' slack, then per tile of output columns its first and end
    column and its rows of ``runs`` (:func:`_runs` of its extended columns)."""
    (kh, kw), (dh, dw) = plan.kernel[1:], plan.dilation[1:]
    (lo_h, hi_h), (lo_w, hi_w) = plan.padding[1:]
    h, w = plan.in_size[1:]
    R = block_rows(plan)
    span = R - 1 + (kh - 1) * dh + 1
    p = np.arange(plan.out_size[1] + span) - lo_h  # padded rows past the last block's are read as zeros
    prow = np.where(p < h + hi_h, fold_index(p, h, plan.mode(1)), -1).astype(np.int64)
    cmap = fold_index(np.arange(w + lo_w + hi_w) - lo_w, w, plan.mode(2)).astype(np.int64)
    tabw = np.arange(kw, dtype=np.int64) * dw
    step0, step1 = (vectors_for(r, spec.registers) * spec.lanes for r in (R, 1))
    ow = plan.out_size[2]
    ntiles = -(-ow // _TILE_COLS)
    width = -(-ow // ntiles)  # balanced tiles
    width = -(-width // step1) * step1 if width > step1 else width  # whole row-pass blocks
    tiles, runs = [], []
    for c0 in range(0, ow, width):
        c1 = min(ow, c0 + width)
        r = _runs(cmap[c0 : c1 + int(tabw[-1])])
        tiles += [c0, c1, sum(len(x) for x in runs), sum(len(x) for x in runs) + len(r)]
        runs.append(r)
    eb = width + int(tabw[-1]) + step0
    slack = step0 + step1 + eb
    geo = np.array([R, dh, _STRIP_ROWS, eb, step0, step1, slack] + tiles, np.int64)
    return prow, geo, np.concatenate(runs), tabw


def run(x5, pass_weights, bias, plan, out5) -> None:
    """The H and W passes of ``plan`` (:func:`fits`) in one kernel;
    ``pass_weights``: :func:`numbaconv.separable.pass_weights`, W then H.
    ``out5`` has the plan's dtype, or an integer dtype (not uint64: values
    truncated toward zero and wrapped, as SciPy stores them)."""
    spec = spec_for(plan.dtype)
    prow, geo, runs, tabw = _geometry(plan, spec)
    wh = np.ascontiguousarray(pass_weights[0].reshape(-1))
    wv = np.ascontiguousarray(pass_weights[1].reshape(-1))
    b = np.zeros(plan.c_out, plan.dtype) if bias is None else np.ascontiguousarray(bias, dtype=plan.dtype)
    x5 = np.ascontiguousarray(x5)
    target = out5 if out5.flags.c_contiguous else np.empty(out5.shape, out5.dtype)
    narrow = out5.dtype.kind in "iu" and _narrow(
        x5.dtype.str, wv.tobytes(), wh.tobytes(), b.tobytes(), b.dtype.str
    )
    with kernel_section():
        _fused(x5, wv, wh, b, prow, geo, runs, tabw, spec, narrow, target)
    if target is not out5:
        out5[...] = target
