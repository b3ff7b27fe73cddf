"""Winograd convolution on the GPU (``method="winograd"``, device cuda).

The same algorithm, tiles and matrices as the CPU path
(:mod:`numbaconv.cpu.winograd`: ``F(m, r)`` per dim, tiles described by
index maps that carry the padding mode and the dilation's residue grids),
in three grid-stride kernels per chunk of samples:

1. ``_transform_in``: a thread per (input channel, tile) gathers the tile's
   ``alpha^d`` inputs through the maps and applies ``B^T`` along W, H, D
   (in local arrays), writing ``V[point][channel][tile]``;
2. ``_multiply``: a thread per (point, output channel, tile) sums
   ``U[group][point][in][out] * V[point][in][tile]`` over the group's input
   channels into ``M[point][out][tile]``;
3. ``_transform_out``: a thread per (output channel, tile) applies ``A^T``,
   adds the bias and writes the tile's outputs through the maps.

The weight transform ``U`` is made on the host (one copy of the weight).
A non-finite input or weight runs the call on the GPU direct path (the
transforms would spread a NaN over its tile). ``V`` and ``M`` of one chunk
of samples stay within ``config.workspace_bytes``.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda

from .. import config
from ..common import gpu_roofline
from ..cpu import winograd as cw
from ._common import any_nonfinite, bias_or_zeros, blocks_1d, numba_type, to_device

MAX_POINTS = 512  # alpha^d of the largest tile: F(4, 5) in 3-D is 8^3


def supports(plan) -> str | None:
    why = cw.supports(plan)
    if why is not None:
        return why
    if _chunk(plan) < 1:
        return f"the transformed tiles of one sample exceed config.workspace_bytes={config.workspace_bytes}"
    return None


def _sizes(plan):
    m = cw.tile_sizes(plan)
    alpha = tuple(mi + k - 1 for mi, k in zip(m, plan.kernel))
    per_sample = int(np.prod(cw.tile_counts(plan, m)))
    return m, alpha, int(np.prod(alpha)), per_sample


def _chunk(plan) -> int:
    """Samples per chunk: V and M of their tiles within the budget."""
    _, _, points, per_sample = _sizes(plan)
    per = points * per_sample * (plan.c_in + plan.c_out) * plan.dtype.itemsize
    return int(min(plan.batch, config.workspace_bytes // max(per, 1)))


def workspace_bytes(plan) -> int:
    _, _, points, per_sample = _sizes(plan)
    weights = points * plan.c_out * (plan.c_in // plan.groups)
    tiles = max(_chunk(plan), 1) * per_sample
    return (points * tiles * (plan.c_in + plan.c_out) + weights) * plan.dtype.itemsize


def cost_features(plan) -> dict[str, float]:
    """The roofline's counts with Winograd's products (the element-wise stage)
    and the transformed tiles written and read once each."""
    base = gpu_roofline("direct", plan)
    _, _, points, per_sample = _sizes(plan)
    tiles = plan.batch * per_sample
    flops = 2.0 * tiles * points * plan.c_out * (plan.c_in // plan.groups)
    moved = 2.0 * points * tiles * (plan.c_in + plan.c_out) * plan.dtype.itemsize
    return {"call": 1.0, "flops": flops, "bytes": base["bytes"] + moved}


@cuda.jit(device=True)
def _pass(src, dst, mats, mo, a0, a1, a2, axis, nout):
    # positions [a0][a1][a2] of src -> dst with dim ``axis`` transformed by the
    # (nout x a[axis]) matrix at mats[mo:]
    if axis == 2:
        outer, nin, inner = a0 * a1, a2, 1
    elif axis == 1:
        outer, nin, inner = a0, a1, a2
    else:
        outer, nin, inner = 1, a0, a1 * a2
    for o in range(outer):
        for j in range(nout):
            for q in range(inner):
                acc = src[0] * 0
                for i in range(nin):
                    acc += mats[mo + j * nin + i] * src[(o * nin + i) * inner + q]
                dst[(o * nout + j) * inner + q] = acc


@cuda.jit(device=True)
def _transform(vals, tmp, mats, geo, side):
    # vals [a0][a1][a2] -> [b0][b1][b2] in place (through tmp): side 0 B^T
    # (b = alpha), side 1 A^T (b = m), along W, H, D
    a0, a1, a2 = geo[0], geo[1], geo[2]
    b0, b1, b2 = a0, a1, a2
    if side == 1:
        b0, b1, b2 = geo[3], geo[4], geo[5]
    if a2 > 1:
        _pass(vals, tmp, mats, geo[8 + 2 * 2 + side], a0, a1, a2, 2, b2)
        for i in range(a0 * a1 * b2):
            vals[i] = tmp[i]
    if a1 > 1:
        _pass(vals, tmp, mats, geo[8 + 2 * 1 + side], a0, a1, b2, 1, b1)
        for i in range(a0 * b1 * b2):
            vals[i] = tmp[i]
    if a0 > 1:
        _pass(vals, tmp, mats, geo[8 + side], a0, b1, b2, 0, b0)
        for i in range(b0 * b1 * b2):
            vals[i] = tmp[i]


@cuda.jit(device=True)
def _tile_of(t, n0, NT, nH, nW):
    # sample and (D, H, W) tile indices of tile t of a chunk starting at sample n0
    r = t % NT
    return n0 + t // NT, r // (nW * nH), (r // nW) % nH, r % nW


@functools.cache
def _transform_in(dtype_str: str):
    nbt = numba_type(dtype_str)

    @cuda.jit
    def transform_in(x, V, inm, mats, geo, n0, count):
        # V[(p * C + c) * tiles + t] for tiles t of samples n0 .. n0 + count
        C = x.shape[1]
        a0, a1, a2 = geo[0], geo[1], geo[2]
        nD, nH, nW = geo[6], geo[7], geo[14]
        NT = nD * nH * nW
        tiles = count * NT
        T = a0 * a1 * a2
        vals = cuda.local.array(MAX_POINTS, nbt)
        tmp = cuda.local.array(MAX_POINTS, nbt)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < C * tiles:
            t = i % tiles
            c = i // tiles
            n, td, th, tw = _tile_of(t, n0, NT, nH, nW)
            for a in range(a0):
                idd = inm[td * a0 + a]
                for b in range(a1):
                    ih = inm[nD * a0 + th * a1 + b]
                    for e in range(a2):
                        iw = inm[nD * a0 + nH * a1 + tw * a2 + e]
                        v = nbt(0)
                        if idd >= 0 and ih >= 0 and iw >= 0:
                            v = x[n, c, idd, ih, iw]
                        vals[(a * a1 + b) * a2 + e] = v
            _transform(vals, tmp, mats, geo, 0)
            for p in range(T):
                V[(p * C + c) * tiles + t] = vals[p]
            i += step

    return transform_in


@functools.cache
def _multiply(dtype_str: str):
    nbt = numba_type(dtype_str)

    @cuda.jit
    def multiply(U, V, M, groups, C, CO, T, tiles):
        # M[(p * CO + o) * tiles + t] =
        #     sum_c U[((g * T + p) * cig + c) * cog + o % cog] * V[(p * C + g * cig + c) * tiles + t]
        cig, cog = C // groups, CO // groups
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < T * CO * tiles:
            t = i % tiles
            r = i // tiles
            o = r % CO
            p = r // CO
            g = o // cog
            acc = nbt(0)
            ub = (g * T + p) * cig * cog + (o - g * cog)
            vb = (p * C + g * cig) * tiles + t
            for c in range(cig):
                acc += U[ub + c * cog] * V[vb + c * tiles]
            M[i] = acc
            i += step

    return multiply


@functools.cache
def _transform_out(dtype_str: str):
    nbt = numba_type(dtype_str)

    @cuda.jit
    def transform_out(M, out, bias, outm, mats, geo, n0, count):
        CO = out.shape[1]
        a0, a1, a2 = geo[0], geo[1], geo[2]
        m0, m1, m2 = geo[3], geo[4], geo[5]
        nD, nH, nW = geo[6], geo[7], geo[14]
        NT = nD * nH * nW
        tiles = count * NT
        T = a0 * a1 * a2
        vals = cuda.local.array(MAX_POINTS, nbt)
        tmp = cuda.local.array(MAX_POINTS, nbt)
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < CO * tiles:
            t = i % tiles
            o = i // tiles
            n, td, th, tw = _tile_of(t, n0, NT, nH, nW)
            for p in range(T):
                vals[p] = M[(p * CO + o) * tiles + t]
            _transform(vals, tmp, mats, geo, 1)
            for a in range(m0):
                od = outm[td * m0 + a]
                for b in range(m1):
                    oh = outm[nD * m0 + th * m1 + b]
                    for e in range(m2):
                        ow = outm[nD * m0 + nH * m1 + tw * m2 + e]
                        if od >= 0 and oh >= 0 and ow >= 0:
                            out[n, o, od, oh, ow] = vals[(a * m1 + b) * m2 + e] + bias[o]
            i += step

    return transform_out


def _host_tables(plan):
    """Maps, matrices and the geometry the kernels take: geo = [alpha (3), m (3),
    tiles in D, H, offsets of (B^T, A^T) per dim (6), tiles in W]."""
    m, alpha, points, _ = _sizes(plan)
    inm, outm = cw.tile_maps(plan, m)
    mats, offsets = [], []
    at_ = 0
    for mi, k in zip(m, plan.kernel):
        at, _, bt = cw.matrices(mi, k)
        offsets += [at_, at_ + bt.size]
        mats += [bt.ravel(), at.ravel()]
        at_ += bt.size + at.size
    nt = cw.tile_counts(plan, m)
    geo = np.array([*alpha, *m, nt[0], nt[1], *offsets, nt[2]], dtype=np.int64)
    return inm, outm, np.concatenate(mats).astype(plan.dtype), geo, points, int(np.prod(nt))


def run(x5, w5, bias, plan, out5):
    """Winograd convolution of device arrays in the canonical 5-D form."""
    from .direct import run as direct_run

    if any_nonfinite(x5) or any_nonfinite(w5):
        return direct_run(x5, w5, bias, plan, out5)
    inm, outm, mats, geo, points, per_sample = _host_tables(plan)
    u = cw.weight_transform(w5.copy_to_host(), plan, cw.tile_sizes(plan)).astype(plan.dtype)
    d_inm, d_outm, d_mats, d_geo, d_u = (to_device(a) for a in (inm, outm, mats, geo, u.ravel()))
    b = bias_or_zeros(bias, plan)
    key = np.dtype(plan.dtype).str
    transform_in, multiply, transform_out = _transform_in(key), _multiply(key), _transform_out(key)
    chunk = _chunk(plan)
    V = cuda.device_array(points * plan.c_in * chunk * per_sample, dtype=plan.dtype)
    M = cuda.device_array(points * plan.c_out * chunk * per_sample, dtype=plan.dtype)
    for n0 in range(0, plan.batch, chunk):
        count = min(chunk, plan.batch - n0)
        tiles = count * per_sample
        blocks, threads = blocks_1d(plan.c_in * tiles)
        transform_in[blocks, threads](x5, V, d_inm, d_mats, d_geo, n0, count)
        blocks, threads = blocks_1d(points * plan.c_out * tiles)
        multiply[blocks, threads](d_u, V, M, plan.groups, plan.c_in, plan.c_out, points, tiles)
        blocks, threads = blocks_1d(plan.c_out * tiles)
        transform_out[blocks, threads](M, out5, b, d_outm, d_mats, d_geo, n0, count)
    return out5
