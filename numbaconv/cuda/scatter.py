"""Transposed convolution by atomic scatter-add on the GPU (``method="scatter"``).

A thread per input element (sample, input channel, position) adds ``x * w``
into every output it reaches with ``cuda.atomic.add`` (output position
``i * stride + k * dilation - lo``, ``shapes.scatter_tap_map``). The order of
the additions varies from run to run, so results can differ in the last bits
between runs. Atomics exist for float32/float64 only: complex inputs are
refused (``supports``). Padding modes other than zeros are the adjoint of conv
with that mode: the result goes onto an extended output and is folded back
(:func:`._common.with_fold`), as on the CPU.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ..common import fold_workspace, gpu_roofline
from ._common import blocks_1d, fill, fold_fits, scatter_maps, with_fold


@cuda.jit
def _scatter_kernel(x, w, out, fd, fh, fw, geo, groups):
    # x (N, C, D, H, W); w (C, Og, KD, KH, KW); out (N, O, OD, OH, OW), zeroed
    N, C, D, H, W = x.shape
    Og, KD, KH, KW = w.shape[1], w.shape[2], w.shape[3], w.shape[4]
    Cg = C // groups
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    total = N * C * D * H * W
    while i < total:
        iw = i % W
        r = i // W
        ih = r % H
        r //= H
        idd = r % D
        r //= D
        c = r % C
        n = r // C
        xv = x[n, c, idd, ih, iw]
        o0 = (c // Cg) * Og
        for kd in range(KD):
            q0 = fd[idd * geo[0] + kd * geo[1] + geo[2]]
            if q0 < 0:
                continue
            for kh in range(KH):
                q1 = fh[ih * geo[3] + kh * geo[4] + geo[5]]
                if q1 < 0:
                    continue
                for kw in range(KW):
                    q2 = fw[iw * geo[6] + kw * geo[7] + geo[8]]
                    if q2 < 0:
                        continue
                    for og in range(Og):
                        cuda.atomic.add(out, (n, o0 + og, q0, q1, q2), xv * w[c, og, kd, kh, kw])
        i += step


@cuda.jit
def _add_bias(out, bias):
    N, O, OD, OH, OW = out.shape
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    total = N * O * OD * OH * OW
    while i < total:
        o = (i // (OD * OH * OW)) % O
        n = i // (O * OD * OH * OW)
        r = i % (OD * OH * OW)
        out[n, o, r // (OH * OW), (r // OW) % OH, r % OW] += bias[o]
        i += step


def supports(plan) -> str | None:
    if np.dtype(plan.dtype).kind == "c":
        return "cuda.atomic.add has no complex type; use method='gather' for complex inputs"
    return fold_fits(plan)


def workspace_bytes(plan) -> int:
    return fold_workspace(plan)


def cost_features(plan) -> dict[str, float]:
    return gpu_roofline("scatter", plan)


def run(x5, w5, bias, plan, out5):
    """Transposed convolution by atomic scatter-add (device arrays, canonical 5-D)."""

    def body(x, b, target, lo, size):
        fill(target.reshape(target.size), np.dtype(plan.dtype).type(0))
        maps = scatter_maps(plan, lo, size)
        blocks, threads = blocks_1d(x.size)
        _scatter_kernel[blocks, threads](x, w5, target, *maps, plan.groups)
        blocks, threads = blocks_1d(target.size)
        _add_bias[blocks, threads](target, b)

    return with_fold(plan, x5, bias, out5, body)
