"""Transposed convolution by scatter-add on the CPU (``method="scatter"``).

Canonical 5-D form: input ``(N, C_in, D, H, W)``, weight ``(C_in,
C_out/groups, KD, KH, KW)``, output ``(N, C_out, OD, OH, OW)``.

Every input element adds ``x * w`` into the outputs it touches, output
position ``i * stride + k * dilation - lo``. Each prange task of
``_scatter_kernel`` owns one output row (sample, block of 8 output channels,
od, oh): it finds the input rows that reach it through the gather maps of D
and H, and every element of those rows scatters into the row along W, held
channels-last (the 8 channels adjacent) in a private accumulator. No two
tasks write the same element (no atomics) and the order of the additions is
fixed: results are bitwise identical from run to run. Non-zero padding modes
go through the extended output and its fold (:mod:`.fold`).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .. import costs
from ..common import fold_workspace
from ..runtime import njit
from ..shapes import gather_tap_map
from .fold import with_fold

# Kept literal here (not imported) because numba's on-disk cache keys on this
# file's contents; must equal numbaconv.config.FASTMATH (tested).
_FASTMATH = {"reassoc", "contract"}


@njit(inline="always")
def _tap(f, g, o, k):
    # entry [o, k] of a compact tap map (shapes.gather_tap_map); kept here,
    # not imported, because numba's cache keys on this file's contents
    return f[o * g[0] + k * g[1] + g[2]]


@njit(parallel=True, cache=True, fastmath=_FASTMATH)
def _scatter_kernel(x, w8, bias, out, fd, gd, fh, gh, sw, dw, lo_w):
    # One task: sample n, group g, a block of 8 output channels, one output row
    # (od, oh). The inputs reaching that row are found through the gather
    # tables gd/gh (D, H); along W every input element of those rows scatters
    # x * w into the row, held channels-last in a small accumulator acc[ow, j]
    # so the 8 channels are one vector. w8: (G, nob, Cg, KD, KH, KW, 8), zero
    # past the group's last channel.
    N, C, D, H, W = x.shape
    G, nob, Cg, KD, KH, KW = w8.shape[0], w8.shape[1], w8.shape[2], w8.shape[3], w8.shape[4], w8.shape[5]
    O = out.shape[1]
    OD, OH, OW = out.shape[2], out.shape[3], out.shape[4]
    Og = O // G
    us = np.uint64(sw)
    for t in prange(N * G * nob * OD * OH):
        oh = t % OH
        r1 = t // OH
        od = r1 % OD
        r2 = r1 // OD
        b = r2 % nob
        r3 = r2 // nob
        g = r3 % G
        n = r3 // G
        nb = min(8, Og - b * 8)
        acc = np.zeros(OW * 8, dtype=out.dtype)
        for kd in range(KD):
            idd = _tap(fd, gd, od, kd)
            if idd < 0:
                continue
            for kh in range(KH):
                ih = _tap(fh, gh, oh, kh)
                if ih < 0:
                    continue
                for cl in range(Cg):
                    c = g * Cg + cl
                    for kw in range(KW):
                        off = kw * dw - lo_w
                        # inputs whose output iw * sw + off lies in [0, OW)
                        lo = min(max(0, -(off // sw)), W)
                        hi = max(min(W, (OW - 1 - off) // sw + 1), lo)
                        v0 = w8[g, b, cl, kd, kh, kw, 0]
                        v1 = w8[g, b, cl, kd, kh, kw, 1]
                        v2 = w8[g, b, cl, kd, kh, kw, 2]
                        v3 = w8[g, b, cl, kd, kh, kw, 3]
                        v4 = w8[g, b, cl, kd, kh, kw, 4]
                        v5 = w8[g, b, cl, kd, kh, kw, 5]
                        v6 = w8[g, b, cl, kd, kh, kw, 6]
                        v7 = w8[g, b, cl, kd, kh, kw, 7]
                        ulo = np.uint64(lo)
                        up = np.uint64(8 * (lo * sw + off))
                        step = np.uint64(8) * us
                        for i in range(np.uint64(hi - lo)):
                            xv = x[n, c, idd, ih, ulo + i]
                            q = up + i * step
                            acc[q] += xv * v0
                            acc[q + 1] += xv * v1
                            acc[q + 2] += xv * v2
                            acc[q + 3] += xv * v3
                            acc[q + 4] += xv * v4
                            acc[q + 5] += xv * v5
                            acc[q + 6] += xv * v6
                            acc[q + 7] += xv * v7
        for j in range(nb):
            o = g * Og + b * 8 + j
            bv = bias[o]
            for ow in range(OW):
                out[n, o, od, oh, ow] = acc[ow * 8 + j] + bv


def supports(plan) -> str | None:
    """The scatter runs every case."""
    return None


def workspace_bytes(plan) -> int:
    """The extended buffer of the non-zero padding modes (0 for zeros)."""
    return fold_workspace(plan)


def cost_features(plan) -> dict[str, float]:
    """One call, output elements written, FLOPs (float32 units)."""
    outputs = plan.batch * plan.c_out * int(np.prod(plan.out_size))
    return costs.per_dtype({"call": 1.0, "outputs": float(outputs), "flops": float(plan.flops)}, plan)


def run(x5, w5, bias, plan, out5):
    """Transposed convolution by scatter-add (canonical 5-D arrays, see module doc)."""
    g = plan.groups
    cg = plan.c_in // g
    og = plan.c_out // g
    nob = -(-og // 8)
    kd, kh, kw = plan.kernel
    # (C_in, Og, k) -> (G, nob, Cg, k, 8), zero-padded to whole blocks of 8
    w8 = np.zeros((g, cg, nob * 8, kd, kh, kw), dtype=plan.dtype)
    w8[:, :, :og] = w5.reshape(g, cg, og, kd, kh, kw)
    w8 = np.ascontiguousarray(w8.reshape(g, cg, nob, 8, kd, kh, kw).transpose(0, 2, 1, 4, 5, 6, 3))

    def body(x, b, target, lo, size):
        (fd, gd), (fh, gh) = (
            gather_tap_map(size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo[i], plan.in_size[i])
            for i in range(2)
        )
        _scatter_kernel(x, w8, b, target, fd, gd, fh, gh, plan.stride[2], plan.dilation[2], lo[2])

    return with_fold(plan, x5, bias, out5, body)
