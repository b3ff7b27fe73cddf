"""Direct convolution on the CPU (``method="direct"``).

Two njit-parallel kernels share one entry point, :func:`run`, and both take the
canonical 5-D form ``(N, C, D, H, W)``, so one compiled kernel per dtype serves
1-D, 2-D and 3-D:

* ``_rows_kernel``: each task owns a width segment of one output plane for a
  block of up to ``_ROW_OB`` output channels, row by row; the inner loop is an
  axpy along the output width (vectorized when the stride is 1). Best when a group has few input channels
  (depthwise, RGB stems, 1-D filters).
* ``_cl_kernel``: the input is copied once to channels-last ``(N, D, H, W, C)``
  (bounded by ``config.workspace_bytes``, chunked over the batch); each task
  owns one output row of a block of 4 output channels and computes 2x4 register
  tiles (2 output positions x 4 output channels) as dot products over
  contiguous runs of input channels (the whole ``kw x C`` run when the taps are
  contiguous). Best when a group has many input channels.

Padding modes, stride, dilation and (lo, hi) padding enter only through
per-dimension tap maps (``shapes.conv_tap_maps``, the compact form of
``shapes.tap_table``): entry ``[o, k]`` is the input
index read by output ``o`` at tap ``k``, or -1 for a zero. Every prange
iteration writes a disjoint set of output elements, so the kernels are
race-free and deterministic.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from .. import config, costs
from ..common import batch_chunk, nan_where_padding_meets_nonfinite_weights
from ..runtime import njit
from ..shapes import conv_tap_maps

# Kept literal here (not imported) because numba's on-disk cache keys on this
# file's contents; must equal numbaconv.config.FASTMATH (tested).
_FASTMATH = {"reassoc", "contract"}
_ROW_OB = 8  # output channels per task in the row kernel


@njit(inline="always")
def _tap(f, g, o, k):
    # entry [o, k] of a compact tap map (shapes.conv_tap_map / gather_tap_map)
    return f[o * g[0] + k * g[1] + g[2]]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _rows_kernel(x, w, bias, out, fd, gd, fh, gh, fw, gw, sw, dw, lo_w, ob, owb, p0, p1, dh, lo_h):
    # One task: sample n, group g, a block of up to ob output channels, one
    # output plane od, a segment [a, e) of the output width; loops over oh.
    # No array views in the hot loops (each view costs a refcount update).
    N, C, D, H, W = x.shape
    O, Cg, KD, KH, KW = w.shape
    OD, OH, OW = out.shape[2], out.shape[3], out.shape[4]
    G = C // Cg
    Og = O // G
    nob = (Og + ob - 1) // ob
    nwb = (OW + owb - 1) // owb
    ntask = N * G * nob * OD * nwb
    for t in prange(ntask):
        wb = t % nwb
        r1 = t // nwb
        od = r1 % OD
        r3 = r1 // OD
        b = r3 % nob
        r4 = r3 // nob
        g = r4 % G
        n = r4 // G
        o0 = g * Og + b * ob
        nb = min(ob, (g + 1) * Og - o0)
        a = wb * owb
        e = min(a + owb, OW)
        m = e - a
        acc = np.empty(nb * m, dtype=out.dtype)  # flat: row j at j * m
        flat = p1 > p0 and _tap(fd, gd, od, 0) >= 0
        if flat:
            # depthwise 3x3 at stride 1 with OW == W: rows [p0, p1) in one flat pass
            _dw3x3_plane(
                x,
                w,
                bias,
                out,
                n,
                g,
                o0,
                nb,
                od,
                _tap(fd, gd, od, 0),
                p0,
                p1,
                fh,
                gh,
                fw,
                gw,
                dh,
                dw,
                lo_h,
                lo_w,
            )
        for oh in range(OH):
            if flat and p0 <= oh < p1:
                continue
            if (
                Cg == 1
                and KD == 1
                and KH == 3
                and KW == 3
                and _tap(fd, gd, od, 0) >= 0
                and _tap(fh, gh, oh, 0) >= 0
                and _tap(fh, gh, oh, 1) >= 0
                and _tap(fh, gh, oh, 2) >= 0
            ):
                # depthwise 3x3 row with its window inside in D and H: one pass
                # straight into the output, no accumulator
                _dw3x3_row(
                    x,
                    w,
                    bias,
                    out,
                    n,
                    g,
                    o0,
                    nb,
                    od,
                    oh,
                    _tap(fd, gd, od, 0),
                    fh,
                    gh,
                    fw,
                    gw,
                    a,
                    e,
                    sw,
                    dw,
                    lo_w,
                )
                continue
            acc[:] = 0
            for cl in range(Cg):
                c = g * Cg + cl
                for kd in range(KD):
                    idd = _tap(fd, gd, od, kd)
                    if idd < 0:
                        continue
                    if (
                        KH == 3
                        and KW == 3
                        and _tap(fh, gh, oh, 0) >= 0
                        and _tap(fh, gh, oh, 1) >= 0
                        and _tap(fh, gh, oh, 2) >= 0
                    ):
                        # 3x3 window fully inside in H: all nine taps in one pass
                        ih0 = _tap(fh, gh, oh, 0)
                        ih1 = _tap(fh, gh, oh, 1)
                        ih2 = _tap(fh, gh, oh, 2)
                        off = -lo_w
                        lo = min(max(a, -(off // sw)), e)
                        hi = max(min(e, (W - 1 - off - 2 * dw) // sw + 1), lo)
                        cnt = np.uint64(hi - lo)
                        ua = np.uint64(lo - a)
                        ux = np.uint64(lo * sw + off)
                        ud = np.uint64(dw)
                        ud2 = np.uint64(2 * dw)
                        us = np.uint64(sw)
                        for j in range(nb):
                            w00 = w[o0 + j, cl, kd, 0, 0]
                            w01 = w[o0 + j, cl, kd, 0, 1]
                            w02 = w[o0 + j, cl, kd, 0, 2]
                            w10 = w[o0 + j, cl, kd, 1, 0]
                            w11 = w[o0 + j, cl, kd, 1, 1]
                            w12 = w[o0 + j, cl, kd, 1, 2]
                            w20 = w[o0 + j, cl, kd, 2, 0]
                            w21 = w[o0 + j, cl, kd, 2, 1]
                            w22 = w[o0 + j, cl, kd, 2, 2]
                            uj = np.uint64(j * m) + ua
                            for i in range(cnt):
                                q = ux + i * us
                                acc[uj + i] += (
                                    w00 * x[n, c, idd, ih0, q]
                                    + w01 * x[n, c, idd, ih0, q + ud]
                                    + w02 * x[n, c, idd, ih0, q + ud2]
                                    + w10 * x[n, c, idd, ih1, q]
                                    + w11 * x[n, c, idd, ih1, q + ud]
                                    + w12 * x[n, c, idd, ih1, q + ud2]
                                    + w20 * x[n, c, idd, ih2, q]
                                    + w21 * x[n, c, idd, ih2, q + ud]
                                    + w22 * x[n, c, idd, ih2, q + ud2]
                                )
                            for kh in range(3):
                                ih = _tap(fh, gh, oh, kh)
                                for k in range(3):
                                    wv = w[o0 + j, cl, kd, kh, k]
                                    for ow in range(a, lo):
                                        iw = _tap(fw, gw, ow, k)
                                        if iw >= 0:
                                            acc[j * m + ow - a] += wv * x[n, c, idd, ih, iw]
                                    for ow in range(hi, e):
                                        iw = _tap(fw, gw, ow, k)
                                        if iw >= 0:
                                            acc[j * m + ow - a] += wv * x[n, c, idd, ih, iw]
                        continue
                    for kh in range(KH):
                        ih = _tap(fh, gh, oh, kh)
                        if ih < 0:
                            continue
                        # taps in triples: one pass over the row per three taps
                        # (a third of the accumulator traffic), then single taps
                        # long filters: taps in groups of eight, one pass each
                        kw8 = KW - KW % 8
                        for kw in range(0, kw8, 8):
                            off = kw * dw - lo_w
                            lo = min(max(a, -(off // sw)), e)
                            hi = max(min(e, (W - 1 - off - 7 * dw) // sw + 1), lo)
                            cnt = np.uint64(hi - lo)
                            ua = np.uint64(lo - a)
                            ux = np.uint64(lo * sw + off)
                            d1 = np.uint64(dw)
                            d2 = np.uint64(2 * dw)
                            d3 = np.uint64(3 * dw)
                            d4 = np.uint64(4 * dw)
                            d5 = np.uint64(5 * dw)
                            d6 = np.uint64(6 * dw)
                            d7 = np.uint64(7 * dw)
                            us = np.uint64(sw)
                            for j in range(nb):
                                v0 = w[o0 + j, cl, kd, kh, kw]
                                v1 = w[o0 + j, cl, kd, kh, kw + 1]
                                v2 = w[o0 + j, cl, kd, kh, kw + 2]
                                v3 = w[o0 + j, cl, kd, kh, kw + 3]
                                v4 = w[o0 + j, cl, kd, kh, kw + 4]
                                v5 = w[o0 + j, cl, kd, kh, kw + 5]
                                v6 = w[o0 + j, cl, kd, kh, kw + 6]
                                v7 = w[o0 + j, cl, kd, kh, kw + 7]
                                uj = np.uint64(j * m) + ua
                                if sw == 1:
                                    for i in range(cnt):
                                        q = ux + i
                                        acc[uj + i] += (
                                            (v0 * x[n, c, idd, ih, q] + v1 * x[n, c, idd, ih, q + d1])
                                            + (v2 * x[n, c, idd, ih, q + d2] + v3 * x[n, c, idd, ih, q + d3])
                                        ) + (
                                            (v4 * x[n, c, idd, ih, q + d4] + v5 * x[n, c, idd, ih, q + d5])
                                            + (v6 * x[n, c, idd, ih, q + d6] + v7 * x[n, c, idd, ih, q + d7])
                                        )
                                else:
                                    for i in range(cnt):
                                        q = ux + i * us
                                        acc[uj + i] += (
                                            (v0 * x[n, c, idd, ih, q] + v1 * x[n, c, idd, ih, q + d1])
                                            + (v2 * x[n, c, idd, ih, q + d2] + v3 * x[n, c, idd, ih, q + d3])
                                        ) + (
                                            (v4 * x[n, c, idd, ih, q + d4] + v5 * x[n, c, idd, ih, q + d5])
                                            + (v6 * x[n, c, idd, ih, q + d6] + v7 * x[n, c, idd, ih, q + d7])
                                        )
                                for k in range(kw, kw + 8):
                                    wv = w[o0 + j, cl, kd, kh, k]
                                    for ow in range(a, lo):
                                        iw = _tap(fw, gw, ow, k)
                                        if iw >= 0:
                                            acc[j * m + ow - a] += wv * x[n, c, idd, ih, iw]
                                    for ow in range(hi, e):
                                        iw = _tap(fw, gw, ow, k)
                                        if iw >= 0:
                                            acc[j * m + ow - a] += wv * x[n, c, idd, ih, iw]
                        kw3 = KW - (KW - kw8) % 3
                        for kw in range(kw8, kw3, 3):
                            off = kw * dw - lo_w
                            # interior outputs read x[..., ow * sw + off + {0,1,2} * dw] in range
                            lo = min(max(a, -(off // sw)), e)
                            hi = max(min(e, (W - 1 - off - 2 * dw) // sw + 1), lo)
                            # unsigned offsets: no negative-index wraparound
                            # test per element, so the loops vectorize
                            cnt = np.uint64(hi - lo)
                            ua = np.uint64(lo - a)
                            ux = np.uint64(lo * sw + off)
                            ud = np.uint64(dw)
                            ud2 = np.uint64(2 * dw)
                            us = np.uint64(sw)
                            for j in range(nb):
                                w0 = w[o0 + j, cl, kd, kh, kw]
                                w1 = w[o0 + j, cl, kd, kh, kw + 1]
                                w2 = w[o0 + j, cl, kd, kh, kw + 2]
                                uj = np.uint64(j * m) + ua
                                if sw == 1:
                                    for i in range(cnt):
                                        acc[uj + i] += (
                                            w0 * x[n, c, idd, ih, ux + i]
                                            + w1 * x[n, c, idd, ih, ux + ud + i]
                                            + w2 * x[n, c, idd, ih, ux + ud2 + i]
                                        )
                                else:
                                    for i in range(cnt):
                                        q = ux + i * us
                                        acc[uj + i] += (
                                            w0 * x[n, c, idd, ih, q]
                                            + w1 * x[n, c, idd, ih, q + ud]
                                            + w2 * x[n, c, idd, ih, q + ud2]
                                        )
                                for k in range(kw, kw + 3):
                                    wv = w[o0 + j, cl, kd, kh, k]
                                    for ow in range(a, lo):
                                        iw = _tap(fw, gw, ow, k)
                                        if iw >= 0:
                                            acc[j * m + ow - a] += wv * x[n, c, idd, ih, iw]
                                    for ow in range(hi, e):
                                        iw = _tap(fw, gw, ow, k)
                                        if iw >= 0:
                                            acc[j * m + ow - a] += wv * x[n, c, idd, ih, iw]
                        for kw in range(kw3, KW):
                            off = kw * dw - lo_w
                            lo = min(max(a, -(off // sw)), e)
                            hi = max(min(e, (W - 1 - off) // sw + 1), lo)
                            cnt = np.uint64(hi - lo)
                            ua = np.uint64(lo - a)
                            ux = np.uint64(lo * sw + off)
                            us = np.uint64(sw)
                            for j in range(nb):
                                wv = w[o0 + j, cl, kd, kh, kw]
                                uj = np.uint64(j * m) + ua
                                if sw == 1:
                                    for i in range(cnt):
                                        acc[uj + i] += wv * x[n, c, idd, ih, ux + i]
                                else:
                                    for i in range(cnt):
                                        acc[uj + i] += wv * x[n, c, idd, ih, ux + i * us]
                                for ow in range(a, lo):
                                    iw = _tap(fw, gw, ow, kw)
                                    if iw >= 0:
                                        acc[j * m + ow - a] += wv * x[n, c, idd, ih, iw]
                                for ow in range(hi, e):
                                    iw = _tap(fw, gw, ow, kw)
                                    if iw >= 0:
                                        acc[j * m + ow - a] += wv * x[n, c, idd, ih, iw]
            for j in range(nb):
                bv = bias[o0 + j]
                uo = np.uint64(a)
                um = np.uint64(j * m)
                for i in range(np.uint64(m)):
                    out[n, o0 + j, od, oh, uo + i] = acc[um + i] + bv


@njit(cache=True, fastmath=_FASTMATH)
def _dw3x3_plane(x, w, bias, out, n, c, o0, nb, od, idd, r0, r1, fh, gh, fw, gw, dh, dw, lo_h, lo_w):
    # Output rows [r0, r1) of a depthwise 3x3 conv at stride 1 with OW == W:
    # out and x rows have the same pitch, so the plane is one flat loop
    # out[p] = sum w * x[p + shift(kh, kw)]; columns whose window crosses the
    # W edge read a neighbouring row there and are recomputed from the tables.
    # The caller guarantees rows [r0, r1) have all three input rows inside.
    W = x.shape[4]
    lo = lo_w
    hi = W - 2 * dw + lo_w
    start = np.uint64(r0 * W + lo)
    cnt = np.uint64((r1 - 1) * W + hi) - start
    base = start - np.uint64(lo_h * W + lo_w)  # x index of tap (0, 0) at p = start
    ud = np.uint64(dw)
    ud2 = np.uint64(2 * dw)
    uh = np.uint64(dh * W)
    uh2 = np.uint64(2 * dh * W)
    for j in range(nb):
        o = o0 + j
        bv = bias[o]
        w00 = w[o, 0, 0, 0, 0]
        w01 = w[o, 0, 0, 0, 1]
        w02 = w[o, 0, 0, 0, 2]
        w10 = w[o, 0, 0, 1, 0]
        w11 = w[o, 0, 0, 1, 1]
        w12 = w[o, 0, 0, 1, 2]
        w20 = w[o, 0, 0, 2, 0]
        w21 = w[o, 0, 0, 2, 1]
        w22 = w[o, 0, 0, 2, 2]
        xp = x[n, c, idd].ravel()
        op = out[n, o, od].ravel()
        for i in range(cnt):
            q = base + i
            op[start + i] = bv + (
                (w00 * xp[q] + w01 * xp[q + ud] + w02 * xp[q + ud2])
                + (w10 * xp[q + uh] + w11 * xp[q + uh + ud] + w12 * xp[q + uh + ud2])
                + (w20 * xp[q + uh2] + w21 * xp[q + uh2 + ud] + w22 * xp[q + uh2 + ud2])
            )
        for oh in range(r0, r1):
            for ow in range(0, lo):
                out[n, o, od, oh, ow] = _dw3x3_edge(x, w, bv, n, c, o, idd, oh, ow, fh, gh, fw, gw)
            for ow in range(hi, W):
                out[n, o, od, oh, ow] = _dw3x3_edge(x, w, bv, n, c, o, idd, oh, ow, fh, gh, fw, gw)


@njit(cache=True, fastmath=_FASTMATH)
def _dw3x3_row(x, w, bias, out, n, c, o0, nb, od, oh, idd, fh, gh, fw, gw, a, e, sw, dw, lo_w):
    # out[n, o0:o0+nb, od, oh, a:e] for one input channel c and a 3x3 window
    # whose three input rows _tap(fh, gh, oh, :) are all inside
    W = x.shape[4]
    ih0 = _tap(fh, gh, oh, 0)
    ih1 = _tap(fh, gh, oh, 1)
    ih2 = _tap(fh, gh, oh, 2)
    off = -lo_w
    lo = min(max(a, -(off // sw)), e)
    hi = max(min(e, (W - 1 - off - 2 * dw) // sw + 1), lo)
    cnt = np.uint64(hi - lo)
    ux = np.uint64(lo * sw + off)
    ud = np.uint64(dw)
    ud2 = np.uint64(2 * dw)
    us = np.uint64(sw)
    ulo = np.uint64(lo)
    for j in range(nb):
        o = o0 + j
        bv = bias[o]
        w00 = w[o, 0, 0, 0, 0]
        w01 = w[o, 0, 0, 0, 1]
        w02 = w[o, 0, 0, 0, 2]
        w10 = w[o, 0, 0, 1, 0]
        w11 = w[o, 0, 0, 1, 1]
        w12 = w[o, 0, 0, 1, 2]
        w20 = w[o, 0, 0, 2, 0]
        w21 = w[o, 0, 0, 2, 1]
        w22 = w[o, 0, 0, 2, 2]
        for i in range(cnt):
            q = ux + i * us
            out[n, o, od, oh, ulo + i] = bv + (
                w00 * x[n, c, idd, ih0, q]
                + w01 * x[n, c, idd, ih0, q + ud]
                + w02 * x[n, c, idd, ih0, q + ud2]
                + w10 * x[n, c, idd, ih1, q]
                + w11 * x[n, c, idd, ih1, q + ud]
                + w12 * x[n, c, idd, ih1, q + ud2]
                + w20 * x[n, c, idd, ih2, q]
                + w21 * x[n, c, idd, ih2, q + ud]
                + w22 * x[n, c, idd, ih2, q + ud2]
            )
        for ow in range(a, lo):
            out[n, o, od, oh, ow] = _dw3x3_edge(x, w, bv, n, c, o, idd, oh, ow, fh, gh, fw, gw)
        for ow in range(hi, e):
            out[n, o, od, oh, ow] = _dw3x3_edge(x, w, bv, n, c, o, idd, oh, ow, fh, gh, fw, gw)


@njit(cache=True, fastmath=_FASTMATH)
def _dw3x3_edge(x, w, s, n, c, o, idd, oh, ow, fh, gh, fw, gw):
    for kh in range(3):
        ih = _tap(fh, gh, oh, kh)
        for k in range(3):
            iw = _tap(fw, gw, ow, k)
            if iw >= 0:
                s += w[o, 0, 0, kh, k] * x[n, c, idd, ih, iw]
    return s


@njit(cache=True, fastmath=_FASTMATH)
def _dot2x4(xc, n, d, h, s0, s1, wc, ph, o0, o1, o2, o3, kd, kh, wo, cnt, z):
    # sum_c xc[n, d, h, s + c] * wc[ph, o, kd, kh, wo + c] for s in (s0, s1) and the
    # four o: indices into the full arrays (no views: each view would cost a
    # reference-count update), unsigned so the loop vectorizes
    a00 = a01 = a02 = a03 = z
    a10 = a11 = a12 = a13 = z
    u0 = np.uint64(s0)
    u1 = np.uint64(s1)
    uw = np.uint64(wo)
    for c in range(np.uint64(cnt)):
        p = xc[n, d, h, u0 + c]
        q = xc[n, d, h, u1 + c]
        v0 = wc[ph, o0, kd, kh, uw + c]
        v1 = wc[ph, o1, kd, kh, uw + c]
        v2 = wc[ph, o2, kd, kh, uw + c]
        v3 = wc[ph, o3, kd, kh, uw + c]
        a00 += v0 * p
        a01 += v1 * p
        a02 += v2 * p
        a03 += v3 * p
        a10 += v0 * q
        a11 += v1 * q
        a12 += v2 * q
        a13 += v3 * q
    return a00, a01, a02, a03, a10, a11, a12, a13


@njit(cache=True, fastmath=_FASTMATH)
def _dot1x4(xc, n, d, h, s0, wc, ph, o0, o1, o2, o3, kd, kh, wo, cnt, z):
    a0 = a1 = a2 = a3 = z
    u0 = np.uint64(s0)
    uw = np.uint64(wo)
    for c in range(np.uint64(cnt)):
        p = xc[n, d, h, u0 + c]
        a0 += wc[ph, o0, kd, kh, uw + c] * p
        a1 += wc[ph, o1, kd, kh, uw + c] * p
        a2 += wc[ph, o2, kd, kh, uw + c] * p
        a3 += wc[ph, o3, kd, kh, uw + c] * p
    return a0, a1, a2, a3


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _cl_kernel(xc, wt, wr, bias, out, fd, gd, fh, gh, fw, gw, rok, rst, rph, C, ps, z):
    # xc: channels-last input viewed as (N, D, H, W*C); wt: (1, O, KD, KH, KW*Cg)
    # the weight per tap; wr: (P, O, KD, KH, R) the weight of a whole run of
    # R contiguous input elements for output positions with rok[ow] (run
    # starts at element rst[ow], weight phase rph[ow]); z: a zero of the output
    # dtype (a literal 0 would promote float32 to float64)
    N = xc.shape[0]
    O, KD, KH, KWC = wt.shape[1], wt.shape[2], wt.shape[3], wt.shape[4]
    R = wr.shape[4]
    OD, OH, OW = out.shape[2], out.shape[3], out.shape[4]
    KW = gw[3]
    Cg = KWC // KW
    G = C // Cg
    Og = O // G
    nob = (Og + 3) // 4
    ntask = N * G * nob * OD * OH
    for t in prange(ntask):
        oh = t % OH
        r2 = t // OH
        od = r2 % OD
        r3 = r2 // OD
        b = r3 % nob
        r4 = r3 // nob
        g = r4 % G
        n = r4 // G
        o0 = g * Og + b * 4
        ol = min(o0 + 4, (g + 1) * Og) - 1
        i1 = min(o0 + 1, ol)
        i2 = min(o0 + 2, ol)
        i3 = min(o0 + 3, ol)
        cb = g * Cg
        # pixel pairs (ow0, ow0 + ps): ps = 1 for conv; the transposed op's
        # gather passes its stride so both pixels have the same valid taps
        for ph in range(ps):
            for ow0 in range(ph, OW, 2 * ps):
                ow1 = ow0 + ps if ow0 + ps < OW else ow0
                a00 = a01 = a02 = a03 = z
                a10 = a11 = a12 = a13 = z
                for kd in range(KD):
                    idd = _tap(fd, gd, od, kd)
                    if idd < 0:
                        continue
                    for kh in range(KH):
                        ih = _tap(fh, gh, oh, kh)
                        if ih < 0:
                            continue
                        if rok[ow0] and rok[ow1]:
                            # both positions read one contiguous run (all taps in W,
                            # one group): a single long dot product per row
                            p = _dot2x4(
                                xc,
                                n,
                                idd,
                                ih,
                                rst[ow0],
                                rst[ow1],
                                wr,
                                rph[ow0],
                                o0,
                                i1,
                                i2,
                                i3,
                                kd,
                                kh,
                                0,
                                R,
                                z,
                            )
                            a00 += p[0]
                            a01 += p[1]
                            a02 += p[2]
                            a03 += p[3]
                            a10 += p[4]
                            a11 += p[5]
                            a12 += p[6]
                            a13 += p[7]
                            continue
                        for kw in range(KW):
                            iw0 = _tap(fw, gw, ow0, kw)
                            iw1 = _tap(fw, gw, ow1, kw)
                            wo = kw * Cg
                            if iw0 >= 0 and iw1 >= 0:
                                p = _dot2x4(
                                    xc,
                                    n,
                                    idd,
                                    ih,
                                    iw0 * C + cb,
                                    iw1 * C + cb,
                                    wt,
                                    0,
                                    o0,
                                    i1,
                                    i2,
                                    i3,
                                    kd,
                                    kh,
                                    wo,
                                    Cg,
                                    z,
                                )
                                a00 += p[0]
                                a01 += p[1]
                                a02 += p[2]
                                a03 += p[3]
                                a10 += p[4]
                                a11 += p[5]
                                a12 += p[6]
                                a13 += p[7]
                            elif iw0 >= 0:
                                q = _dot1x4(
                                    xc, n, idd, ih, iw0 * C + cb, wt, 0, o0, i1, i2, i3, kd, kh, wo, Cg, z
                                )
                                a00 += q[0]
                                a01 += q[1]
                                a02 += q[2]
                                a03 += q[3]
                            elif iw1 >= 0:
                                q = _dot1x4(
                                    xc, n, idd, ih, iw1 * C + cb, wt, 0, o0, i1, i2, i3, kd, kh, wo, Cg, z
                                )
                                a10 += q[0]
                                a11 += q[1]
                                a12 += q[2]
                                a13 += q[3]
                # clamped duplicates (i1..i3 == ol, ow1 == ow0) hold identical values
                out[n, i3, od, oh, ow0] = a03 + bias[i3]
                out[n, i2, od, oh, ow0] = a02 + bias[i2]
                out[n, i1, od, oh, ow0] = a01 + bias[i1]
                out[n, o0, od, oh, ow0] = a00 + bias[o0]
                if ow1 != ow0:
                    out[n, i3, od, oh, ow1] = a13 + bias[i3]
                    out[n, i2, od, oh, ow1] = a12 + bias[i2]
                    out[n, i1, od, oh, ow1] = a11 + bias[i1]
                    out[n, o0, od, oh, ow1] = a10 + bias[o0]


@njit(parallel=True, cache=True)
def _to_channels_last(x, xc):
    # x: (N, C, D, H, W) -> xc: (N, D, H, W, C)
    N, C, D, H, W = x.shape
    for t in prange(N * D * H):
        h = t % H
        r = t // H
        d = r % D
        n = r // D
        for c in range(C):
            src = x[n, c, d, h]
            dst = xc[n, d, h]
            for i in range(W):
                dst[i, c] = src[i]


def uses_channels_last(plan) -> bool:
    """Whether :func:`run` takes the channels-last kernel for this plan."""
    cg = plan.c_in // plan.groups
    return cg >= config.direct_channels_last_min and channels_last_fits(plan)


def channels_last_fits(plan) -> bool:
    """Whether the channels-last copy of one sample fits ``config.workspace_bytes``."""
    return sample_bytes(plan) <= config.workspace_bytes


def sample_bytes(plan) -> int:
    """Bytes of one input sample (its channels-last copy)."""
    return plan.c_in * plan.in_size[0] * plan.in_size[1] * plan.in_size[2] * plan.dtype.itemsize


def channels_last_workspace(plan) -> int:
    """Bytes of the channels-last input copy (one chunk of samples within the budget)."""
    per_sample = sample_bytes(plan)
    return batch_chunk(plan.batch, per_sample) * per_sample


def supports(plan) -> str | None:
    """The direct path runs every case."""
    return None


def workspace_bytes(plan) -> int:
    """Extra memory :func:`run` allocates for this plan (the channels-last copy)."""
    return channels_last_workspace(plan) if uses_channels_last(plan) else 0


def cost_features(plan) -> dict[str, float]:
    """Operation counts of one call (float32 units): the row kernel runs over
    each output row once per (channel, kd, kh) input row and per 8 taps of the
    row, strided rows slower; the channels-last kernel does a dot product of
    ``cg * kw`` contiguous values per (output, kd, kh)."""
    kd, kh, kw = plan.kernel
    cg = plan.c_in // plan.groups
    outputs = plan.batch * plan.c_out * int(np.prod(plan.out_size))
    flops = float(plan.flops)
    rows = not uses_channels_last(plan)
    strided = plan.stride[2] > 1
    f = {
        "call": 1.0,
        "outputs": float(outputs),
        "flops_rows": flops if rows and not strided else 0.0,
        "flops_rows_strided": flops if rows and strided else 0.0,
        "row_passes": float(outputs * cg * kd * kh * -(-kw // 8)) if rows else 0.0,
        "flops_cl": 0.0 if rows else flops,
        "cl_runs": 0.0 if rows else float(outputs * kd * kh),
    }
    return costs.per_dtype(f, plan)


def run_channels_last(x5, wt, bias, out5, tables, runs, ps):
    """Run ``_cl_kernel`` over the batch in chunks within ``config.workspace_bytes``.

    ``wt`` is the weight as ``(C_out, KD, KH, KW * C_in/groups)`` (channels
    innermost), ``tables`` the (D, H, W) tap maps ``(fd, gd, fh, gh, fw, gw)``
    (output position x tap -> input index or -1, see ``shapes.conv_tap_map``), ``runs`` None or ``(wr, rok, rst, rph)``: the output
    positions ``rok`` whose W taps read one contiguous run of the channels-last
    row starting at element ``rst``, with weight ``wr[rph]`` laid out along the
    run. ``ps`` is the distance of the two pixels of a register tile.
    """
    n, c, d, h, w = x5.shape
    per_sample = c * d * h * w * x5.dtype.itemsize
    chunk = batch_chunk(n, per_sample)
    buf = np.empty((chunk, d, h, w, c), dtype=x5.dtype)
    fd, gd, fh, gh, fw, gw = tables
    wt5 = wt[None]
    if runs is None:
        ow = out5.shape[4]
        runs = (wt5, np.zeros(ow, np.bool_), np.zeros(ow, np.int64), np.zeros(ow, np.int64))
    wr, rok, rst, rph = runs
    for n0 in range(0, n, chunk):
        m = min(chunk, n - n0)
        xc = buf[:m]
        _to_channels_last(x5[n0 : n0 + m], xc)
        _cl_kernel(
            xc.reshape(m, d, h, w * c),
            wt5,
            wr,
            bias,
            out5[n0 : n0 + m],
            fd,
            gd,
            fh,
            gh,
            fw,
            gw,
            rok,
            rst,
            rph,
            c,
            ps,
            x5.dtype.type(0),
        )
    return out5


def conv_runs(plan, wt, fw, gw):
    """``runs`` for :func:`run_channels_last` for conv: the whole ``KW * C`` run
    where the W taps of a position are contiguous (one group, dilation 1)."""
    s, d, c, kw, ow = (int(v) for v in gw)
    if plan.groups != 1 or plan.dilation[2] != 1:
        return None
    pos = np.arange(ow, dtype=np.int64) * s + c
    first = fw[pos]
    rok = (first >= 0) & (fw[pos + (kw - 1) * d] == first + kw - 1)
    rst = np.where(rok, first * plan.c_in, 0).astype(np.int64)
    return wt[None], rok, rst, np.zeros(ow, np.int64)


def _plane_rows(plan, owb):
    """Output rows ``[r0, r1)`` the flat depthwise 3x3 pass can take, or (0, 0).

    Needs one input channel per group, a (1, 3, 3) kernel, stride 1 in H and W,
    whole output rows per task and ``OW == W`` (equal row pitch of input and
    output); the rows are those whose three input rows are all inside.
    """
    _, h, w = plan.in_size
    oh, ow = plan.out_size[1], plan.out_size[2]
    dh, dw = plan.dilation[1], plan.dilation[2]
    lo_h = plan.padding[1][0]
    if (
        plan.c_in != plan.groups
        or plan.kernel != (1, 3, 3)
        or plan.stride[1:] != (1, 1)
        or owb < ow
        or ow != w
        or w - 2 * dw <= 0
    ):
        return 0, 0
    r0 = lo_h
    r1 = min(oh, h + lo_h - 2 * dh)
    return (r0, r1) if r1 > r0 else (0, 0)


def run(x5, w5, bias, plan, out5):
    """Direct convolution of canonical 5-D arrays into ``out5``.

    ``x5`` ``(N, C_in, D, H, W)``, ``w5`` ``(C_out, C_in/groups, KD, KH, KW)``,
    ``bias`` ``(C_out,)`` or None, ``out5`` ``plan.output_shape5``; all
    C-contiguous, native byte order, dtype ``plan.dtype``. Returns ``out5``.
    """
    if bias is None:
        bias = np.zeros(plan.c_out, dtype=plan.dtype)
    maps = conv_tap_maps(plan)
    fw, gw = maps[4], maps[5]
    if uses_channels_last(plan):
        cg = plan.c_in // plan.groups
        kd, kh, kw = plan.kernel
        wc = np.ascontiguousarray(w5.transpose(0, 2, 3, 4, 1)).reshape(plan.c_out, kd, kh, kw * cg)
        run_channels_last(x5, wc, bias, out5, maps, conv_runs(plan, wc, fw, gw), 1)
        nan_where_padding_meets_nonfinite_weights(plan, w5, out5)
        return out5
    og = plan.c_out // plan.groups
    ob = min(og, _ROW_OB)
    base = plan.batch * plan.groups * (-(-og // ob)) * plan.out_size[0]
    ow = plan.out_size[2]
    want = 16 * numba.get_num_threads()
    owb = ow if base >= want else max(256, -(-ow // -(-want // base)))
    r0, r1 = _plane_rows(plan, owb)
    _rows_kernel(
        x5,
        w5,
        bias,
        out5,
        *maps,
        plan.stride[2],
        plan.dilation[2],
        plan.padding[2][0],
        ob,
        min(owb, ow),
        r0,
        r1,
        plan.dilation[1],
        plan.padding[1][0],
    )
    nan_where_padding_meets_nonfinite_weights(plan, w5, out5)
    return out5
