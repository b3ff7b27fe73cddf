"""Winograd convolution, ``method="winograd"`` (CPU, float32 and float64, stride 1).

**Transforms.** Per spatial dim with kernel extent ``r > 1`` the output is
cut into tiles of ``m`` positions; a tile reads ``alpha = m + r - 1`` input
positions and ``F(m, r)`` computes it as ``A^T [(G g) * (B^T d)]``: ``alpha``
products per input channel instead of ``m * r``. The matrices come from
Toom-Cook on the points ``0, 1, -1, 2, -2, 1/2, -1/2, ...`` and infinity,
computed exactly in rationals (:func:`matrices`): ``A^T`` is the transposed
Vandermonde matrix of the points for ``m`` coefficients, ``G`` the one for
``r``, ``B^T`` the inverse transpose of the full one (correlation is the
transpose of Toom-Cook's linear convolution), its rows scaled to integers
(the scale moved into ``G``). A dim with ``r = 1`` has ``m = alpha = 1``
(no transform), so 1-D, 2-D and 3-D cases, ``3 x 3``, ``3 x 1``,
``5 x 5``... are one kernel on the canonical ``(N, C, D, H, W)`` form.

**Padding, dilation.** Tiles are described by index maps, made once per
plan: per dim and tile, the input index of each of its ``alpha`` positions
(folded by the padding mode, -1 for a zero) and the output index of each of
its ``m`` outputs (-1 past the end). A dilation ``d`` splits a dim into
``d`` interleaved grids (outputs of equal residue mod ``d`` read inputs of
that residue, ``d`` apart): each grid is an undilated conv, so its tiles are
maps like the others. No padded copy of the input is made.

**Kernel.** A task owns a group and a block of ``R`` tiles (over the whole
batch: small planes of many samples fill the lanes) and runs, for chunks of
the group's input channels: the tiles' ``alpha^d`` inputs gathered through the
maps and transformed (``B^T`` along W, H, D: vector loops over the ``R``
tiles) into ``V[channel][point][tile]``; then per transform point a GEMM
``M[out][point][tile] (+)= U[point][out][channel] V[channel][point][tile]``
on the micro-kernel (:func:`numbaconv.cpu.microkernel.fma_taps`: the packed
weight broadcast, lanes over tiles); finally per output channel ``A^T``
along W, H, D, the bias, and the outputs stored through the maps. The weight
transform ``U`` is packed once per weight and kept
(:class:`numbaconv.common.WeightCache`), ``[group][point][block][channel][row]``.

**Non-finite values.** The transforms mix a tile's inputs: one Inf would
spread NaN over the tile's other outputs, which a direct sum leaves finite.
The kernel notes any non-finite input it reads, the packing any non-finite
weight; the call is then done by the direct path (PyTorch's answer).

**Accuracy.** The transforms' rounding grows with ``m``, the points' size
and the transformed dims, and is averaged over the input channels; ``m`` is
chosen from those (:func:`tile_sizes`), measured against float64 to stay
within the bound the tests use for the direct path
(``8 * eps * sqrt(K) * max(|x| (*) |w|)``): see ``docs/winograd.md``.
"""

from __future__ import annotations

import functools

import numpy as np

from .. import costs
from ..common import WeightCache, aligned_copy
from ..runtime import njit
from ..runtime import num_threads as threads_now
from ..shapes import fold_index
from .microkernel import fma_taps, spec_for, vectors_for
from .tasks import aligned_empty, borrow, parallel_tasks
from .winotile import Tile, matrices, tile_in, tile_in_rows, tile_out

# Kept literal here (not imported) because numba's on-disk cache keys on this
# file's contents; must equal numbaconv.config.FASTMATH (tested).
_FASTMATH = {"reassoc", "contract"}

MAX_KERNEL = 5  # largest kernel extent per dim the method takes
MAX_OFFSET = 2**31 - 1  # the tiles' offsets into the input and output are int32
# The most outputs per tile and dim, by kernel extent r (measured:
# docs/winograd.md); fewer where few channels per group leave the
# transforms' rounding less averaged (tile_sizes).
TILE = {2: 4, 3: 4, 4: 3, 5: 4}
_VECTORS = 4  # vectors of tiles a task (lanes over tiles)
_ROWS = 6  # rows (output channels) of a micro-kernel block; its vectors from the registers
_CHUNK_BYTES = 1024 * 1024


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def tile_sizes(plan) -> tuple[int, int, int]:
    """Outputs per tile in (D, H, W), 1 for dims of kernel extent 1. The
    transforms' rounding error grows with m and with the number of
    transformed dims, and is averaged over the group's input channels, so
    that the error stays within the direct path's bound (``8 eps sqrt(K)
    max(|x| (*) |w|)``, the tests' c) by a factor 4 or more: m = 4 (at most
    :data:`TILE` for the extent) in 1-D, in 2-D from 8 channels per group, in
    3-D from 16; 3 in 3-D from 4 channels; else 2 (measured maxima in
    docs/winograd.md). Extents the method does not take get 1 (the counts of
    ``cost_features`` stay defined)."""
    cig = plan.c_in // plan.groups
    dims = sum(k > 1 for k in plan.kernel)
    m = 4 if dims == 1 or (dims == 2 and cig >= 8) or cig >= 16 else (3 if dims == 3 and cig >= 4 else 2)
    return tuple(min(m, TILE[k]) if 1 < k <= MAX_KERNEL else 1 for k in plan.kernel)


def supports(plan) -> str | None:
    """None when Winograd can run ``plan``, else why not."""
    if plan.op != "conv":
        return "winograd is a conv method"
    if plan.dtype.name not in ("float32", "float64"):
        return f"winograd takes float32 and float64, not {plan.dtype.name}"
    if any(s != 1 for s in plan.stride):
        return f"winograd needs stride 1 (got {plan.stride[3 - plan.ndim :]})"
    if any(k > MAX_KERNEL for k in plan.kernel):
        return f"winograd takes kernel extents up to {MAX_KERNEL} (got {plan.kernel[3 - plan.ndim :]})"
    if all(k == 1 for k in plan.kernel):
        return "a 1x1 kernel has no products to save (gemm or direct run it)"
    if 0 in plan.out_size or plan.batch == 0:
        return "empty output"
    big = max(
        plan.batch * plan.c_in * int(np.prod(plan.in_size)),
        plan.batch * plan.c_out * int(np.prod(plan.out_size)),
    )
    if big > MAX_OFFSET:
        return f"winograd's tile offsets are 32-bit: {big} elements in the input or output, over {MAX_OFFSET}"
    return None


def tile_counts(plan, m) -> tuple[int, int, int]:
    """Tiles per dim (D, H, W) of one sample: per residue grid of the
    dilation, its outputs in tiles of ``m``."""
    return tuple(
        sum(_ceil(_ceil(o - rho, d), mi) for rho in range(min(d, o)))
        for o, d, mi in zip(plan.out_size, plan.dilation, m)
    )


def tile_maps(plan, m) -> tuple[np.ndarray, np.ndarray]:
    """Per dim and tile (residue grids of the dilation in turn, tiles of ``m``
    outputs each), the input index of each of its ``m + r - 1`` positions
    (folded by the padding mode; -1 for a zero, or past the padded extent:
    such a position only feeds outputs past the end) and the output index of
    each of its ``m`` outputs (-1 past the end); D, H, W concatenated."""
    ins, outs = [], []
    for i in range(3):
        o, d, mi, k = plan.out_size[i], plan.dilation[i], m[i], plan.kernel[i]
        lo, hi = plan.padding[i]
        extent = lo + plan.in_size[i] + hi
        for rho in range(min(d, o)):
            for t in range(_ceil(_ceil(o - rho, d), mi)):
                q = rho + d * (t * mi + np.arange(mi + k - 1, dtype=np.int64))  # padded positions
                idx = fold_index(q - lo, plan.in_size[i], plan.mode(i))
                ins.append(np.where(q < extent, idx, -1))
                oo = rho + d * (t * mi + np.arange(mi, dtype=np.int64))
                outs.append(np.where(oo < o, oo, -1))
    return np.concatenate(ins), np.concatenate(outs)


def weight_transform(w5, plan, m) -> np.ndarray:
    """``U = (G_D (x) G_H (x) G_W) w`` in float64, as
    ``[group][point][in channel][out channel]``."""
    g_d, g_h, g_w = (matrices(mi, k)[1] for mi, k in zip(m, plan.kernel))
    cog, cig = plan.c_out // plan.groups, plan.c_in // plan.groups
    w = np.asarray(w5, dtype=np.float64).reshape(plan.groups, cog, cig, *plan.kernel)
    u = np.einsum("ai,bj,ck,goxijk->gabcxo", g_d, g_h, g_w, w, optimize=True)
    points = int(np.prod([mi + k - 1 for mi, k in zip(m, plan.kernel)]))
    return u.reshape(plan.groups, points, cig, cog)


class Geometry:
    """A plan's tiles, blocks and tasks for ``lanes`` and ``registers``."""

    def __init__(self, plan, lanes: int, registers: int, threads: int = 1):
        self.m = tile_sizes(plan)
        self.alpha = tuple(m + k - 1 for m, k in zip(self.m, plan.kernel))
        self.tile = Tile(self.m, plan.kernel)
        self.points = int(np.prod(self.alpha))
        self.outs = int(np.prod(self.m))
        self.cig = plan.c_in // plan.groups
        self.cog = plan.c_out // plan.groups
        # blocks of 6 rows x 4 vectors (32 registers) or 6 x 2 (16: AVX2),
        # two blocks then a task's tiles: 2 x 4 blocks had 8 accumulators
        # for 6 loads, too few to hide the FMA latency
        self.rows = _ROWS
        self.vectors = vectors_for(_ROWS, registers)  # what fma_taps makes of rows 6, vectors 0
        if _VECTORS % self.vectors:  # 16 and 32 registers give 2 and 4
            raise ValueError(f"no Winograd blocks for {registers} vector registers")
        self.lanes = lanes
        self.nob = -(-self.cog // self.rows)
        self.cop = self.nob * self.rows
        self.ntiles = tile_counts(plan, self.m)
        self.total = plan.batch * int(np.prod(self.ntiles))
        self.R = _VECTORS * lanes  # tiles per task: one block of the micro-kernel
        self.nblk = -(-self.total // self.R)
        # fewer tile blocks than threads (small planes, batch 1): the output
        # channels split into chunks, each a task that transforms the
        # block's inputs again (no thread idle for want of tiles)
        base = plan.groups * self.nblk
        want = min(self.nob, _ceil(threads, base)) if base < threads else 1
        self.obc = _ceil(self.nob, want)  # o-blocks a chunk, the chunks balanced
        self.ocs = _ceil(self.nob, self.obc)
        self.tasks = base * self.ocs
        kc = max(1, _CHUNK_BYTES // (self.points * self.R * plan.dtype.itemsize))
        self.kc = -(-self.cig // -(-self.cig // kc))  # balanced channel chunks
        # the transformed inputs' stride between points: a cache line past
        # kc * R, which is a multiple of 4 KiB for 16 or more channels, so
        # that one call's stores to its points do not all fall into one set
        # of the L1 cache
        self.vstride = self.kc * self.R + 64 // plan.dtype.itemsize

    def maps(self, plan) -> tuple[np.ndarray, np.ndarray]:
        return tile_maps(plan, self.m)

    def args(self) -> np.ndarray:
        return np.array(
            [self.cig, self.cog, self.cop, self.R, self.nblk, self.kc, *self.alpha, *self.m, *self.ntiles,
             self.total, self.rows, self.vectors * self.lanes, self.lanes, self.ocs, self.obc, self.vstride,
             sum(n * a for n, a in zip(self.ntiles, self.alpha))],
            dtype=np.int64,
        )  # fmt: skip

    def workspace_bytes(self, itemsize: int, threads: int) -> int:
        """Per-task buffers on every thread (transformed inputs, products, the
        tiles' input and output offsets, their rows' starts and masks)."""
        per_task = (self.vstride + self.cop * self.R) * self.points * itemsize
        rows = self.alpha[0] * self.alpha[1]  # the row table: a start and a mask per row and tile
        return (per_task + (self.points + self.outs + 2 * rows) * self.R * 4) * min(threads, self.tasks)


def _threads() -> int:
    """The threads the tasks are planned for (Numba's, at the call)."""
    return threads_now()


def geometry(plan) -> Geometry:
    spec = spec_for(plan.dtype)
    return _geometry(plan, spec.lanes, spec.registers, _threads())


@functools.lru_cache(maxsize=128)
def _geometry(plan, lanes, registers, threads):
    return Geometry(plan, lanes, registers, threads)


@functools.lru_cache(maxsize=128)
def _maps(plan, lanes, registers, threads, start=(0, 0, 0), step=(1, 1, 1)):
    # the maps, outputs at start + step * o of the target (a phase of a
    # transposed op's output: numbaconv.cpu.gather)
    geo = _geometry(plan, lanes, registers, threads)
    inm, outm = geo.maps(plan)
    inm = np.concatenate([inm, row_maps(inm, geo)])  # at geo.args()[22]
    if start != (0, 0, 0) or step != (1, 1, 1):
        outm = outm.copy()
        at = 0
        for n, m, s0, st in zip(geo.ntiles, geo.m, start, step):
            part = outm[at : at + n * m]
            part[part >= 0] = s0 + st * part[part >= 0]
            at += n * m
    arrays = (inm, outm, geo.args())
    for a in arrays:
        a.flags.writeable = False
    return arrays


def workspace_bytes(plan) -> int:
    """Extra memory :func:`run` allocates: the tasks' buffers and the packed
    weight transform."""
    geo = geometry(plan)
    packed = plan.groups * geo.points * geo.cop * geo.cig
    return geo.workspace_bytes(plan.dtype.itemsize, threads_now()) + packed * plan.dtype.itemsize


def cost_features(plan) -> dict[str, float]:
    """Operation counts of one call (float32 units, ``costs.per_dtype``): the
    element-wise products as GEMM FLOPs (padded lanes and rows included) and
    the accumulator values of the micro-kernel blocks, the values gathered into tiles and transformed (each
    weighted by the passes' lengths), the values transformed back and
    scattered, the outputs."""
    geo = geometry(plan)
    threads = _threads()
    # the busiest thread's share: tasks are equal, so fewer tasks than
    # threads (or a ragged last round) leave threads idle
    balance = _ceil(geo.tasks, threads) * threads / geo.tasks
    tiles = geo.nblk * geo.R
    ins = tiles * plan.c_in * geo.points * balance * geo.ocs  # each o-chunk transforms them
    outs = tiles * plan.c_out * geo.points * balance
    chunks = _ceil(geo.cig, geo.kc)
    return costs.per_dtype(
        {
            "call": 1.0,
            "point_flops": 2.0 * tiles * plan.groups * geo.cop * geo.cig * geo.points * balance,
            # accumulator values of the micro-kernel blocks (each loads and stores them)
            "block_values": geo.tasks * geo.points * geo.obc * chunks * geo.R * geo.rows * balance,
            "transformed": ins * sum(geo.alpha) + outs * sum(geo.m),
            "gathered": ins,
            "outputs": float(plan.batch * plan.c_out * int(np.prod(plan.out_size))),
        },
        plan,
    )


def _transformed_weight(w5, plan, geo) -> tuple[np.ndarray, bool]:
    """``U = G w G^T`` per dim, as ``[group][point][block][channel][row]``
    (flat, zero rows past the group's outputs), and whether ``w5`` is finite."""
    if not np.isfinite(w5).all():
        return np.zeros(0, dtype=plan.dtype), False
    u = weight_transform(w5, plan, geo.m)
    packed = np.zeros((plan.groups, geo.points, geo.cig, geo.cop), dtype=plan.dtype)
    packed[..., : geo.cog] = u
    packed = packed.reshape(plan.groups, geo.points, geo.cig, geo.nob, geo.rows).transpose(0, 1, 3, 2, 4)
    return aligned_copy(packed).ravel(), True


_PACKED = WeightCache("weight_cache_bytes")


def packed_weight(w5, plan, geo) -> tuple[np.ndarray, bool]:
    key = ("winograd", plan.groups, geo.m, plan.kernel, geo.rows, plan.dtype.str)
    return _PACKED.get(w5, key, lambda: _transformed_weight(w5, plan, geo))


@njit(nogil=True, cache=True)
def _gemm(U, V, M, tab, g, p, nc, c0, ob0, ob1, spec, geo, acc):
    # M[p][o][tile] (+)= sum_{c < nc} U[g][p][o // rows][c0 + c][o % rows] * V[p][c][tile]
    # for the o-blocks ob0 <= o // rows < ob1
    cig, cop, R, rows, vw, vs = geo[0], geo[2], geo[3], geo[16], geo[17], geo[21]
    T = geo[6] * geo[7] * geo[8]
    nob = cop // rows
    for vb in range(R // vw):
        for ob in range(ob0, ob1):
            a0 = (((g * T + p) * nob + ob) * cig + c0) * rows
            b0 = p * vs + vb * vw
            c_0 = (p * cop + ob * rows) * R + vb * vw
            if acc:
                fma_taps(U, V, M, tab, 1, 0, a0, b0, nc, rows, 1, R, c_0, R, spec, 6, 0, 0, 1)
            else:
                fma_taps(U, V, M, tab, 1, 0, a0, b0, nc, rows, 1, R, c_0, R, spec, 6, 0, 0, 0)


@njit(inline="always")
def _offsets(x, out, inm, outm, geo, tau0, xo, oo):
    # xo[p*R + l]: the offset in x (channel 0 of its sample) of input position
    # p of lane l's tile, or -1 (a zero); oo[j*R + l]: the offset in out of
    # output j, or -1 (past the end, or a lane past the last tile)
    R, al, ms = geo[3], (geo[6], geo[7], geo[8]), (geo[9], geo[10], geo[11])
    nD, nH, nW, total = geo[12], geo[13], geo[14], geo[15]
    C, D, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    CO, OD, OH, OW = out.shape[1], out.shape[2], out.shape[3], out.shape[4]
    NT = nD * nH * nW
    for l in range(R):
        tau = tau0 + l
        n = tau // NT
        r = tau - n * NT
        tw, th, td = r % nW, (r // nW) % nH, r // (nW * nH)
        for a in range(al[0]):
            for b in range(al[1]):
                for c in range(al[2]):
                    idd, ih = inm[td * al[0] + a], inm[nD * al[0] + th * al[1] + b]
                    iw = inm[nD * al[0] + nH * al[1] + tw * al[2] + c]
                    ok = tau < total and idd >= 0 and ih >= 0 and iw >= 0
                    xo[((a * al[1] + b) * al[2] + c) * R + l] = (
                        ((n * C * D + idd) * H + ih) * W + iw if ok else -1
                    )
        for a in range(ms[0]):
            for b in range(ms[1]):
                for c in range(ms[2]):
                    od, oh = outm[td * ms[0] + a], outm[nD * ms[0] + th * ms[1] + b]
                    ow = outm[nD * ms[0] + nH * ms[1] + tw * ms[2] + c]
                    ok = tau < total and od >= 0 and oh >= 0 and ow >= 0
                    oo[((a * ms[1] + b) * ms[2] + c) * R + l] = (
                        ((n * CO * OD + od) * OH + oh) * OW + ow if ok else -1
                    )


def row_maps(inm, geo) -> np.ndarray:
    """Per tile along W (from the W part of ``inm``): the offset of its
    position 0 where its positions follow one another (a zero before the
    plane, or past it, breaks nothing), the bits of the positions that read
    the input, and 1 where they follow one another (0: a padding mode's fold,
    a dilation grid), concatenated."""
    nD, nH, nW = geo.ntiles
    aD, aH, aW = geo.alpha
    seg = inm[nD * aD + nH * aH :][: nW * aW].reshape(nW, aW)
    valid = seg >= 0
    c = np.arange(aW)
    first = np.where(valid.any(axis=1), valid.argmax(axis=1), 0)
    start = np.where(valid.any(axis=1), seg[np.arange(nW), first] - first, 0)
    follow = np.where(valid, seg == start[:, None] + c, True).all(axis=1) & (aW > 1)
    bits = (valid << c).sum(axis=1)
    return np.concatenate([start, bits, follow.astype(np.int64)])


@njit(inline="always")
def _row_table(x, inm, geo, tau0, xs, rows_ok):
    # per row r of the tiles' (D, H) positions and lane l: xs[r*R + l] the
    # offset of the row's position 0, xs[(nrows + r)*R + l] the bits of the
    # positions that read the input (the others are zeros); rows_ok[g] = 0
    # where a lane of lane group g has positions along W that do not follow
    # one another (row_maps, after the maps in inm at geo[22]): tile_in
    # gathers those
    R, al, lanes = geo[3], (geo[6], geo[7], geo[8]), geo[18]
    nD, nH, nW, total, wt = geo[12], geo[13], geo[14], geo[15], geo[22]
    C, D, H, W = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    NT = nD * nH * nW
    nrows = al[0] * al[1]
    for lg in range(R // lanes):
        rows_ok[lg] = 1
    for l in range(R):
        tau = tau0 + l
        n = tau // NT
        r = tau - n * NT
        tw, th, td = r % nW, (r // nW) % nH, r // (nW * nH)
        ws, wb, wok = inm[wt + tw], inm[wt + nW + tw], inm[wt + 2 * nW + tw]
        for a in range(al[0]):
            for b in range(al[1]):
                idd, ih = inm[td * al[0] + a], inm[nD * al[0] + th * al[1] + b]
                row = a * al[1] + b
                if tau < total and idd >= 0 and ih >= 0 and wb != 0:
                    xs[row * R + l] = ((n * C * D + idd) * H + ih) * W + ws
                    xs[(nrows + row) * R + l] = wb
                    if wok == 0:
                        rows_ok[l // lanes] = 0
                else:
                    xs[row * R + l] = 0
                    xs[(nrows + row) * R + l] = 0


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _task(x, xf, U, bias, out, of, inm, outm, tile, geo, bad, tab, spec, t):
    # one group x one block of R tiles x one chunk of output channels (see
    # the module doc); xf, of: x and out flat. The shared arrays as borrowed
    # views (tasks.borrow): no atomic reference counts at each inlined call
    x, xf, U, bias, out, of = borrow(x), borrow(xf), borrow(U), borrow(bias), borrow(out), borrow(of)
    inm, outm, geo, bad, tab = borrow(inm), borrow(outm), borrow(geo), borrow(bad), borrow(tab)
    cig, cog, cop, R, nblk, kc = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    al, ms = (geo[6], geo[7], geo[8]), (geo[9], geo[10], geo[11])
    rows, ocs, obc = geo[16], geo[19], geo[20]
    chunk = t % ocs
    t = t // ocs  # the group's tile block, as without chunks
    g = t // nblk
    ob0, ob1 = chunk * obc, min(cop // rows, (chunk + 1) * obc)
    T = al[0] * al[1] * al[2]
    z = xf.dtype.type(0)
    # this task's share of the input, checked for non-finite values (the
    # transforms would spread them: the caller then runs the direct path)
    share = -(-xf.size // (nblk * (x.shape[1] // cig)))
    chk = z
    for i in range(np.uint64(t * share), np.uint64(min(xf.size, (t + 1) * share))):
        chk += xf[i] * z
    if chk != 0:
        bad[t * ocs + chunk] = 1
        return
    xo = np.empty(T * R, dtype=np.int32)
    oo = np.empty(ms[0] * ms[1] * ms[2] * R, dtype=np.int32)
    _offsets(x, out, inm, outm, geo, (t - g * nblk) * R, xo, oo)
    lanes = geo[18]
    xs = np.empty(2 * al[0] * al[1] * R, dtype=np.int32)
    rows_ok = np.empty(R // lanes, dtype=np.int64)
    _row_table(x, inm, geo, (t - g * nblk) * R, xs, rows_ok)
    V = aligned_empty(T * geo[21], xf)
    M = aligned_empty(T * cop * R, xf)
    plane = x.shape[2] * x.shape[3] * x.shape[4]
    for c0 in range(0, cig, kc):
        nc = min(kc, cig - c0)
        for ci in range(nc):
            cx = (g * cig + c0 + ci) * plane
            for l0 in range(0, R, lanes):
                if rows_ok[l0 // lanes]:
                    tile_in_rows(V, ci * R + l0, geo[21], xf, cx, xs, l0, R, tile, spec)
                else:
                    tile_in(V, ci * R + l0, geo[21], xf, cx, xo, l0, R, tile, spec)
        for p in range(T):
            _gemm(U, V, M, tab, g, p, nc, c0, ob0, ob1, spec, geo, c0 > 0)
    oplane = out.shape[2] * out.shape[3] * out.shape[4]
    for o in range(ob0 * rows, min(cog, ob1 * rows)):
        oc = (g * cog + o) * oplane
        bv = bias[g * cog + o]
        for l0 in range(0, R, lanes):
            tile_out(of, oc, bv, oo, l0, R, M, o * R + l0, cop * R, tile, spec)


def run(x5, w5, bias, plan, out5):
    """Winograd conv of canonical 5-D arrays into ``out5`` (see the module
    doc); a non-finite input or weight runs the direct path instead."""
    if not run_into(x5, w5, bias, plan, out5):
        from . import direct

        return direct.run(x5, w5, bias, plan, out5)
    return out5


def run_into(x5, w5, bias, plan, target, start=(0, 0, 0), step=(1, 1, 1)) -> bool:
    """The conv ``plan`` of ``x5`` and ``w5`` written at ``start + step * o``
    of ``target`` (C-contiguous, 5-D; every other element untouched): the
    conv's own output, or a phase of a transposed op's. False where an input
    or weight is not finite, or where the input or ``target`` has more
    elements than int32 offsets reach: the caller's other path then writes
    those outputs (what this one wrote of them is overwritten)."""
    if max(x5.size, target.size) > MAX_OFFSET:
        return False
    spec = spec_for(plan.dtype)
    threads = _threads()
    geo = _geometry(plan, spec.lanes, spec.registers, threads)
    inm, outm, args = _maps(plan, spec.lanes, spec.registers, threads, tuple(start), tuple(step))
    U, finite = packed_weight(w5, plan, geo)
    if not finite:
        return False
    if bias is None:
        bias = np.zeros(plan.c_out, dtype=plan.dtype)
    bad = np.zeros(geo.tasks, dtype=np.int64)
    xf, of, tab = x5.reshape(-1), target.reshape(-1), np.zeros(1, dtype=np.int64)
    parallel_tasks(_task, geo.tasks, x5, xf, U, bias, target, of, inm, outm, geo.tile, args, bad, tab, spec)
    return not bad.any()
