"""Depthwise convolution with lanes over channels, for narrow planes.

A depthwise conv (one input and one output channel per group) whose output
rows are narrow wastes most of the lanes of the pixel layout: a 7-wide row
fills 7 of 16 lanes, and a small plane's copy, masks and set-up cost more
than its FMAs. Here a task owns one sample, a block of ``lanes`` channels,
an output plane and a band of output rows: it copies the input its band
reads into a channels-last tile (``tile[((kd * rq + r) * wq + q) * lanes +
l]``, the padded input through index maps: every padding mode, zeros where
a map says -1 or past the channels) and computes blocks of :data:`PIXELS`
output pixels of a row x one vector of channels with
:func:`numbaconv.cpu.microkernel.fma_taps_vv` (the input a vector per
pixel and tap, the weights a vector per tap) into a buffer holding the
band's pixels in the plane's order, and writes them into the NCHW output
with the bias by transposes of ``lanes`` consecutive pixels. Weights are packed ``[channel block][tap][lane]``
once per weight (kept between calls, compared by content).
"""

from __future__ import annotations

import functools

import numpy as np

from ..common import WeightCache, aligned_copy
from ..runtime import njit
from ..runtime import num_threads as threads_now
from ..shapes import fold_index
from .igemm import _task as _task_of
from .microkernel import fma_taps_vv, spec_for, transpose_block, vector_run
from .tasks import aligned_empty, parallel_tasks

_FASTMATH = {"reassoc", "contract"}  # equals numbaconv.config.FASTMATH (see igemm)
PIXELS = 8  # output pixels of a row per register block (8 accumulators: FMA latency x 2 pipes)
_TASKS_PER_THREAD = 8
MAX_WIDTH = 24  # output columns up to which stride-1 planes take this path (docs/performance.md)
# and up to WIDE_MAX_WIDTH where samples x channels reach WIDE_PLANES and the
# kernel has at most WIDE_MAX_ROWS rows (docs/performance.md, twentieth session)
WIDE_PLANES = 256
WIDE_MAX_ROWS = 7
WIDE_MAX_WIDTH = 64  # 112-wide planes: either path faster, by run (3x3, 32 channels)
_TILE_BYTES = 256 * 1024  # a task's tile: bands of fewer rows beyond it


def uses(plan, lanes: int) -> bool:
    """Depthwise with multiplier 1 and at least a vector of channels, where
    lanes over output pixels waste the most: output rows of at most
    :data:`MAX_WIDTH` columns, or an H stride above 1 (no band blocks
    there: one-row pixel blocks, an FMA per load); rows up to
    :data:`WIDE_MAX_WIDTH` columns too where
    samples x channels give the tasks enough blocks of channels
    (:data:`WIDE_PLANES`, two vectors of channels or more) and the kernel is no taller than
    :data:`WIDE_MAX_ROWS` (the band blocks share each loaded row among
    more rows), 2-D planes (one kernel plane)."""
    depthwise = plan.c_in == plan.groups == plan.c_out >= lanes
    if not depthwise:
        return False
    wide = (
        plan.batch * plan.c_out >= WIDE_PLANES
        and plan.c_out >= 2 * lanes
        and plan.out_size[2] <= WIDE_MAX_WIDTH
        and plan.kernel[1] <= WIDE_MAX_ROWS
        and plan.kernel[0] == 1
    )
    return plan.out_size[2] <= MAX_WIDTH or plan.stride[1] > 1 or wide


class Geometry:
    """Tile and tasks of one call (see the module doc)."""

    def __init__(self, plan, lanes, threads):
        kd, kh, kw = plan.kernel
        sd, sh, sw = plan.stride
        dd, dh, dw = plan.dilation
        od, oh, ow = plan.out_size
        self.lanes = lanes
        self.ncb = -(-plan.c_out // lanes)
        self.npx = -(-ow // PIXELS)  # pixel blocks of a row (the last one's junk pixels read the tile)
        self.wq = (self.npx * PIXELS - 1) * sw + (kw - 1) * dw + 1
        base = plan.batch * self.ncb * od
        want = _TASKS_PER_THREAD * max(threads, 1)
        self.band = oh if base >= want else max(1, oh * base // want)
        while True:
            self.rq = (self.band - 1) * sh + (kh - 1) * dh + 1
            self.tile = kd * self.rq * self.wq * lanes
            if self.band == 1 or self.tile * plan.dtype.itemsize <= _TILE_BYTES:
                break
            self.band = -(-self.band // 2)
        self.nbands = -(-oh // self.band)
        # channel blocks per task: a task's set-up (its tile and buffer, the
        # call) once for several blocks where there are tasks to spare (a
        # 7x7 plane's block of 16 channels is ~1500 FMAs)
        self.cpt = max(1, min(self.ncb, base * self.nbands // want))
        self.tasks = plan.batch * -(-self.ncb // self.cpt) * od * self.nbands
        self.hq = (oh - 1) * sh + (kh - 1) * dh + 1  # padded rows the output reads

    def maps(self, plan):
        """Input plane of each (output plane, kd); input row of each padded
        row; input column of each tile column (-1: zero)."""
        od = np.arange(plan.out_size[0], dtype=np.int64)[:, None] * plan.stride[0]
        d = od + np.arange(plan.kernel[0], dtype=np.int64)[None, :] * plan.dilation[0] - plan.padding[0][0]
        md = np.ascontiguousarray(fold_index(d, plan.in_size[0], plan.mode(0)), dtype=np.int64).ravel()
        mh = fold_index(
            np.arange(self.hq, dtype=np.int64) - plan.padding[1][0], plan.in_size[1], plan.mode(1)
        )
        need = (plan.out_size[2] - 1) * plan.stride[2] + (plan.kernel[2] - 1) * plan.dilation[2] + 1
        mw = np.full(self.wq, -1, dtype=np.int64)  # the junk pixels' columns past the output read zeros
        mw[:need] = fold_index(
            np.arange(need, dtype=np.int64) - plan.padding[2][0], plan.in_size[2], plan.mode(2)
        )
        return md, np.ascontiguousarray(mh, dtype=np.int64), mw

    def interior(self, plan):
        """``(qa, qb, iw0)``: tile columns ``[qa, qb)`` read input column
        ``iw0 + q - qa`` (in every padding mode)."""
        lo, size = plan.padding[2][0], plan.in_size[2]
        qa = min(self.wq, max(0, lo))
        qb = max(qa, min(self.wq, lo + size))
        return qa, qb, qa - lo

    def taps(self, plan):
        """Per tap (kd, kh, kw), its tile offset from an output pixel's (elements)."""
        kd, kh, kw = plan.kernel
        _, dh, dw = plan.dilation
        t = [
            ((a * self.rq + b * dh) * self.wq + c * dw) * self.lanes
            for a in range(kd)
            for b in range(kh)
            for c in range(kw)
        ]
        return np.array(t, dtype=np.int64)

    def args(self, plan):
        """The integers the task takes (``geo``)."""
        return np.array(
            [plan.kernel[0], self.rq, self.wq, self.band, self.nbands, self.ncb, self.npx, self.tile,
             plan.stride[1], plan.stride[2], plan.c_out, plan.out_size[0], plan.out_size[1], plan.out_size[2],
             *self.interior(plan), self.cpt],
            dtype=np.int64,
        )  # fmt: skip


@functools.lru_cache(maxsize=128)
def _geometry(plan, lanes, threads):
    geo = Geometry(plan, lanes, threads)
    arrays = tuple(a for a in geo.maps(plan)) + (geo.taps(plan), geo.args(plan))
    for a in arrays:
        a.flags.writeable = False
    return geo, arrays


def geometry(plan, threads: int | None = None):
    """``(Geometry, (md, mh, mw, taps, geo))`` of ``plan`` on this host."""

    spec = spec_for(plan.dtype)
    return _geometry(plan, spec.lanes, threads_now() if threads is None else threads)


def workspace_bytes(plan) -> int:
    """One tile and register block per thread, the packed weights."""

    geo = geometry(plan)[0]
    item = plan.dtype.itemsize
    per = (geo.tile + (geo.band * plan.out_size[2] + PIXELS) * geo.lanes) * item  # a tile, a band's pixels
    return threads_now() * per + geo.ncb * len(geo.taps(plan)) * geo.lanes * item


_PACKED = WeightCache("weight_cache_bytes")


def packed_weights(w5, lanes: int) -> np.ndarray:
    """``w5`` ``(C, 1, KD, KH, KW)`` as ``[channel block][tap][lane]``, zero
    past the channels; flat; kept between calls."""

    def make():
        c = w5.shape[0]
        ncb = -(-c // lanes)
        taps = w5[0, 0].size
        out = np.zeros((ncb * lanes, taps), dtype=w5.dtype)
        out[:c] = w5.reshape(c, taps)
        return aligned_copy(out.reshape(ncb, lanes, taps).transpose(0, 2, 1)).ravel()

    return _PACKED.get(w5, ("dwcl", lanes), make)


@njit(inline="always")
def _fill(xf, tile, n, c0, od, h0, md, mh, mw, geo, C, D, H, W, bias, zv, spec):
    # tile[((kd * rq + r) * wq + q) * L + l] = x[n, c0 + l, md[od, kd], mh[h0 * sh + r], mw[q]]
    # (0 past the channels and where a map says -1): the columns [qa, qb)
    # that read the input in place (iw0 + q - qa) by transposes of up to L
    # channels x L columns, the padding columns by _edges
    kd_n, rq, wq, sh, qa, qb, iw0 = geo[0], geo[1], geo[2], geo[8], geo[14], geo[15], geo[16]
    L = tile.shape[0] // (kd_n * rq * wq)
    z = tile.dtype.type(0)
    nl = min(L, C - c0)
    plane = D * H * W
    for kd in range(kd_n):
        idd = md[od * kd_n + kd]
        for r in range(rq):
            row = h0 * sh + r
            ih = mh[row] if row < mh.shape[0] else -1
            o = (kd * rq + r) * wq * L
            if idd < 0 or ih < 0:
                for i in range(np.uint64(o), np.uint64(o + wq * L)):  # a loop, not a view (refcounts)
                    tile[i] = z
                continue
            src = (((n * C + c0) * D + idd) * H + ih) * W
            for q0 in range(qa, qb, L):
                cnt = min(L, qb - q0)
                transpose_block(
                    tile, o + q0 * L, L, cnt, L, xf, src + iw0 + q0 - qa, plane, nl, cnt, bias, 0, 0, spec
                )
            _edges(xf, tile, o, src, plane, nl, L, 0, qa, mw, zv, spec)
            _edges(xf, tile, o, src, plane, nl, L, qb, wq, mw, zv, spec)


@njit(inline="always")
def _edges(xf, tile, o, src, plane, nl, L, q0, q1, mw, zv, spec):
    # the padding columns [q0, q1) of a tile row at o: a zero column (map -1)
    # a vector copied from zv (L zeros; a loop of L stores became a memset
    # call), another mode's column gathered from the L planes (value by
    # value, every column, these were as long as the transposes of a
    # 14-wide plane's interior)
    z = tile.dtype.type(0)
    for q in range(q0, q1):
        iw = mw[q]
        if iw < 0:
            vector_run(tile, o + q * L, zv, 0, L, z, 0, spec)
        else:
            for l in range(L):
                tile[o + q * L + l] = xf[src + l * plane + iw] if l < nl else z


@njit(cache=True, fastmath=_FASTMATH)
def _task(x, xf, wp, bias, out, of, tab, md, mh, mw, geo, spec, a12, t):
    # One task: sample n, a chunk of cpt channel blocks, output plane od,
    # band hb (a12: unused, the arguments of every kind of task alike)
    rq, wq, band, nbands, ncb, tsize, OD, OH, OW, cpt = (
        geo[1], geo[2], geo[3], geo[4], geo[5], geo[7], geo[11], geo[12], geo[13], geo[17]
    )  # fmt: skip
    n, cbt, od, hb, _ = _task_of(t, nbands, 1, OD, (ncb + cpt - 1) // cpt)
    L = tsize // (geo[0] * rq * wq)
    h0 = hb * band
    noh = min(band, OH - h0)
    tile = aligned_empty(tsize, out)  # whole-vector loads: on 64 bytes
    # acc: the band's output pixels in the plane's order (row r's pixel q at
    # r * OW + q; a row's last block spills its junk pixels onto the next
    # row's first, which that row's blocks overwrite), stored by transposes
    # of L consecutive pixels of the plane as soon as they are complete
    # (the band's rows are one run of the NCHW output): a 7-wide plane's 49
    # pixels in 4 transposes, not 7 of 7 pixels, and whole ones (per row, a
    # 14-wide row's transpose was 14 of 16 rows, masked)
    acc = aligned_empty((band * OW + PIXELS) * L, out)
    zv = np.zeros(L, dtype=out.dtype)
    shape = (x.shape[2], x.shape[3], x.shape[4])
    for cb in range(cbt * cpt, min(ncb, cbt * cpt + cpt)):
        _channels(xf, wp, bias, of, tab, md, mh, mw, geo, spec, tile, acc, zv, shape, n, cb, od, h0, noh, L)


@njit(inline="always")
def _channels(xf, wp, bias, of, tab, md, mh, mw, geo, spec, tile, acc, zv, shape, n, cb, od, h0, noh, L):
    # channel block cb of a task: its tile, its band's pixels, their stores
    wq, npx, sh, sw, C, OD, OH, OW = geo[2], geo[6], geo[8], geo[9], geo[10], geo[11], geo[12], geo[13]
    D, H, W = shape
    c0 = cb * L
    nt = tab.shape[0]
    _fill(xf, tile, n, c0, od, h0, md, mh, mw, geo, C, D, H, W, bias, zv, spec)
    nl = min(L, C - c0)
    plane = OH * OW
    base = ((n * C + c0) * OD + od) * plane + h0 * OW
    done = 0  # pixels stored
    for r in range(noh):
        for pb in range(npx):
            p = pb * PIXELS
            a0 = ((r * sh) * wq + p * sw) * L
            c = (r * OW + p) * L
            fma_taps_vv(tile, wp, acc, tab, nt, L, a0, cb * nt * L, 1, 0, sw * L, 0, c, L, spec, 8, 1, 1, 0)
        ready = noh * OW if r == noh - 1 else (r + 1) * OW // L * L  # complete, in whole transposes
        for q0 in range(done, ready, L):
            cnt = min(L, ready - q0)
            transpose_block(of, base + q0, OD * plane, nl, cnt, acc, q0 * L, L, cnt, L, bias, c0, 1, spec)
        done = ready  # never less than before: the rows complete in order


def run(x5, w5, bias, plan, out5):
    """Depthwise conv of canonical 5-D arrays into the C-contiguous ``out5``
    (``x5`` may hold 8/16-bit integers, converted as the tile is copied)."""
    if out5.size == 0:
        return out5
    spec = spec_for(plan.dtype)
    geo, (md, mh, mw, tab, args) = geometry(plan)
    wp = packed_weights(w5, geo.lanes)
    if bias is None:
        bias = np.zeros(plan.c_out, dtype=plan.dtype)
    parallel_tasks(
        _task,
        geo.tasks,
        x5,
        x5.reshape(-1),
        wp,
        bias,
        out5,
        out5.reshape(-1),
        tab,
        md,
        mh,
        mw,
        args,
        spec,
        tab,
    )
    return out5
