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

**Accuracy.** The transforms' rounding grows with ``m`` and the points'
size; ``m`` is chosen per dtype and kernel extent (:data:`TILE`), measured
against float64 to stay within the bound the tests use for the direct path
(``8 * eps * sqrt(K) * max(|x| (*) |w|)``): see ``docs/winograd.md``.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numba
import numpy as np

from .. import costs
from ..common import WeightCache
from ..runtime import njit
from ..shapes import fold_index
from .microkernel import fma_taps, gather_run, rows_for, scatter_run, spec_for, vector_comb
from .tasks import parallel_tasks

# Kept literal here (not imported) because numba's on-disk cache keys on this
# file's contents; must equal numbaconv.config.FASTMATH (tested).
_FASTMATH = {"reassoc", "contract"}

# the finite interpolation points, in the order they are taken
_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2), 3, -3, Fraction(1, 3), Fraction(-1, 3))

MAX_KERNEL = 5  # largest kernel extent per dim the method takes
# outputs per tile and dim, by dtype and kernel extent r (measured: docs/winograd.md)
TILE = {
    "float32": {2: 4, 3: 4, 4: 3, 5: 4},
    "float64": {2: 4, 3: 4, 4: 3, 5: 4},
}
_VECTORS = 4  # vectors per micro-kernel block (lanes over tiles); rows from the registers
_CHUNK_BYTES = 1024 * 1024
_GROUP = 8  # channels transformed together (longer vector loops)  # a task's transformed inputs per channel chunk (L2-sized)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def _vandermonde(points, cols: int) -> list:
    # rows p^0 .. p^(cols-1) per point; the point at infinity: [0, ..., 0, 1]
    return [
        [Fraction(0)] * (cols - 1) + [Fraction(1)] if p is None else [Fraction(p) ** j for j in range(cols)]
        for p in points
    ]


def _inverse(a: list) -> list:
    """Inverse of a square matrix of Fractions (Gauss-Jordan, exact)."""
    n = len(a)
    m = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(a)]
    for col in range(n):
        piv = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[piv] = m[piv], m[col]
        p = m[col][col]
        m[col] = [v / p for v in m[col]]
        for r in range(n):
            if r != col and m[r][col] != 0:
                f = m[r][col]
                m[r] = [v - f * u for v, u in zip(m[r], m[col])]
    return [row[n:] for row in m]


@functools.cache
def matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A^T, G, B^T)`` of ``F(m, r)`` as float64 arrays (``m x alpha``,
    ``alpha x r``, ``alpha x alpha``, ``alpha = m + r - 1``): for a signal
    ``d`` of ``alpha`` values and a kernel ``g`` of ``r``,
    ``A^T ((G g) * (B^T d))[i] = sum_k g[k] d[i + k]``, exactly in rationals
    (the float64 entries are small integers and their quotients)."""
    alpha = m + r - 1
    if m < 1 or r < 1 or alpha - 1 > len(_POINTS):
        raise ValueError(f"F({m}, {r}) needs {alpha - 1} finite points; {len(_POINTS)} are defined")
    points = list(_POINTS[: alpha - 1]) + [None]
    at = [list(col) for col in zip(*_vandermonde(points, m))]
    g = _vandermonde(points, r)
    bt = [list(col) for col in zip(*_inverse(_vandermonde(points, alpha)))]
    for i, row in enumerate(bt):  # integer rows of B^T; the scale goes to G
        scale = math.lcm(*(v.denominator for v in row))
        bt[i] = [v * scale for v in row]
        g[i] = [v / scale for v in g[i]]
    return tuple(np.array([[float(v) for v in row] for row in mat]) for mat in (at, g, bt))


def tile_sizes(plan) -> tuple[int, int, int]:
    """Outputs per tile in (D, H, W): :data:`TILE` for dims with a kernel
    extent above 1, else 1."""
    table = TILE[plan.dtype.name]
    return tuple(table[k] if k > 1 else 1 for k in plan.kernel)


def supports(plan) -> str | None:
    """None when Winograd can run ``plan``, else why not."""
    if plan.op != "conv":
        return "winograd is a conv method"
    if plan.dtype.name not in TILE:
        return f"winograd takes float32 and float64, not {plan.dtype.name}"
    if any(s != 1 for s in plan.stride):
        return f"winograd needs stride 1 (got {plan.stride[3 - plan.ndim :]})"
    if any(k > MAX_KERNEL for k in plan.kernel):
        return f"winograd takes kernel extents up to {MAX_KERNEL} (got {plan.kernel[3 - plan.ndim :]})"
    if all(k == 1 for k in plan.kernel):
        return "a 1x1 kernel has no products to save (gemm or direct run it)"
    if 0 in plan.out_size or plan.batch == 0:
        return "empty output"
    return None


class Geometry:
    """A plan's tiles, blocks and tasks for ``lanes`` and ``registers``."""

    def __init__(self, plan, lanes: int, registers: int):
        self.m = tile_sizes(plan)
        self.alpha = tuple(m + k - 1 for m, k in zip(self.m, plan.kernel))
        self.points = int(np.prod(self.alpha))
        self.outs = int(np.prod(self.m))
        self.cig = plan.c_in // plan.groups
        self.cog = plan.c_out // plan.groups
        self.rows = rows_for(_VECTORS, registers)
        self.lanes = lanes
        self.nob = -(-self.cog // self.rows)
        self.cop = self.nob * self.rows
        self.ntiles = tuple(self._tiles(plan, i) for i in range(3))
        self.total = plan.batch * int(np.prod(self.ntiles))
        self.R = _VECTORS * lanes  # tiles per task: one block of the micro-kernel
        self.nblk = -(-self.total // self.R)
        self.tasks = plan.groups * self.nblk
        kc = max(1, _CHUNK_BYTES // (self.points * self.R * plan.dtype.itemsize))
        self.kc = -(-self.cig // -(-self.cig // kc))  # balanced channel chunks

    def _tiles(self, plan, i: int) -> int:
        o, d, m = plan.out_size[i], plan.dilation[i], self.m[i]
        return sum(_ceil(_ceil(o - rho, d), m) for rho in range(min(d, o)))

    def maps(self, plan) -> tuple[np.ndarray, np.ndarray]:
        """The input maps (tile x alpha) and output maps (tile x m) of D, H, W,
        each concatenated."""
        ins, outs = [], []
        for i in range(3):
            o, d, m, a, k = plan.out_size[i], plan.dilation[i], self.m[i], self.alpha[i], plan.kernel[i]
            lo, hi = plan.padding[i]
            extent = lo + plan.in_size[i] + hi
            for rho in range(min(d, o)):
                for t in range(_ceil(_ceil(o - rho, d), m)):
                    q = rho + d * (t * m + np.arange(a, dtype=np.int64))  # padded positions
                    idx = fold_index(q - lo, plan.in_size[i], plan.padding_mode)
                    ins.append(np.where(q < extent, idx, -1))
                    oo = rho + d * (t * m + np.arange(m, dtype=np.int64))
                    outs.append(np.where(oo < o, oo, -1))
            del k
        return np.concatenate(ins), np.concatenate(outs)

    def args(self) -> np.ndarray:
        return np.array(
            [self.cig, self.cog, self.cop, self.R, self.nblk, self.kc, *self.alpha, *self.m, *self.ntiles,
             self.total, self.rows, _VECTORS * self.lanes, *self.matrix_offsets()],
            dtype=np.int64,
        )  # fmt: skip

    def matrix_offsets(self) -> list[int]:
        """Where :func:`_maps`' ``mats`` holds B^T (alpha x alpha) and A^T
        (m x alpha) of each dim: ``[bt_D, bt_H, bt_W, at_D, at_H, at_W]``."""
        bt, at, at_ = [], [], 0
        for a, m in zip(self.alpha, self.m):
            bt.append(at_)
            at.append(at_ + a * a)
            at_ += a * a + m * a
        return bt + at

    def workspace_bytes(self, itemsize: int, threads: int) -> int:
        """Per-task buffers on every thread (gathered and transformed inputs,
        products, their offsets)."""
        per_task = (3 * _GROUP + self.kc + self.cop) * self.points * self.R * itemsize
        return (per_task + (self.points + self.outs) * self.R * 8) * min(threads, self.tasks)


def geometry(plan) -> Geometry:
    spec = spec_for(plan.dtype)
    return _geometry(plan, spec.lanes, spec.registers)


@functools.lru_cache(maxsize=128)
def _geometry(plan, lanes, registers):
    return Geometry(plan, lanes, registers)


@functools.lru_cache(maxsize=128)
def _maps(plan, lanes, registers):
    geo = _geometry(plan, lanes, registers)
    inm, outm = geo.maps(plan)
    mats = []
    for m, k in zip(geo.m, plan.kernel):
        at, _, bt = matrices(m, k)
        mats += [bt.ravel(), at.ravel()]
    mats = np.concatenate(mats).astype(plan.dtype)
    arrays = (inm, outm, mats, geo.args())
    for a in arrays:
        a.flags.writeable = False
    return arrays


def workspace_bytes(plan) -> int:
    """Extra memory :func:`run` allocates: the tasks' buffers and the packed
    weight transform."""
    geo = geometry(plan)
    packed = plan.groups * geo.points * geo.cop * geo.cig
    return geo.workspace_bytes(plan.dtype.itemsize, numba.get_num_threads()) + packed * plan.dtype.itemsize


def cost_features(plan) -> dict[str, float]:
    """Operation counts of one call (float32 units, ``costs.per_dtype``): the
    element-wise products as GEMM FLOPs (padded blocks included), the values
    gathered and transformed on the way in and out, the output writes."""
    geo = geometry(plan)
    tiles = geo.nblk * geo.R
    ins = float(tiles * plan.c_in * geo.points)
    outs = float(tiles * plan.groups * geo.cop * geo.points)
    return costs.per_dtype(
        {
            "call": 1.0,
            "gemm_flops": 2.0 * tiles * plan.groups * geo.cop * geo.cig * geo.points,
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
    g_d, g_h, g_w = (matrices(m, k)[1] for m, k in zip(geo.m, plan.kernel))
    w = w5.astype(np.float64).reshape(plan.groups, geo.cog, geo.cig, *plan.kernel)
    u = np.einsum("ai,bj,ck,goxijk->gabcxo", g_d, g_h, g_w, w, optimize=True)
    u = u.reshape(plan.groups, geo.points, geo.cig, geo.cog)
    packed = np.zeros((plan.groups, geo.points, geo.cig, geo.cop), dtype=plan.dtype)
    packed[..., : geo.cog] = u
    packed = packed.reshape(plan.groups, geo.points, geo.cig, geo.nob, geo.rows).transpose(0, 1, 3, 2, 4)
    return np.ascontiguousarray(packed).ravel(), True


_PACKED = WeightCache("weight_cache_bytes")


def packed_weight(w5, plan, geo) -> tuple[np.ndarray, bool]:
    key = ("winograd", plan.groups, geo.m, plan.kernel, geo.rows, plan.dtype.str)
    return _PACKED.get(w5, key, lambda: _transformed_weight(w5, plan, geo))


@njit(nogil=True, cache=True)
def _pass(src, so, sps, dst, do, dps, mats, mo, nout, nin, outer, q, R, spec):
    # one dim of a transform: positions [outer][nin][q] of src (R lanes each,
    # ``sps`` apart) -> [outer][nout][q] of dst (``dps`` apart):
    # dst[.., j, ..] = sum_i mats[mo + j*nin + i] * src[.., i, ..], as explicit
    # vectors (microkernel.vector_comb: each term loaded once, each result
    # stored once; an auto-vectorized loop takes 256-bit vectors on Intel
    # AVX-512 hosts)
    if sps == R and dps == R:  # contiguous positions: one run per (o, j)
        R, sps, dps, q = q * R, q * R, q * R, 1
    for k in range(q):
        for o in range(outer):
            for j in range(nout):
                vector_comb(dst, do + k * dps + (o * nout + j) * q * dps, src, so + k * sps + o * nin * q * sps,
                            q * sps, mats, mo + j * nin, nin, R, spec)  # fmt: skip


@njit(nogil=True, cache=True)
def _transform(src, so, sps, dst, do, dps, t1, t2, mats, geo, side, R, spec):
    # src positions [a0][a1][a2] (R lanes each, sps apart) -> dst [b0][b1][b2]
    # (dps apart), one dim at a time (W, H, D; a dim with a == 1 is the
    # identity), between passes in t1 / t2 (contiguous). side 0: the input
    # transform (B^T, b = a = alpha); side 1: the output transform (A^T, b = m)
    a0, a1, a2 = geo[6], geo[7], geo[8]
    b0, b1, b2 = (geo[9], geo[10], geo[11]) if side else (a0, a1, a2)
    m0, m1, m2 = (geo[21], geo[22], geo[23]) if side else (geo[18], geo[19], geo[20])
    n = int(a2 > 1) + int(a1 > 1) + int(a0 > 1)
    zero, one = np.int64(0), np.int64(1)
    k = 0
    if a2 > 1:  # W: [a0*a1][a2][1] -> [a0*a1][b2][1]
        k += 1
        if k == n:
            _pass(src, so, sps, dst, do, dps, mats, m2, b2, a2, a0 * a1, one, R, spec)
        else:
            _pass(src, so, sps, t1, zero, R, mats, m2, b2, a2, a0 * a1, one, R, spec)
    if a1 > 1:  # H: [a0][a1][b2] -> [a0][b1][b2]
        k += 1
        src_, so_, sps_ = (src, so, sps) if k == 1 else (t1, zero, R)
        if k == n:
            _pass(src_, so_, sps_, dst, do, dps, mats, m1, b1, a1, a0, b2, R, spec)
        else:
            _pass(src_, so_, sps_, t2, zero, R, mats, m1, b1, a1, a0, b2, R, spec)
    if a0 > 1:  # D: [1][a0][b1*b2] -> [1][b0][b1*b2]
        k += 1
        src_, so_, sps_ = (src, so, sps) if k == 1 else ((t1, zero, R) if k == 2 else (t2, zero, R))
        _pass(src_, so_, sps_, dst, do, dps, mats, m0, b0, a0, one, b1 * b2, R, spec)


@njit(nogil=True, cache=True)
def _gemm(U, V, M, tab, g, p, nc, c0, spec, geo, acc):
    # M[p][o][tile] (+)= sum_{c < nc} U[g][p][o // rows][c0 + c][o % rows] * V[p][c][tile]
    cig, cop, R, kc, rows, vw = geo[0], geo[2], geo[3], geo[5], geo[16], geo[17]
    T = geo[6] * geo[7] * geo[8]
    nob = cop // rows
    for vb in range(R // vw):
        for ob in range(nob):
            a0 = (((g * T + p) * nob + ob) * cig + c0) * rows
            b0 = p * kc * R + vb * vw
            c_0 = (p * cop + ob * rows) * R + vb * vw
            if acc:
                fma_taps(U, V, M, tab, 1, 0, a0, b0, nc, rows, 1, R, c_0, R, spec, 0, 4, 0, 1)
            else:
                fma_taps(U, V, M, tab, 1, 0, a0, b0, nc, rows, 1, R, c_0, R, spec, 0, 4, 0, 0)


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


@njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _task(x, xf, U, bias, out, of, inm, outm, mats, geo, bad, tab, spec, t):
    # one group x one block of R tiles (see the module doc); xf, of: x and out flat
    cig, cog, cop, R, nblk, kc = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    al, ms = (geo[6], geo[7], geo[8]), (geo[9], geo[10], geo[11])
    g = t // nblk
    T = al[0] * al[1] * al[2]
    MO = ms[0] * ms[1] * ms[2]
    z = xf.dtype.type(0)
    # this task's share of the input, checked for non-finite values (the
    # transforms would spread them: the caller then runs the direct path)
    share = -(-xf.size // (nblk * (x.shape[1] // cig)))
    chk = z
    for i in range(np.uint64(t * share), np.uint64(min(xf.size, (t + 1) * share))):
        chk += xf[i] * z
    if chk != 0:
        bad[t] = 1
        return
    xo = np.empty(T * R, dtype=np.int64)
    oo = np.empty(MO * R, dtype=np.int64)
    _offsets(x, out, inm, outm, geo, (t - g * nblk) * R, xo, oo)
    L = _GROUP * R  # lanes of a transform: _GROUP channels of R tiles
    d = np.empty(T * L, dtype=xf.dtype)
    t1 = np.empty(T * L, dtype=xf.dtype)
    t2 = np.empty(T * L, dtype=xf.dtype)
    V = np.empty(T * kc * R, dtype=xf.dtype)
    M = np.empty(T * cop * R, dtype=xf.dtype)
    plane = x.shape[2] * x.shape[3] * x.shape[4]
    for c0 in range(0, cig, kc):
        nc = min(kc, cig - c0)
        for cg in range(0, nc, _GROUP):
            ng = min(_GROUP, nc - cg)
            for ci in range(ng):
                cx = (g * cig + c0 + cg + ci) * plane
                for p in range(T):
                    gather_run(xf, cx, z, xo, p * R, d, p * ng * R + ci * R, R, spec)
            _transform(
                d, np.int64(0), ng * R, V, cg * R, kc * R, t1, t2, mats, geo, np.int64(0), ng * R, spec
            )
        for p in range(T):
            _gemm(U, V, M, tab, g, p, nc, c0, spec, geo, c0 > 0)
    for og in range(0, cog, _GROUP):
        ng = min(_GROUP, cog - og)
        _transform(M, og * R, cop * R, d, np.int64(0), ng * R, t1, t2, mats, geo, np.int64(1), ng * R, spec)
        for o in range(ng):
            oc = (g * cog + og + o) * out.shape[2] * out.shape[3] * out.shape[4]
            bv = bias[g * cog + og + o]
            for j in range(MO):
                scatter_run(of, oc, bv, oo, j * R, d, j * ng * R + o * R, R, spec)


def run(x5, w5, bias, plan, out5):
    """Winograd conv of canonical 5-D arrays into ``out5`` (see the module
    doc); a non-finite input or weight runs the direct path instead."""
    from . import direct

    spec = spec_for(plan.dtype)
    geo = _geometry(plan, spec.lanes, spec.registers)
    inm, outm, mats, args = _maps(plan, spec.lanes, spec.registers)
    U, finite = packed_weight(w5, plan, geo)
    if not finite:
        return direct.run(x5, w5, bias, plan, out5)
    if bias is None:
        bias = np.zeros(plan.c_out, dtype=plan.dtype)
    bad = np.zeros(geo.tasks, dtype=np.int64)
    xf, of, tab = x5.reshape(-1), out5.reshape(-1), np.zeros(1, dtype=np.int64)
    parallel_tasks(_task, geo.tasks, x5, xf, U, bias, out5, of, inm, outm, mats, args, bad, tab, spec)
    if bad.any():
        return direct.run(x5, w5, bias, plan, out5)
    return out5
