"""Direct convolution as implicit GEMM on the micro-kernel (real dtypes).

A task owns one (sample, group, output plane, band of output rows) and a
chunk of the group's blocks of output channels (a call's tasks come from
samples, groups and planes, then bands of rows, and chunks of blocks last:
:meth:`Geometry._split`). It copies the input its band
reads into a tile (:func:`_fill`): per input channel and kernel plane, the
padded rows and columns split by the H and W strides into the phases the taps
use (``rq x wq`` values each). Padding modes enter only here, through index
maps sized by the output (:meth:`Geometry.maps`, ``shapes.fold_index``); zero
padding is stored as zeros, so NaN/Inf weights meet it as PyTorch's does. In
that tile the input of kernel tap ``t`` for output pixel ``(oh, ow)`` of the
band lies at ``tb[t] + oh * wq + ow``: every tap at any stride and dilation is
one offset, and the band's output pixels are one flat run (``wq - W_out`` junk
columns per row, computed and discarded). The output is written through
its offset and strides (:func:`target_desc`): a C-contiguous array, or a
phase of a transposed op's output (:mod:`numbaconv.cpu.gather`).

Per block of ``rows`` output channels x ``pw`` pixels the micro-kernel
(:func:`numbaconv.cpu.microkernel.fma_taps`, lanes over output pixels, the
weight broadcast) accumulates over every tap and input channel of the group
in registers, in K chunks of ``kc`` channels whose tile lines fit 16 KB of
L1 (each chunk runs over all of the task's blocks of output channels before
the next, adding into their accumulators), and the blocks are stored
straight into the NCHW output with the bias (:func:`_store`). Weights are packed once per weight
(``[group][block][channel][tap][row]``, zero rows past the group's channels)
and kept between calls, compared by content. The other layout
(:func:`_conv_cl_task`: lanes over output channels, the tile channels-last,
the input broadcast) computes blocks of any output pixels through a row
table, so a plane's rows pack without junk columns: "auto" takes it where
the pixel blocks would be mostly padding (:func:`uses_channels_last`: small
planes with many channels), ``config.direct_layout`` forces either. Each kind of task runs through
:func:`numbaconv.cpu.tasks.parallel_tasks` (one parallel region, the task
function called by its address).
"""

from __future__ import annotations

import functools

import numpy as np

from .. import config
from ..common import WeightCache, aligned_copy
from ..runtime import njit
from ..runtime import num_threads as _threads
from ..shapes import fold_index
from .microkernel import (
    fma_band,
    fma_taps,
    fma_taps_out,
    prefetch,
    rows_for,
    spec_for,
    transpose_block,
    vector_run,
    vectors_for,
)
from .tasks import aligned_empty, borrow, run_at, task_address

# Kept literal here (not imported) because numba's on-disk cache keys on this
# file's contents; must equal numbaconv.config.FASTMATH (tested).
_FASTMATH = {"reassoc", "contract"}
_TASKS_PER_THREAD = 8
PREFETCH = True
_CHUNK_TASKS_PER_THREAD = 4  # tasks a thread gets from chunks of output-channel blocks (Geometry._split)
# channels-last tasks of few planes (no more than threads) split into bands
# of output rows, not only into chunks of output channels (each chunk fills
# the plane's whole tile again), on planes of CL_BAND_MIN rows or more, the
# band chosen among those up to CL_HALO_RATIO times the kernel's halo rows
# (or 4 pixel blocks, if more; bands of 2 rows and 2 of halo measured 1.06x
# on a 3x3 layer on 28^2). A/B, Zen 4,
# batch 1-2 on 14-28 rows: 0.79-1.02x the time (3x3 s2 64 -> 128 on 28^2
# 0.86, 5x5 96 ch 14^2 0.79, 1x1 160 -> 320 0.84, 3x3 48 -> 96 28^2 0.81);
# 7-row planes measured 1.06-1.13x (bands of 3 rows, 2 of halo) and batch 8
# 1.03x, so not there. CL_BANDS: a switch for comparisons.
CL_BANDS = True
CL_BAND_MIN = 14
CL_HALO_RATIO = 2


@njit(inline="always")
def _fill(x, xf, tile, n, c0, nc, od, h0, md, mh, mw, runs, geo, cst, pst, spec, edges):
    # tile[c * cst + ((((kd * nph + i) * npw + j) * rq + r) * wq + q) * pst] =
    #   x[n, c0 + c, md[od * KD + kd], mh[i * hq + h0 + r], mw[j * wq + q]]
    # (0 where a map says -1 or the row is past the maps); i, j index the H
    # and W phases the taps use; runs[j] = (a, b, i0): mw[j * wq + q] =
    # i0 + (q - a) * sw for q in [a, b) (the interior, read in place).
    # Unsigned indices in the copies: no wraparound test, so they vectorize;
    # x read through xf (x flat) at computed offsets: a view per row would
    # cost two atomic reference-count updates. edges=False: the zero rows and
    # columns are in the tile already (zero padding: the task zeroed its tile
    # before its first fill, _zero_tile; 5x5 depthwise on 14x14 planes
    # copied more zeros than input)
    kd_n, nph, npw, rq, wq, hq, sw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6]
    C, D, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    z = tile.dtype.type(0)
    up = np.uint64(pst)
    us = np.uint64(sw)
    for c in range(nc):
        o = c * cst
        for kd in range(kd_n):
            idd = md[od * kd_n + kd]
            for i in range(nph):
                for j in range(npw):
                    a, b, i0 = runs[j, 0], runs[j, 1], runs[j, 2]
                    if idd >= 0 and a == 0 and b == wq and i0 == 0 and sw == 1 and wq == W:
                        # tile rows are whole input rows: consecutive ones are one run
                        ih0 = mh[i * hq + h0] if h0 + rq <= hq else -1
                        r = 1 if ih0 >= 0 else rq
                        while r < rq and mh[i * hq + h0 + r] == ih0 + r:
                            r += 1
                        if ih0 >= 0 and r == rq:
                            ut = np.uint64(o)
                            ui = np.uint64((((n * C + c0 + c) * D + idd) * H + ih0) * W)
                            for q in range(np.uint64(rq * wq)):
                                tile[ut + q * up] = xf[ui + q]
                            o += rq * wq * pst
                            continue
                    for r in range(rq):
                        ih = mh[i * hq + h0 + r] if h0 + r < hq else -1
                        if idd < 0 or ih < 0:
                            if edges:
                                for q in range(wq):
                                    tile[o + q * pst] = z
                            o += wq * pst
                            continue
                        so = (((n * C + c0 + c) * D + idd) * H + ih) * W
                        for q in range(a if edges else 0):
                            iw = mw[j * wq + q]
                            tile[o + q * pst] = xf[so + iw] if iw >= 0 else z
                        if pst == 1 and sw == 1:  # vectors and a masked one (short rows)
                            vector_run(tile, o + a, xf, so + i0, b - a, z, 0, spec)
                        elif pst == 1 and sw == 2:  # a stride-2 phase: pairs of vectors, even lanes
                            vector_run(tile, o + a, xf, so + i0, b - a, z, 4, spec)
                        else:
                            ut = np.uint64(o + a * pst)
                            ui = np.uint64(so + i0)
                            for q in range(np.uint64(b - a)):
                                tile[ut + q * up] = xf[ui + q * us]
                        for q in range(b, wq if edges else b):
                            iw = mw[j * wq + q]
                            tile[o + q * pst] = xf[so + iw] if iw >= 0 else z
                        o += wq * pst


@njit(inline="always")
def _fill_cl(x, xf, tile, n, c0, nc, od, h0, md, mh, mw, runs, geo, ps, spec, edges):
    # _fill's tile channels-last: tile[pixel * ps + c], the pixels as _fill
    # orders them; lanes channels at a time: the interior of a row at W
    # stride 1 by transposes of up to lanes columns, the rest one value at a
    # time (a value per load and store, ps apart, took ~7% of a 3x3 s2
    # 256-channel layer)
    kd_n, nph, npw, rq, wq, hq = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    C, D, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    L = geo[18] // geo[10]  # lanes: the block's channels over its vectors
    plane = D * H * W
    z = tile.dtype.type(0)
    for cb in range(0, nc, L):
        cn = min(L, nc - cb)
        o = cb
        for kd in range(kd_n):
            idd = md[od * kd_n + kd]
            for i in range(nph):
                for j in range(npw):
                    for r in range(rq):
                        ih = mh[i * hq + h0 + r] if h0 + r < hq else -1
                        if idd >= 0 and ih >= 0:
                            so = (((n * C + c0 + cb) * D + idd) * H + ih) * W
                            _fill_cl_row(xf, tile, o, so, plane, cn, runs, j, mw, geo, ps, spec, edges)
                        elif edges:
                            for q in range(wq):
                                for lane in range(cn):
                                    tile[o + q * ps + lane] = z
                        o += wq * ps


@njit(inline="always")
def _fill_cl_row(xf, tile, o, so, plane, cn, runs, j, mw, geo, ps, spec, edges):
    # one tile row of _fill_cl: cn channels from so (plane apart), W phase j
    wq, sw = geo[4], geo[6]
    a, b, i0 = runs[j, 0], runs[j, 1], runs[j, 2]
    L = geo[18] // geo[10]
    z = tile.dtype.type(0)
    if sw == 1:
        for q0 in range(a, b, L):
            cnt = min(L, b - q0)
            transpose_block(
                tile, o + q0 * ps, ps, cnt, cn, xf, so + i0 + q0 - a, plane, cn, cnt, tile, 0, 0, spec
            )
    else:
        for q in range(a, b):
            for lane in range(cn):
                tile[o + q * ps + lane] = xf[so + lane * plane + i0 + (q - a) * sw]
    for q in range(wq if edges else 0):
        if q < a or q >= b:
            iw = mw[j * wq + q]
            for lane in range(cn):
                tile[o + q * ps + lane] = xf[so + lane * plane + iw] if iw >= 0 else z


@njit(inline="always")
def _block(wp, src, cb, tb, spec, rows, k, a0, b0, cs, pw, c0, add):
    # rows output channels x pw pixels over k channels and every tap, into cb
    # from c0 (add: into what it holds, a later K chunk); every block shape
    # in one kernel (one compile per dtype, not per shape)
    nt = tb.shape[0]
    if rows == 6:
        if add:
            fma_taps(wp, src, cb, tb, nt, 6, a0, b0, k, nt * 6, 1, cs, c0, pw, spec, 6, 0, 0, 1)
        else:
            fma_taps(wp, src, cb, tb, nt, 6, a0, b0, k, nt * 6, 1, cs, c0, pw, spec, 6, 0, 0, 0)
    elif rows == 5:
        if add:
            fma_taps(wp, src, cb, tb, nt, 5, a0, b0, k, nt * 5, 1, cs, c0, pw, spec, 5, 0, 0, 1)
        else:
            fma_taps(wp, src, cb, tb, nt, 5, a0, b0, k, nt * 5, 1, cs, c0, pw, spec, 5, 0, 0, 0)
    elif rows == 4:
        if add:
            fma_taps(wp, src, cb, tb, nt, 4, a0, b0, k, nt * 4, 1, cs, c0, pw, spec, 4, 0, 0, 1)
        else:
            fma_taps(wp, src, cb, tb, nt, 4, a0, b0, k, nt * 4, 1, cs, c0, pw, spec, 4, 0, 0, 0)
    elif rows == 3:
        if add:
            fma_taps(wp, src, cb, tb, nt, 3, a0, b0, k, nt * 3, 1, cs, c0, pw, spec, 3, 0, 0, 1)
        else:
            fma_taps(wp, src, cb, tb, nt, 3, a0, b0, k, nt * 3, 1, cs, c0, pw, spec, 3, 0, 0, 0)
    elif rows == 2:
        if add:
            fma_taps(wp, src, cb, tb, nt, 2, a0, b0, k, nt * 2, 1, cs, c0, pw, spec, 2, 0, 0, 1)
        else:
            fma_taps(wp, src, cb, tb, nt, 2, a0, b0, k, nt * 2, 1, cs, c0, pw, spec, 2, 0, 0, 0)
    elif rows == TALL_ROWS:
        if add:
            fma_taps(
                wp,
                src,
                cb,
                tb,
                nt,
                TALL_ROWS,
                a0,
                b0,
                k,
                nt * TALL_ROWS,
                1,
                cs,
                c0,
                pw,
                spec,
                TALL_ROWS,
                0,
                0,
                1,
            )
        else:
            fma_taps(
                wp,
                src,
                cb,
                tb,
                nt,
                TALL_ROWS,
                a0,
                b0,
                k,
                nt * TALL_ROWS,
                1,
                cs,
                c0,
                pw,
                spec,
                TALL_ROWS,
                0,
                0,
                0,
            )
    elif add:
        fma_taps(wp, src, cb, tb, nt, 1, a0, b0, k, nt, 1, cs, c0, pw, spec, 1, 0, 0, 1)
    else:
        fma_taps(wp, src, cb, tb, nt, 1, a0, b0, k, nt, 1, cs, c0, pw, spec, 1, 0, 0, 0)


@njit(inline="always")
def _block_out(wp, src, of, tb, spec, rows, k, a0, b0, p0, cs, bias, bo, c0, geo, pend, nrows, acc, at, lda):
    # _block's last K chunk, from the bias (and acc's rows lda apart from at,
    # the earlier chunks, where lda > 0), stored straight into the target
    # (fma_taps_out: pixel p0 of the band at c0, its rows geo[35] apart, the
    # channels geo[33]); rows 4 to 6 or TALL_ROWS (Geometry.direct)
    nt, ldc, wq, ow_n, ldh = tb.shape[0], geo[33], geo[4], geo[30], geo[35]
    if wq == ow_n and ldh == ow_n:  # no junk columns, the target's rows one run: the band is one row
        wq = ow_n = ldh = pend
    if rows == 6:
        fma_taps_out(wp, src, of, tb, nt, 6, a0, b0, k, nt * 6, 1, cs, c0, ldc, bias, bo, p0, wq, ow_n, ldh, pend,
                     nrows, acc, at, lda, spec, 6)  # fmt: skip
    elif rows == TALL_ROWS:
        fma_taps_out(wp, src, of, tb, nt, TALL_ROWS, a0, b0, k, nt * TALL_ROWS, 1, cs, c0, ldc, bias, bo, p0, wq,
                     ow_n, ldh, pend, nrows, acc, at, lda, spec, TALL_ROWS)  # fmt: skip
    elif rows == 5:
        fma_taps_out(wp, src, of, tb, nt, 5, a0, b0, k, nt * 5, 1, cs, c0, ldc, bias, bo, p0, wq, ow_n, ldh, pend,
                     nrows, acc, at, lda, spec, 5)  # fmt: skip
    else:
        fma_taps_out(wp, src, of, tb, nt, 4, a0, b0, k, nt * 4, 1, cs, c0, ldc, bias, bo, p0, wq, ow_n, ldh, pend,
                     nrows, acc, at, lda, spec, 4)  # fmt: skip


@njit(inline="always")
def _block_cl(tile, wp, cb, tab, spec, vectors, k, a0, b0, rows_at, at, vl, c0):
    # rows_for(vectors) pixels (tile offsets rows_at[r]) x vectors * lanes
    # output channels, added into cb from c0 (rows vl apart)
    nt = tab.shape[0]
    if vectors == 4:
        fma_taps(tile, wp, cb, tab, nt, at, a0, b0, k, 1, rows_at, vl, c0, vl, spec, 0, 4, 1, 1)
    elif vectors == 3:
        fma_taps(tile, wp, cb, tab, nt, at, a0, b0, k, 1, rows_at, vl, c0, vl, spec, 0, 3, 1, 1)
    elif vectors == 2:
        fma_taps(tile, wp, cb, tab, nt, at, a0, b0, k, 1, rows_at, vl, c0, vl, spec, 0, 2, 1, 1)
    else:
        fma_taps(tile, wp, cb, tab, nt, at, a0, b0, k, 1, rows_at, vl, c0, vl, spec, 0, 1, 1, 1)


@njit(inline="always")
def _band(wp, tile, c, tb, spec, R, vectors, kh, k, a0, b0, ak, cs, rp, c0, ldc, cnt, nrows, bias, add):
    # R (4 or 6: band_rows) output rows x vectors of pixels of one output
    # channel, into c (the target or a scratch block) through masks
    nt = tb.shape[0]
    if R == 6:
        if vectors >= 4:
            fma_band(
                wp, tile, c, tb, nt, kh, a0, b0, k, ak, cs, rp, c0, ldc, cnt, nrows, bias, add, spec, 6, 4, 2
            )
        elif vectors >= 2:
            fma_band(
                wp, tile, c, tb, nt, kh, a0, b0, k, ak, cs, rp, c0, ldc, cnt, nrows, bias, add, spec, 6, 2, 2
            )
        else:
            fma_band(
                wp, tile, c, tb, nt, kh, a0, b0, k, ak, cs, rp, c0, ldc, cnt, nrows, bias, add, spec, 6, 1, 2
            )
    elif vectors >= 4:
        fma_band(
            wp, tile, c, tb, nt, kh, a0, b0, k, ak, cs, rp, c0, ldc, cnt, nrows, bias, add, spec, 4, 4, 2
        )
    elif vectors >= 2:
        fma_band(
            wp, tile, c, tb, nt, kh, a0, b0, k, ak, cs, rp, c0, ldc, cnt, nrows, bias, add, spec, 4, 2, 2
        )
    else:
        fma_band(
            wp, tile, c, tb, nt, kh, a0, b0, k, ak, cs, rp, c0, ldc, cnt, nrows, bias, add, spec, 4, 1, 2
        )


@njit(inline="always")
def _band_pass(wp, tile, cb, tb, spec, geo, bias, of, n, g, od, h0, noh, c0, nc, q0, q1):
    # A band's output rows of output channel g (one per group) in blocks of
    # 6 rows (dh apart: the rows that share input rows) x px pixels: written
    # straight into a target with unit W stride (masked: rows past the band,
    # columns past the row), else into cb and copied. Where the block stores
    # values (not adding into the target: the first channel chunk) the last
    # block of a row, and at dh 1 of the band, moves back to end at the
    # row's (band's) end, redoing some of the block before it: the same
    # values stored twice, and no masked stores (microcoded on AMD: a 28x28
    # plane's 5x5 blocks ran 1.4x slower masked)
    R, kh, dh, px, V, cs, wq, cg = geo[21], geo[22], geo[23], geo[15], geo[10], geo[20], geo[4], geo[8]
    OW = geo[30]
    ak = kh * tb.shape[0]
    a0 = (g * cg + c0) * ak
    bv = bias[g] if c0 == 0 else of.dtype.type(0)
    unit, rp = geo[36] == 1, dh * wq
    last_col = OW - px if c0 == 0 and OW >= px else OW
    last_row = noh - R if c0 == 0 and dh == 1 and noh >= R else noh
    for base0 in range(q0, q1, R * dh):  # the blocks of output rows q0 .. q1
        base = min(base0, last_row)
        for ph in range(min(dh, noh - base)):
            rows = (noh - base - ph + dh - 1) // dh  # of the band, from this block's first
            for p00 in range(0, OW, px):
                p0 = min(p00, last_col)
                b0 = (base + ph) * wq + p0
                if unit:
                    u, ldc, add = _offset(geo, n, g, od, h0 + base + ph, p0), geo[35] * dh, c0 > 0
                    _band(
                        wp,
                        tile,
                        of,
                        tb,
                        spec,
                        R,
                        V,
                        kh,
                        nc,
                        a0,
                        b0,
                        ak,
                        cs,
                        rp,
                        u,
                        ldc,
                        OW - p0,
                        rows,
                        bv,
                        add,
                    )
                    continue
                _band(wp, tile, cb, tb, spec, R, V, kh, nc, a0, b0, ak, cs, rp, 0, px, px, R, 0.0, 0)
                cnt = np.uint64(min(px, OW - p0))
                for r in range(min(R, rows)):
                    oh = base + ph + r * dh
                    _put(of, _offset(geo, n, g, od, h0 + oh, p0), geo[36], cb, r * px, cnt, bv, c0 > 0, spec)


@njit(inline="always")
def _input_rows(mh, h0, geo):
    # (first, last + 1) of the input rows a band's fill reads (mh's valid
    # entries among the band's rq rows of every H phase)
    lo, hi = np.int64(1 << 62), -1
    for i in range(geo[1]):
        for r in range(min(geo[3], geo[5] - h0)):
            ih = mh[i * geo[5] + h0 + r]
            if ih >= 0:
                lo = min(lo, ih)
                hi = max(hi, ih)
    return lo, hi + 1


@njit(inline="always")
def _prefetch_rows(xf, shape, n, c, nc, od, md, kd_n, rows, q0, q1, noh):
    # The share q0 .. q1 of noh of the input rows rows (first, end) of
    # channels c .. c + nc, every kernel plane, into the caches: a prefetch
    # a cache line
    C, D, H, W = shape[1], shape[2], shape[3], shape[4]
    per = (rows[1] - rows[0]) * W
    total = nc * kd_n * per
    line = 64 // xf.itemsize
    ea, eb = total * q0 // noh, total * q1 // noh
    for ck in range(nc * kd_n):
        a, b = max(ea, ck * per), min(eb, ck * per + per)
        idd = md[od * kd_n + ck % kd_n]
        if a < b and idd >= 0:
            at = (((n * C + c + ck // kd_n) * D + idd) * H + rows[0]) * W - ck * per
            for e in range(a, b, line):
                prefetch(xf, at + e)


@njit(inline="always")
def _zero_tile(tile, used, geo):
    # A task's tile before its fills: zeros past the ``used`` elements (the
    # slack junk pixels read), and with zero padding (geo[25] == 2:
    # Geometry.zeros) everywhere, once: the fills then copy only the input
    # (no edges: a position they do not write is padding, a zero; other
    # modes write the edge values on every fill, no padding the rows past
    # the maps on a task's first, as _conv_task's edges say). Writing
    # the zero columns and rows value by value took a third of a 3x3
    # stride-2 layer's fill (16 channels, 56-value rows) and half of a
    # stride-1 one's.
    if geo[25] == 2:
        tile[:] = 0
    else:
        tile[used:] = 0


@njit(cache=True, fastmath=_FASTMATH)
def _conv_task(x, xf, wpc, bias, out, of, tbc, mdc, mhc, mwc, runsc, spec, geoc, tc):
    # the phase of task tc (see _phase); the arguments below are its slices
    wp, tb, md, mh, mw, runs, geo, t = _phase(wpc, tbc, mdc, mhc, mwc, runsc, geoc, tc)
    x, xf, bias, out, of = borrow(x), borrow(xf), borrow(bias), borrow(out), borrow(of)  # see _phase
    # One task: the tile channel chunk by channel chunk (channel stride cs),
    # each chunk's blocks (the later chunks add into the output). The tile
    # is copied even where it would equal the input (a pointwise conv):
    # reading the input in place measured 1.1-1.8x slower (a block's loads
    # one input plane apart). geo: see Geometry.args
    G, cg, og, rows, nob, band, nbands, cchunk, pw, och, tsize = geo[7:18]
    wq, cs, gpt, kc, span = geo[4], geo[20], geo[24], geo[38], geo[40]
    OD, OH = geo[28], geo[29]
    nt = tb.shape[0]
    n, gc, od, hb, oc = _task(t, nbands, (nob + och - 1) // och, OD, (G + gpt - 1) // gpt)
    h0 = hb * band
    noh = min(band, OH - h0)
    npb = (noh * wq + pw - 1) // pw
    tile = aligned_empty(tsize, out)
    # the slack that junk pixels read: zeros, not whatever the allocator left
    # (denormals there cost microcode assists: a 4x slower 5x5 float64 filter);
    # zero padding: the whole tile once (see _zero_tile)
    _zero_tile(tile, cchunk * cs, geo)
    ob0, ob1 = oc * och, min(nob, (oc + 1) * och)
    sp = span * pw  # pixels a store: span pixel blocks (Geometry.span)
    blk = rows * sp
    # blocks stored by the micro-kernel (Geometry.direct; 2: where the band is one run of the target)
    direct = geo[36] == 1 and (geo[41] == 1 or geo[41] == 2 and geo[35] == geo[30])
    cb = aligned_empty(((ob1 - ob0) * rows * pw if kc < cg else 1) if direct else (ob1 - ob0) * blk, out)
    for g in range(gc * gpt, min(G, gc * gpt + gpt)):  # the task's groups, one tile
        for c0 in range(0, cg, cchunk):
            nc = min(cchunk, cg - c0)
            edges = geo[25] == 0 or geo[25] == 1 and g == gc * gpt and c0 == 0  # see _zero_tile
            _fill(x, xf, tile, n, g * cg + c0, nc, od, h0, md, mh, mw, runs, geo, cs, 1, spec, edges)
            if direct:  # every channel in one chunk: the last K chunk of each block stores it
                for pb in range(npb):
                    p0 = pb * pw
                    for k0 in range(0, nc, kc):
                        nk = min(kc, nc - k0)
                        for ob in range(ob0, ob1):
                            a0 = ((g * nob + ob) * cg + k0) * nt * rows
                            c = (ob - ob0) * rows * pw
                            if k0 + nk < nc:
                                _block(wp, tile, cb, tb, spec, rows, nk, a0, p0 + k0 * cs, cs, pw, c, k0 > 0)
                                continue
                            o = g * og + ob * rows
                            u = _offset(geo, n, o, od, h0, 0)
                            _block_out(wp, tile, of, tb, spec, rows, nk, a0, p0 + k0 * cs, p0, cs, bias, o, u, geo,
                                       noh * wq, min(rows, og - ob * rows), cb, c, pw if k0 > 0 else 0)  # fmt: skip
                continue
            # per pixel block, K chunks of kc channels outer, the o-blocks
            # inner: the chunk's tile lines stay in L1 over the o-blocks (a
            # whole K's lines did not: each block streamed them from L2)
            for s0 in range(0, npb, span):
                for pb in range(s0, min(npb, s0 + span)):
                    p0 = pb * pw
                    for k0 in range(0, nc, kc):
                        nk = min(kc, nc - k0)
                        for ob in range(ob0, ob1):
                            a0 = ((g * nob + ob) * cg + c0 + k0) * nt * rows
                            c = (ob - ob0) * blk + (pb - s0) * pw
                            _block(wp, tile, cb, tb, spec, rows, nk, a0, p0 + k0 * cs, cs, sp, c, k0 > 0)
                # the o-blocks' rows are consecutive in cb: one store for all
                # (each call of an inlined function taking arrays updates
                # their reference counts: 8 atomics that wait for the stores
                # before them, 35% of a 3x3 stem's time when made per o-block)
                nr = min((ob1 - ob0) * rows, og - ob0 * rows)
                _store(cb, bias, of, geo, n, od, h0, g * og + ob0 * rows, nr, s0 * pw, sp, noh, c0 > 0, spec)


@njit(cache=True, fastmath=_FASTMATH)
def _band_task(x, xf, wpc, bias, out, of, tbc, mdc, mhc, mwc, runsc, spec, geoc, tc):
    # the phase of task tc (see _phase); the arguments below are its slices
    wp, tb, md, mh, mw, runs, geo, t = _phase(wpc, tbc, mdc, mhc, mwc, runsc, geoc, tc)
    x, xf, bias, out, of = borrow(x), borrow(xf), borrow(bias), borrow(out), borrow(of)  # see _phase
    # One task of band blocks: the tile channel chunk by chunk, each chunk's
    # blocks of rows (the later chunks add into the output)
    G, cg, band, nbands, cchunk, pw, tsize, cs = (
        geo[7],
        geo[8],
        geo[12],
        geo[13],
        geo[14],
        geo[15],
        geo[17],
        geo[20],
    )
    OD, OH, gpt = geo[28], geo[29], geo[24]
    n, gc, od, hb, _ = _task(t, nbands, 1, OD, (G + gpt - 1) // gpt)
    h0 = hb * band
    noh = min(band, OH - h0)
    tile = aligned_empty(tsize, out)
    _zero_tile(tile, cchunk * cs, geo)  # the slack junk pixels read (see _conv_task)
    cb = aligned_empty(geo[21] * pw, out)
    strip = geo[21] * geo[23]  # a block's output rows (R, dh apart)
    last = min(G, gc * gpt + gpt)
    rows = _input_rows(mh, h0, geo)
    for g in range(gc * gpt, last):  # the task's groups, one tile
        for c0 in range(0, cg, cchunk):
            nc = min(cchunk, cg - c0)
            edges = geo[25] == 0 or geo[25] == 1 and g == gc * gpt and c0 == 0  # see _zero_tile
            _fill(x, xf, tile, n, g * cg + c0, nc, od, h0, md, mh, mw, runs, geo, cs, 1, spec, edges)
            # the next fill's input (the next chunk's channels, or the next
            # group's) brought into the caches, a share per block of rows,
            # while the blocks compute: a plane's copy from memory, then its
            # FMAs, waited for each in turn (5-15% of a 3x3 depthwise layer
            # on 112x112 planes, input and output past the L3)
            more = c0 + nc < cg or g + 1 < last
            nxt = min(cchunk, cg - c0 - nc) if c0 + nc < cg else min(cchunk, cg)
            for q0 in range(0, noh, strip):
                q1 = min(noh, q0 + strip)
                if more and geo[42]:
                    _prefetch_rows(xf, x.shape, n, g * cg + c0 + nc, nxt, od, md, geo[0], rows, q0, q1, noh)
                _band_pass(wp, tile, cb, tb, spec, geo, bias, of, n, g, od, h0, noh, c0, nc, q0, q1)


# The three kinds of task: one call's phases (convs of one input into views
# of one output: the phases of a transposed op, or a plain conv's one), each
# task body reading its phase's slices of the concatenated arguments.
_HEADER = 9  # per phase: tb offset, length; md, mh, mw offsets; runs offset, rows; wp offset; geo offset


@njit(inline="always")
def _phase(wp, tb, md, mh, mw, runs, geo, t):
    # geo = [phases P, tasks T, P headers, T (phase, task in phase) pairs, each phase's geo].
    # The slices are of borrowed views (tasks.borrow: no reference counts):
    # the task's arrays are shared by the threads, and every inlined call
    # taking one updated its count atomically (the line bouncing between
    # the cores: 3-9% of a pointwise layer's samples in one decrement)
    wp, tb, md, mh, mw = borrow(wp), borrow(tb), borrow(md), borrow(mh), borrow(mw)
    runs, geo = borrow(runs), borrow(geo)
    h = 2 + geo[2 + geo[0] * _HEADER + 2 * t] * _HEADER
    return (
        wp[geo[h + 7] :],
        tb[geo[h] : geo[h] + geo[h + 1]],
        md[geo[h + 2] :],
        mh[geo[h + 3] :],
        mw[geo[h + 4] :],
        runs[geo[h + 5] : geo[h + 5] + geo[h + 6]],
        geo[geo[h + 8] :],
        geo[3 + geo[0] * _HEADER + 2 * t],
    )


@njit(inline="always")
def _task(t, nbands, noc, OD, G):
    # (n, g, od, band, o-chunk) of task t
    oc = t % noc
    r1 = t // noc
    hb = r1 % nbands
    r2 = r1 // nbands
    od = r2 % OD
    r3 = r2 // OD
    return r3 // G, r3 % G, od, hb, oc


@njit(cache=True, fastmath=_FASTMATH)
def _conv_cl_task(x, xf, wpc, bias, out, of, tbc, mdc, mhc, mwc, runsc, spec, geoc, tc):
    # the phase of task tc (see _phase); the arguments below are its slices
    wp, tabs, md, mh, mw, runs, geo, t = _phase(wpc, tbc, mdc, mhc, mwc, runsc, geoc, tc)
    x, xf, bias, out, of = borrow(x), borrow(xf), borrow(bias), borrow(out), borrow(of)  # see _phase
    # One task: the tile channels-last (pixel stride ps), its output pixels
    # (the band's, in order: no junk columns) in blocks of px gathered rows
    # (tile offsets: tabs after the nt tap offsets) x vl output channels,
    # summed over the chunk's channels kc at a time (a block's weights, nt x
    # kc x vl, stay in L2 over the task's pixel blocks) into acc, then stored
    G, cg, og, vectors, nob, band, nbands, cc, px, och, tsize, vl, ps = geo[7:20]
    OD, OH, OW, gpt, nt, kc, ipt = geo[28], geo[29], geo[30], geo[24], geo[37], geo[38], geo[39]
    tab, pix = tabs[:nt], tabs[nt:]
    ns, gc, od, hb, oc = _task(t, nbands, (nob + och - 1) // och, OD, (G + gpt - 1) // gpt)
    n0 = ns * ipt  # the task's samples: n0.. (ipt > 1: whole planes, one after the other in the tile)
    m = min(ipt, x.shape[0] - n0)
    h0 = hb * band
    noh = min(band, OH - h0)
    S = ps * geo[20]  # a sample's part of the tile
    npb = (m * noh * OW + px - 1) // px
    ppad = (ipt * band * OW + px - 1) // px * px
    ob0, ob1 = oc * och, min(nob, (oc + 1) * och)
    tile = aligned_empty(tsize, out)
    tile[ipt * S :] = 0  # the slack past the pixels (see _conv_task)
    acc = aligned_empty((ob1 - ob0) * ppad * vl, out)
    for g in range(gc * gpt, min(G, gc * gpt + gpt)):  # the task's groups, one tile
        acc[:] = 0
        for c0 in range(0, cg, cc):
            nc = min(cc, cg - c0)
            edges = g == gc * gpt and c0 == 0 or geo[25] == 0  # see _fill
            ci = g * cg + c0
            for j in range(m):
                _fill_cl(x, xf, tile[j * S :], n0 + j, ci, nc, od, h0, md, mh, mw, runs, geo, ps, spec, edges)
            for ob in range(ob0, ob1):
                for k0 in range(0, nc, kc):
                    b0 = ((g * nob + ob) * nt * cg + c0 + k0) * vl
                    nk = min(kc, nc - k0)
                    for pb in range(npb):
                        c = ((ob - ob0) * ppad + pb * px) * vl
                        _block_cl(
                            tile, wp, acc, tab, spec, vectors, nk, k0, b0, pix[pb * px :], cg * vl, vl, c
                        )
        for ob in range(ob0, ob1):
            o0 = g * og + ob * vl
            for j in range(m):
                a0 = ((ob - ob0) * ppad + j * noh * OW) * vl
                _store_cl(acc, a0, bias, of, geo, n0 + j, od, h0, o0, min(vl, og - ob * vl), noh, spec)


@njit(inline="always")
def _offset(geo, n, o, od, oh, ow):
    # element offset of out[n, o, od, oh, ow] in the flat target (geo[31:37]:
    # its offset and strides, a phase of a transposed op's output included)
    return geo[31] + n * geo[32] + o * geo[33] + od * geo[34] + oh * geo[35] + ow * geo[36]


@njit(inline="always")
def _put(of, uo, sw, cb, k, cnt, bv, add, spec):
    # cnt values cb[k:] (plus bv, or added) into of from uo, sw apart: at a
    # unit stride as vectors and one masked vector (rows of 14-60 values ran
    # mostly in a compiled loop's scalar remainder); else one by one, unsigned
    # indices (no negative-index wraparound test)
    if sw == 1:
        if add:
            vector_run(of, uo, cb, k, cnt, bv, 2, spec)
        else:
            vector_run(of, uo, cb, k, cnt, bv, 1, spec)
        return
    if sw == 2:  # a transposed op's stride-2 phase: the even lanes of vectors, masked
        if add:
            vector_run(of, uo, cb, k, cnt, bv, 6, spec)
        else:
            vector_run(of, uo, cb, k, cnt, bv, 5, spec)
        return
    u, uk, un, us = np.uint64(uo), np.uint64(k), np.uint64(cnt), np.uint64(sw)
    if add:
        for j in range(un):
            of[u + j * us] += cb[uk + j]
    else:
        for j in range(un):
            of[u + j * us] = cb[uk + j] + bv


@njit(inline="always")
def _store_cl(acc, a0, bias, of, geo, n, od, oh0, o0, no, noh, spec):
    # the band's noh x OW pixels x channels [o0, o0 + no) of a channels-last
    # accumulator (acc[a0 + p * vl + j]), plus the bias, into the target: at
    # a unit W stride by transposes of up to lanes pixels of a row x lanes
    # channels, else one value at a time
    OW, vl, cst = geo[30], geo[18], geo[33]
    L = vl // geo[10]
    # the target's rows one run (a plane of a C-contiguous output): the
    # band's pixels as one row, so that a 7-wide plane's transposes are whole
    # blocks of lanes pixels (plain stores) but the last, not 7 partial ones
    flat = geo[36] == 1 and geo[35] == OW
    nrow, width = (1, noh * OW) if flat else (noh, OW)
    for oh in range(nrow):
        for ow in range(0, width, L if geo[36] == 1 else width):
            u = _offset(geo, n, o0, od, oh0 + oh, ow)
            s0 = a0 + (oh * width + ow) * vl
            if geo[36] == 1:
                cnt = min(L, width - ow)
                for j0 in range(0, no, L):
                    transpose_block(
                        of, u + j0 * cst, cst, no - j0, cnt, acc, s0 + j0, vl, cnt, L, bias, o0 + j0, 1, spec
                    )
                continue
            for q in range(OW):
                for j in range(no):
                    of[u + q * geo[36] + j * cst] = acc[s0 + q * vl + j] + bias[o0 + j]


@njit(inline="always")
def _store(cb, bias, of, geo, n, od, oh0, o0, nr, p0, pw, noh, add, spec):
    # pixels [p0, p0 + pw) of rows o0.. of the block (cb rows pw apart) into
    # the target (plus the bias, or added to it: a later channel chunk),
    # through of (flat) at computed offsets (no views: no refcounts). Row
    # segments outer, channels inner: every channel's segment has the same
    # length, so the vector loop's branches repeat
    wq, ow_n = geo[4], geo[30]
    # no junk columns and the target's rows one run: the block is one segment
    flat = wq == ow_n and geo[35] == ow_n * geo[36]
    p = p0
    while p < p0 + pw:
        oh = p // wq
        if oh >= noh:
            break
        ow = p - oh * wq
        if flat:
            e = p0 + pw
            cnt = min(e, noh * wq) - p
        else:
            e = min(p0 + pw, p + wq - ow)  # end of this row's part of the block
            cnt = min(e - p, ow_n - ow)
        if cnt > 0:
            u = _offset(geo, n, o0, od, oh0 + oh, ow)
            # one call site: each inlined copy of _put is four vectorized loops to compile
            for r in range(nr):
                _put(of, u + r * geo[33], geo[36], cb, r * pw + p - p0, cnt, bias[o0 + r], add, spec)
        p = e


TALL_ROWS = 14  # output channels of the tall row block (2 vectors with 32 registers)


def _useful(og: int, rows: int, pixels: int, px: int) -> float:
    """The fraction of a plane's row blocks that is output: ``og`` channels in
    blocks of ``rows``, ``pixels`` in blocks of ``px``."""
    return og / (-(-og // rows) * rows) * pixels / (-(-pixels // px) * px)


def block_rows(og: int, registers: int) -> int:
    """Output channels per register block of the pixel layout: ``og`` itself
    below 4, else the one of 4, 5, 6 with the most useful work per load (the
    rows padding the group's channels count as waste; more rows share each
    loaded input vector)."""
    if og < 4:
        return og
    return max((6, 5, 4), key=lambda r: og / (-(-og // r) * r) * (1 - 1 / (r + 2)))


def block_vectors(og: int, lanes: int, registers: int, pixels: int = 0) -> int:
    """Vectors of output channels per register block of the channels-last
    layout: the most useful FMAs per cycle, counting the padded lanes of the
    last block, the padded rows of a plane's last block (``pixels`` output
    pixels; 0: none), the loads per FMA and the accumulators in flight."""

    def rate(v):
        rows = rows_for(v, registers)
        vl = v * lanes
        useful = og / (-(-og // vl) * vl) * (pixels / (-(-pixels // rows) * rows) if pixels else 1.0)
        fmas = rows * v
        return useful * fmas / max(fmas, rows + v) * min(1.0, fmas / 12)

    return max(range(4, 0, -1), key=rate)


def uses_channels_last(plan, lanes: int, registers: int = 32) -> bool:
    """The channels-last layout (lanes over output channels, gathered pixel
    rows) where ``config.direct_layout`` asks for it, and with "auto" where
    the pixel layout's blocks would be mostly padding: its useful fraction of
    the FMAs (the junk columns of the padded rows, the last block of a plane,
    the channel blocks) under 1/1.1 of this layout's. Both need a group to
    have at least a vector of output channels; "auto" also wants 16 input
    channels a group (the k loop of a tap runs over them)."""
    og, cg = plan.c_out // plan.groups, plan.c_in // plan.groups
    if config.direct_layout == "pixels" or og < lanes:
        return False
    if config.direct_layout == "channels":
        return True
    if cg < CL_MIN_CHANNELS:
        return False
    _, oh, ow = plan.out_size
    wq = ow + plan.dilation[2] * (plan.kernel[2] - 1) // plan.stride[2]
    rows = block_rows(og, registers)
    px = vectors_for(rows, registers) * lanes
    pixel = _useful(og, rows, oh * wq, px) * ow / wq
    v = block_vectors(og, lanes, registers, oh * ow)
    channels = _useful(og, v * lanes, oh * ow, rows_for(v, registers))
    return channels > CL_MARGIN * pixel


CL_MIN_CHANNELS = 16
DIRECT_STORES = True  # Geometry.direct (a switch for comparisons)
STORE_PIXELS = 128  # pixels of the pixel layout's stores (Geometry.span)
STORE_BYTES = 16 * 1024  # and the most accumulators they hold
CL_MARGIN = 1.1  # the channels-last blocks ran 5-8% below the pixel blocks on planes where both were full


BAND_ROWS = 6  # output rows of a band block for kernels of 5 or more rows
SHORT_BAND_ROWS = 4  # and for 3 or 4 rows (fma_band's rows literals in _band)


def band_rows(kh: int) -> int:
    """Output rows of a band block for a kernel of ``kh`` rows (0: none).
    :func:`numbaconv.cpu.microkernel.fma_band` needs ``kh >= rows - 1``;
    each loaded input row feeds up to ``min(rows, kh)`` FMAs."""
    return BAND_ROWS if kh >= BAND_ROWS - 1 else SHORT_BAND_ROWS if kh >= SHORT_BAND_ROWS - 1 else 0


def uses_band(plan) -> bool:
    """Band blocks (:func:`numbaconv.cpu.microkernel.fma_band`: rows of one
    output channel sharing each loaded input row, stored straight into the
    output through masks) for one output channel per group (depthwise,
    single-channel filters) at H stride 1 with at least 3 kernel rows
    (:func:`band_rows`), and output rows enough that a block's junk rows past
    the plane stay under half of them. With 1 or 2 kernel rows a band block
    does about as many loads per FMA as the pixel layout's one-row block."""
    rows_per_block = band_rows(plan.kernel[1])
    unit = rows_per_block * plan.dilation[1]
    rows = plan.out_size[1]
    return (
        config.direct_layout != "channels"
        and plan.c_out == plan.groups
        and plan.stride[1] == 1
        and rows_per_block > 0
        and -(-rows // unit) * unit <= 1.5 * rows  # few rows: the last block's junk rows outweigh it
    )


_PACKED = WeightCache("weight_cache_bytes")


def packed_weights(w5, groups: int, block: int, channels_last: bool, band: bool = False) -> np.ndarray:
    """``w5`` as ``[group][block][channel][tap][o]`` (pixel layout, ``block``
    output channels) or ``[group][block][tap][channel][o]`` (channels-last,
    ``block`` lanes), zero past the group's channels, or (``band``: one
    output channel per group) ``[group][channel][kh][kd][kw]``; flat; kept
    between calls (:class:`WeightCache`)."""
    return _PACKED.get(
        w5,
        ("igemm", groups, block, channels_last, band),
        lambda: pack(w5, groups, block, channels_last, band),
    )


def pack(w5, groups: int, block: int, channels_last: bool, band: bool = False) -> np.ndarray:
    """:func:`packed_weights` without the cache."""
    if band:
        return np.ascontiguousarray(w5.transpose(0, 1, 3, 2, 4)).ravel()
    o, cg = w5.shape[:2]
    og = o // groups
    nob = -(-og // block)
    w = w5.reshape(groups, og, cg, -1)
    wpad = np.zeros((groups, nob * block, cg, w.shape[3]), w5.dtype)
    wpad[:, :og] = w
    order = (0, 1, 4, 3, 2) if channels_last else (0, 1, 3, 4, 2)
    packed = wpad.reshape(groups, nob, block, cg, -1).transpose(order)
    return aligned_copy(packed).ravel()


_TILE_BYTES = 384 * 1024  # a task's input tile: well inside a core's L2
# pixel blocks: the tile lines a K chunk's blocks read (half a 32 KB L1);
# with the whole K a block streamed them from L2 (AMD Zen 5, 2 threads:
# 1x1 c256, 3x3 s2 64->128, the 7x7 stem and 3x3 c64 5-10% faster)
_L1_BYTES = 16 * 1024
_SLAB_BYTES = 4 << 20  # channels-last: a block's weights per channel chunk (chunks measured slower: see docs)


def _phases(kernel, dilation, stride):
    """The phases ``(k * dilation) % stride`` the taps use, in order."""
    return sorted({(k * dilation) % stride for k in range(kernel)})


def _phase_map(size, lo, mode, phases, stride, count):
    """``[i][j]`` -> input index of padded position ``j * stride + phases[i]``
    (the padding mode folded in, -1 for zeros), ``count`` positions per phase."""
    q = np.asarray(phases, dtype=np.int64)[:, None] + np.arange(count, dtype=np.int64)[None, :] * stride
    return np.ascontiguousarray(fold_index(q - lo, size, mode), dtype=np.int64).ravel()


class Geometry:
    """Layout of one call: the tile of a task (a band of output rows of one
    output plane, a chunk of a group's input channels, the H and W phases its
    taps use), its per-tap offsets, the register block, the split into tasks.
    Everything here is sized by the output and the kernel, never by the padding."""

    def __init__(self, plan, lanes, registers, threads, band=True, share=1):
        self.plan = plan
        self.lanes = lanes
        self.share = share  # plans whose tasks run in one region (phases): each wants that much fewer
        kd, kh, kw = plan.kernel
        _, dh, dw = plan.dilation
        _, self.sh, self.sw = plan.stride
        od, oh, ow = plan.out_size
        self.ph = _phases(kh, dh, self.sh)
        self.pw_ = _phases(kw, dw, self.sw)
        self.wq = ow + dw * (kw - 1) // self.sw
        self.hq = oh + dh * (kh - 1) // self.sh
        self.og = plan.c_out // plan.groups
        self.cg = plan.c_in // plan.groups
        self.channels_last = uses_channels_last(plan, lanes, registers)
        self.band_rows = band_rows(kh) if band and uses_band(plan) else 0
        if self.band_rows:  # one output channel: blocks of rows x pixels of a row
            vmax = max(v for v in (4, 2, 1) if v <= vectors_for(self.band_rows, registers) or v == 1)
            need = -(-ow // lanes)
            self.vectors = min(v for v in (vmax, min(vmax, 2), 1) if v >= need or v == vmax)
            self.block = 1
            self.px = self.vectors * lanes
        elif self.channels_last:
            self.vectors = block_vectors(self.og, lanes, registers, oh * ow)
            self.block = self.vectors * lanes  # output channels per block
            self.px = rows_for(self.vectors, registers)  # pixels per block (gathered rows)
        else:
            self.vectors = self.block = block_rows(self.og, registers)
            self.px = vectors_for(self.block, registers) * lanes
            # small planes: tall blocks (more output channels, fewer pixels)
            # where they pad the plane's pixels and the group's channels less
            tall = vectors_for(TALL_ROWS, registers) * lanes
            pixels = plan.out_size[1] * self.wq
            better = _useful(self.og, TALL_ROWS, pixels, tall) > 1.05 * _useful(
                self.og, self.block, pixels, self.px
            )
            if better and registers >= TALL_ROWS + 2:  # 14 accumulators, a B vector, a broadcast
                self.vectors = self.block = TALL_ROWS
                self.px = tall
        self.nob = -(-self.og // self.block)
        self.taps = [(a, b * dh, c * dw) for a in range(kd) for b in range(kh) for c in range(kw)]
        self._split(plan, threads)
        self.direct = self._uses_direct(plan)
        if self.band_rows and self.workspace(threads) > config.workspace_bytes:
            self.__init__(plan, lanes, registers, threads, band=False, share=share)  # row blocks need less

    def _split(self, plan, threads):
        item = plan.dtype.itemsize
        od, oh, _ = plan.out_size
        limit = max(1, min(_TILE_BYTES, config.workspace_bytes // max(threads, 1)) // item)
        base = max(1, plan.batch * plan.groups * od)
        want = max(1, _TASKS_PER_THREAD * threads // self.share)
        if self.band_rows:
            band = oh if base >= want else max(1, oh * base // want)
            unit = self.band_rows * plan.dilation[1]  # rows a block covers
            band = min(oh, -(-band // unit) * unit)
            while band > unit and self.cg * self.channel_elements(band) > limit:
                band = -(-((band + 1) // 2) // unit) * unit
        else:
            # tasks from bands of output rows first: a chunk of a task's
            # blocks of output channels fills the band's whole tile again
            # and streams it from L2 again for a fraction of its FMAs (a
            # batch-1 7x7 stride-2 stem in 6 chunks of 2 blocks: 1.3x the
            # time of 23 bands of 5 rows); pixel layout only, bands of at
            # least the kernel's halo rows and of 4 pixel blocks (a 28-wide
            # plane in bands of one row filled 45% of a block's lanes);
            # channels-last where the planes are few (CL_BANDS)
            top = oh
            cl_bands = CL_BANDS and oh >= CL_BAND_MIN and base <= threads
            if base < want and not (self.nob > 1 and self.channels_last and not cl_bands):
                top = max(1, oh * base // want)
                if self.nob > 1:
                    halo = plan.dilation[1] * (plan.kernel[1] - 1) // self.sh
                    top = min(oh, max(top, halo, -(-4 * self.px // self.wq)))
                    if self.channels_last:
                        top = min(oh, max(top, CL_HALO_RATIO * halo))
            band = self._pixel_band(oh, top, limit)
        self.band, self.nbands = band, -(-oh // band)
        self.rq = band + plan.dilation[1] * (plan.kernel[1] - 1) // self.sh
        self.cs = self.channel_elements(band)
        self.cc = max(1, min(self.cg, limit // self.cs))
        # channels-last pixel stride: not a multiple of 128 bytes, or the
        # transposing copy's stores fall into a few cache sets
        line = max(1, 64 // item)
        self.ps = self.cc if self.cc < line else (-(-self.cc // line) | 1) * line
        # past the last channel: the junk pixels of the last block of a band
        # (band blocks: up to a block of rows past the band, dh apart)
        rows = self.band_rows * plan.dilation[1] + 1 if self.band_rows else 1
        slack = self.px + self.wq * (len(self.ph) * len(self.pw_) + rows)
        # channels-last: samples per task, a task's accumulators (its pixels
        # padded to px, x its output channels), channels per weight chunk
        self.ipt = self._images(plan, limit) if self.channels_last and self.nbands == 1 else 1
        self.ppad = 0
        if self.channels_last:
            base = max(1, -(-plan.batch // self.ipt) * plan.groups * od)
            self.ppad = -(-self.ipt * band * plan.out_size[2] // self.px) * self.px
        if self.channels_last:
            self.kc = max(1, min(self.cc, _SLAB_BYTES // (len(self.taps) * self.block * item)))
        else:
            self.kc = max(1, min(self.cc, _L1_BYTES // (self._block_span() * item)))
        self.tile = (
            (self.ps * (self.ipt * self.cs + slack)) if self.channels_last else (self.cc * self.cs + slack)
        )
        tasks = base * self.nbands
        # chunks of blocks of output channels for tasks enough, but only to
        # _CHUNK_TASKS_PER_THREAD: each chunk fills its band's tile again
        # (a stride-2 fill costs about a cycle a value, 16 FMAs a cycle: a
        # batch-1 3x3 s2 128 -> 256 layer on 14x14 ran 1.4x faster in 8
        # tasks than in 16)
        chunked = max(1, _CHUNK_TASKS_PER_THREAD * threads // self.share)
        self.och = self.nob if tasks >= chunked else -(-self.nob // -(-chunked // tasks))
        # groups per task: many small groups (depthwise, grouped) share a task,
        # its tile and its set-up (one plane a task: 14x14 depthwise planes
        # spent more in the tasks' entry than in their FMAs)
        self.gpt = max(1, min(plan.groups, tasks // want))
        # pixel layout: pixel blocks a store takes (the output rows written in
        # runs of ~STORE_PIXELS, not px: a 3x3 stem's 32 channels x 24 pixels
        # a store spent more in the calls than in the stores), as long as
        # the accumulators stay within STORE_BYTES
        self.span = 1
        if not (self.channels_last or self.band_rows):
            per = self.och * self.block * self.px * item
            self.span = max(1, min(-(-STORE_PIXELS // self.px), STORE_BYTES // per))

    def _uses_direct(self, plan):
        """Pixel layout, every input channel of a group in one tile: the
        micro-kernel's last K chunk stores each block into the output
        (fma_taps_out; a target with unit W stride, which the task checks),
        the stores between the FMAs instead of a copy after them. Tile rows
        narrower than a vector only without junk columns, into a target
        whose rows are one run (the task checks): one long row."""
        return (
            DIRECT_STORES
            and not (self.channels_last or self.band_rows)
            and self.cc >= self.cg
            and (self.wq >= self.lanes or self.wq == plan.out_size[2])
            and self.block in (4, 5, 6, TALL_ROWS)
        )

    def _block_span(self):
        """Tile elements of one input channel that a pixel block reads: the
        union of its taps' runs of ``px`` values (cache lines counted whole)."""
        if self.channels_last or self.band_rows:
            return 1
        line = 16
        starts = sorted({int(t) // line for t in self.tap_offsets()})
        span, end = 0, -1
        for a in starts:
            b = a + -(-self.px // line) + 1
            span += b - max(a, end) if b > end else 0
            end = max(end, b)
        return span * line

    def tasks(self):
        """Tasks of a call: (samples, chunk of groups, output plane, band, chunk of blocks)."""
        p = self.plan
        samples = -(-p.batch // self.ipt)
        return samples * -(-p.groups // self.gpt) * p.out_size[0] * self.nbands * -(-self.nob // self.och)

    def _images(self, plan, limit):
        """Samples per task of the channels-last layout (whole planes): the
        fewest whose pixels fill the blocks of ``px`` rows to within 3%
        (a 7x7 plane's 49 pixels in blocks of 6: 91%; two planes' 98: 96%),
        else the fullest, up to 4, while the tile holds every channel."""
        if self.cc < self.cg:
            return 1
        pixels = plan.out_size[1] * plan.out_size[2]

        def fill(m):
            return m * pixels / (-(-m * pixels // self.px) * self.px)

        fits = [m for m in range(1, min(plan.batch, 4) + 1) if m * self.cg * self.cs <= limit] or [1]
        good = [m for m in fits if fill(m) >= 0.97]
        return good[0] if good else max(fits, key=fill)

    def _pixel_band(self, oh, top, limit):
        """Output rows per band for pixel blocks: of the bands up to ``top``
        rows whose tile fits ``limit`` elements (at least one row), the one
        computing the fewest pixels per output pixel (the last pixel block of
        each band is padded to ``px``; a band's halo rows are copied again),
        of two alike the one with fewer bands, then the evener. Halving the plane until it fitted
        padded a 3x3 stride-2 layer's 7-row bands of 203 pixels to 256."""
        halo = self.plan.dilation[1] * (self.plan.kernel[1] - 1) // self.sh
        row = self.plan.out_size[2] if self.channels_last else self.wq  # pixels a row's blocks cover

        def cost(b):
            whole, rest = divmod(oh, b)
            blocks = whole * -(-(b * row) // self.px) + -(-(rest * row) // self.px)
            return blocks * self.px / (oh * row) * (1 + 0.02 * (whole + (rest > 0)) * halo / oh)

        fits = [b for b in range(1, top + 1) if self.cg * self.channel_elements(b) <= limit] or [1]
        return min(fits, key=lambda b: (round(cost(b), 6), -(-oh // b), b))

    def channel_elements(self, band):
        """Tile elements per input channel for a band of ``band`` output rows."""
        rq = band + self.plan.dilation[1] * (self.plan.kernel[1] - 1) // self.sh
        return self.plan.kernel[0] * len(self.ph) * len(self.pw_) * rq * self.wq

    def tap_offsets(self):
        """Per tap, the tile offset of output pixel 0's input (elements); in
        band blocks, per (kd, kw) tap (the kernel rows are the block's)."""
        nph, npw, rq, wq = len(self.ph), len(self.pw_), self.rq, self.wq
        plane = nph * npw * rq * wq
        out = []
        taps = [(a, 0, c) for a, b, c in self.taps if b == 0] if self.band_rows else self.taps
        for a, b, c in taps:
            i, j = self.ph.index(b % self.sh), self.pw_.index(c % self.sw)
            out.append(a * plane + (i * npw + j) * rq * wq + (b // self.sh) * wq + c // self.sw)
        if not self.channels_last:
            return np.array(out, dtype=np.int64)
        # then, channels-last: each of a band's output pixels' tile offset
        # (its row r and column q at (r * wq + q) * ps), 0 past them
        ow = self.plan.out_size[2]
        p = np.arange(self.band * ow, dtype=np.int64)
        one = (p // ow * self.wq + p % ow) * self.ps
        pix = np.zeros(self.ppad, dtype=np.int64)
        pix[: self.ipt * p.size] = (np.arange(self.ipt)[:, None] * self.cs * self.ps + one[None, :]).ravel()
        return np.concatenate((np.array(out, dtype=np.int64) * self.ps, pix))

    def runs(self):
        """Per W phase ``(a, b, i0)``: the phase's columns ``[a, b)`` read the
        input in place, ``i0 + (q - a) * sw`` (the interior, in every mode)."""
        lo, size, sw = self.plan.padding[2][0], self.plan.in_size[2], self.sw
        out = np.zeros((len(self.pw_), 3), dtype=np.int64)
        for j, pw in enumerate(self.pw_):
            a = min(self.wq, max(0, -(-(lo - pw) // sw)))
            b = max(a, min(self.wq, -(-(lo + size - pw) // sw)))
            out[j] = a, b, a * sw + pw - lo
        return out

    def maps(self):
        """Input plane of each (output plane, kd); input row of each (H phase,
        row); input column of each (W phase, column) (-1: zero padding)."""
        p = self.plan
        od = np.arange(p.out_size[0], dtype=np.int64)[:, None] * p.stride[0]
        d = od + np.arange(p.kernel[0], dtype=np.int64)[None, :] * p.dilation[0] - p.padding[0][0]
        md = np.ascontiguousarray(fold_index(d, p.in_size[0], p.mode(0)), dtype=np.int64).ravel()
        mh = _phase_map(p.in_size[1], p.padding[1][0], p.mode(1), self.ph, self.sh, self.hq)
        mw = _phase_map(p.in_size[2], p.padding[2][0], p.mode(2), self.pw_, self.sw, self.wq)
        return md, mh, mw

    def args(self):
        """The integers the kernels take (``geo``), in this order; :func:`run`
        appends the target's shape, offset and strides (:func:`target_desc`)."""
        p = self.plan
        return np.array(
            [p.kernel[0], len(self.ph), len(self.pw_), self.rq, self.wq, self.hq, self.sw, p.groups, self.cg,
             self.og, self.vectors, self.nob, self.band, self.nbands, self.cc, self.px, self.och, self.tile,
             self.block, self.ps, self.cs, self.band_rows, p.kernel[1], p.dilation[1], self.gpt,
             self.zeros()],
            dtype=np.int64,
        )  # fmt: skip

    def zeros(self) -> int:
        """``geo[25]``: 0 for a padding mode other than zeros (the fills write
        the edges each time), 1 for zeros with no padding, 2 for zero padding
        (a task zeroes its tile once and the fills copy only the input:
        :func:`_zero_tile`)."""
        p = self.plan
        if p.padding_mode != "zeros":
            return 0
        return 2 if any(lo > 0 or hi > 0 for lo, hi in p.padding) else 1

    def workspace(self, threads):
        """Bytes: one tile and accumulator block per thread, the packed weights."""
        return self.tile_bytes(threads) + self.weight_bytes()

    def tile_bytes(self, threads):
        """Bytes of one tile and accumulator block (channels-last: a task's
        accumulators) per thread."""
        acc = (
            self.och * self.ppad * self.block
            if self.channels_last
            else max(self.block * self.och, self.band_rows) * self.px * self.span
        )
        return threads * (self.tile + acc) * self.plan.dtype.itemsize

    def tail(self):
        """What the kernels take after the target's description (``geo[37:]``):
        the taps, the channels-last layout's channels per weight chunk and
        samples per task, the pixel layout's pixel blocks per store and
        whether its micro-kernel stores the blocks (:attr:`direct`)."""
        direct = 0 if not self.direct else 1 if self.wq >= self.lanes else 2
        return [len(self.taps), self.kc, self.ipt, self.span, direct, int(PREFETCH and self.band_rows > 0)]

    def block_values(self) -> int:
        """Accumulator values of one register block (rows x pixels, or
        output channels x pixels in the channels-last layout)."""
        return max(1, self.band_rows) * self.block * self.px

    def weight_bytes(self):
        """Bytes of the packed weights."""
        return self.plan.groups * self.nob * self.block * self.cg * len(self.taps) * self.plan.dtype.itemsize


FEATURES = ("call", "outputs", "inputs", "tile", "flops_px", "flops_px_1tap", "flops_cl", "block_values")


def cost_features(plan, share: int = 1) -> dict[str, float]:
    """Operation counts of one call (float32 units, before ``costs.per_dtype``):
    the FLOPs the micro-kernel does (junk columns and padded blocks included)
    in either layout, the elements copied into tiles (halos included), the
    register blocks' accumulator values (each block loads and stores them), the inputs and
    the outputs (memory traffic: what bounds pointwise and depthwise layers)."""
    geo = geometry(plan, dtype=np.float32, share=share)[0]
    od, oh, _ = plan.out_size
    base = plan.batch * plan.groups * od
    pixels = base * geo.nbands * (-(-(geo.band * geo.wq) // geo.px) * geo.px)
    if geo.band_rows:  # blocks of rows (dh apart) x px columns of each row
        rows = -(-geo.band // (geo.band_rows * plan.dilation[1])) * geo.band_rows * plan.dilation[1]
        pixels = base * geo.nbands * rows * (-(-plan.out_size[2] // geo.px) * geo.px)
    elif geo.channels_last:  # the band's pixels (ipt samples' a task), no junk columns
        pixels = -(-plan.batch // geo.ipt) * plan.groups * od * geo.nbands * geo.ppad
    flops = 2.0 * pixels * geo.nob * geo.block * geo.cg * len(geo.taps)
    chunks = -(-geo.cg // geo.cc)
    noc = -(-geo.nob // geo.och)  # each o-chunk of a band copies the band's tile
    return {
        "call": 1.0,
        "outputs": float(plan.batch * plan.c_out * int(np.prod(plan.out_size))),
        "inputs": float(plan.batch * plan.c_in * int(np.prod(plan.in_size))),  # read from memory once
        "tile": float(base * geo.nbands * geo.cg * geo.channel_elements(geo.band) * noc),
        # one tap: no input vector is reused across taps (each k step streams new lines)
        "flops_px": 0.0 if geo.channels_last or len(geo.taps) == 1 else flops,
        "flops_px_1tap": flops if not geo.channels_last and len(geo.taps) == 1 else 0.0,
        "flops_cl": flops if geo.channels_last else 0.0,
        # each register block loads and stores its accumulators: counted in
        # values, so a host with narrower vectors (more, smaller blocks for
        # the same FLOPs) is not charged a wide block's cost per block
        "block_values": float(pixels // (geo.px * max(1, geo.band_rows)) * geo.nob * chunks)
        * geo.block_values(),
    }


@functools.lru_cache(maxsize=256)
def _geometry(plan, lanes, registers, threads, layout, budget, share):
    """:class:`Geometry` and the kernels' index arrays, kept per plan and
    setting (a call asked for them 4 times: ~40% of a small conv's time)."""
    geo = Geometry(plan, lanes, registers, threads, share=share)
    md, mh, mw = geo.maps()
    arrays = (geo.tap_offsets(), md, mh, mw, geo.runs())
    geo_args = geo.args()
    for a in arrays + (geo_args,):
        a.flags.writeable = False
    return geo, arrays, geo_args


def geometry(plan, threads: int | None = None, dtype=None, share: int = 1):
    """``(Geometry, index arrays, geo)`` of ``plan`` on this host and ``config``
    (with the lanes of ``dtype`` if given, else of the plan's dtype; ``share``
    plans' tasks in one parallel region: :func:`run_phases`)."""
    spec = spec_for(plan.dtype if dtype is None else dtype)
    threads = _threads() if threads is None else threads
    return _geometry(
        plan, spec.lanes, spec.registers, threads, config.direct_layout, config.workspace_bytes, share
    )


def workspace_bytes(plan, share: int = 1) -> int:
    """The tasks' tiles, one per thread at a time, and the packed weights."""
    threads = _threads()
    return geometry(plan, threads, share=share)[0].workspace(threads)


def fits(plan, share: int = 1) -> bool:
    """Whether :func:`workspace_bytes` is within ``config.workspace_bytes``
    (kept per plan and settings: the direct path asks on every call)."""
    spec = spec_for(plan.dtype)
    return _fits(
        plan, spec.lanes, spec.registers, _threads(), config.direct_layout, config.workspace_bytes, share
    )


@functools.lru_cache(maxsize=1024)
def _fits(plan, lanes, registers, threads, layout, budget, share) -> bool:
    geo = _geometry(plan, lanes, registers, threads, layout, budget, share)[0]
    return geo.workspace(threads) <= budget


def target_desc(base: np.ndarray, view: np.ndarray) -> tuple:
    """``geo[26:37]`` of a call writing ``view``, a view of the C-contiguous
    ``base`` (any strides): its shape, then its offset and strides in elements."""
    item = base.itemsize
    off = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item
    return view.shape + (off,) + tuple(s // item for s in view.strides)


def phase_desc(shape, start, step) -> tuple:
    """:func:`target_desc` of ``base[:, :, d0::sd, h0::sh, w0::sw]`` for a
    C-contiguous ``base`` of ``shape`` (``start = (d0, h0, w0)``, ``step =
    (sd, sh, sw)``), without making the view."""
    cs = [1] * 5
    for i in range(3, -1, -1):
        cs[i] = cs[i + 1] * shape[i + 1]
    count = tuple(-(-(shape[2 + i] - start[i]) // step[i]) for i in range(3))
    off = sum(start[i] * cs[2 + i] for i in range(3))
    return tuple(shape[:2]) + count + (off, cs[0], cs[1]) + tuple(cs[2 + i] * step[i] for i in range(3))


def run(x5, w5, bias, plan, out5, base=None, wp=None):
    """Implicit-GEMM direct convolution of canonical 5-D real arrays into
    ``out5``, a C-contiguous array or (``base`` given) a view with any
    strides of the C-contiguous ``base``; ``wp``: the weight already packed
    (:func:`pack` for this plan's geometry), else ``w5`` is."""
    if out5.size == 0:
        return out5
    if wp is None:
        geo = geometry(plan)[0]  # share 1, as run_phases has for one plan
        wp = packed_weights(w5, plan.groups, geo.block, geo.channels_last, geo.band_rows > 0)
    base = out5 if base is None else base
    run_phases(x5, bias, ((plan, target_desc(base, out5), 0),), wp, base)
    return out5


def run_phases(x5, bias, phases: tuple, wp, base) -> None:
    """Convs of one input ``x5`` into views of the C-contiguous ``base``:
    ``phases`` are ``(plan, view, offset)``, the view as :func:`target_desc`
    gives it, the plan's weight packed at ``offset`` of ``wp`` (:func:`pack`).
    Each kind of task runs in one parallel region
    (:func:`numbaconv.cpu.tasks.run_at`, the task function called by its
    address: a prange calling it directly compiles it twice), its tasks
    interleaved so that the phases progress together (the threads take the
    tasks in this order, one at a time). The regions and their tasks'
    addresses are kept per phases, setting and the arrays' types
    (:func:`_bound`)."""
    spec = spec_for(base.dtype)
    if bias is None:
        bias = np.zeros(base.shape[1], dtype=base.dtype)
    xf, basef = x5.reshape(-1), base.reshape(-1)
    for task, tasks, args, address in _bound(
        phases, setting(base.dtype), spec, x5, xf, wp, bias, base, basef
    ):
        run_at(address, task, tasks, x5, xf, wp, bias, base, basef, *args[:5], spec, args[5])


_BOUND: dict = {}
_BOUND_MAX = 256


def _bound(phases, setting_, spec, *arrays) -> list:
    """``(task function, task count, (tb, md, mh, mw, runs, geo), address)``
    per region of :func:`_regions`, the address compiled for ``arrays`` (the
    first six arguments of a task), the region's own and ``spec`` (the
    target's, which ``setting_`` determines): kept per phases,
    :func:`setting` and what the arrays' Numba types depend on."""
    key = (phases, setting_) + tuple((a.dtype, a.ndim, a.flags.num) for a in arrays)
    bound = _BOUND.get(key)
    if bound is None:
        bound = [
            (task, tasks, args, task_address(task, arrays + tuple(args[:5]) + (spec, args[5])))
            for task, tasks, args in _regions(phases, *setting_)
        ]
        if len(_BOUND) >= _BOUND_MAX:
            _BOUND.clear()
        _BOUND[key] = bound
    return bound


def clear_caches() -> None:
    """Forget the kept geometries and task regions (after changing a module
    constant they read: tests)."""
    _geometry.cache_clear()
    _fits.cache_clear()
    _regions.cache_clear()
    _BOUND.clear()


def setting(dtype) -> tuple:
    """What a geometry depends on besides the plan: threads, the config's
    layout and budget, the dtype's lanes and registers (a cache key)."""
    spec = spec_for(dtype)
    return _threads(), config.direct_layout, config.workspace_bytes, spec.lanes, spec.registers


@functools.lru_cache(maxsize=128)
def _regions(phases, threads, layout, budget, lanes, registers) -> list:
    """``(task function, task count, (tb, md, mh, mw, runs, geo))`` per kind
    of task among ``phases`` (see :func:`_phase`), kept per phases and
    :func:`setting` (the geometry reads the setting itself)."""
    kinds: dict = {}
    for plan, desc, off in phases:
        geo = geometry(plan, threads, share=len(phases))[0]
        task = _conv_cl_task if geo.channels_last else _band_task if geo.band_rows else _conv_task
        kinds.setdefault(task, []).append((plan, desc, off))
    return [(task,) + _combined(group, threads, len(phases)) for task, group in kinds.items()]


def _combined(group, threads, share):
    """The task count and (tb, md, mh, mw, runs, geo) of phases run together."""
    parts = [[] for _ in range(5)]
    geos, headers, counts = [], [], []
    lens = [0] * 5
    glen = 0
    for plan, desc, off in group:
        geo, arrays, geo_args = geometry(plan, threads, share=share)
        g = np.concatenate((geo_args, np.asarray(desc, dtype=np.int64), geo.tail()))
        headers.append(
            [lens[0], len(arrays[0]), lens[1], lens[2], lens[3], lens[4], len(arrays[4]), off, glen]
        )
        for i, a in enumerate(arrays):
            parts[i].append(a)
            lens[i] += len(a)
        geos.append(g)
        glen += len(g)
        counts.append(geo.tasks())
    P, T = len(group), sum(counts)
    phase = np.repeat(np.arange(P, dtype=np.int64), counts)
    local = np.concatenate([np.arange(c, dtype=np.int64) for c in counts])
    # interleaved: ordered by the position within the phase (the threads
    # take tasks in this order: the phases' tasks finish together)
    order = np.argsort((local + 0.5) / np.repeat(np.asarray(counts, dtype=np.float64), counts), kind="stable")
    head = 2 + P * _HEADER + 2 * T
    table = np.concatenate(
        (
            [P, T],
            np.asarray(headers, dtype=np.int64).ravel(),
            np.stack((phase[order], local[order]), 1).ravel(),
        )
    )
    table[2 + 8 : 2 + P * _HEADER : _HEADER] += head
    out = tuple(np.concatenate(p) if len(p) > 1 else p[0] for p in parts) + (
        np.concatenate([table] + geos).astype(np.int64),
    )
    for a in out:
        a.flags.writeable = False
    return T, out
