"""Transposed convolution on the GPU: ``scatter`` (atomics) and ``gather``.

* **scatter**: a thread per input element (sample, input channel, position)
  adds ``x * w`` into every output it reaches with ``cuda.atomic.add``
  (output position ``i * stride + k * dilation - lo``, ``shapes.scatter_tap_map``).
  The order of the additions varies from run to run, so results can differ
  in the last bits between runs. Atomics exist for float32/float64 only:
  complex inputs are refused (``supports``).
* **gather**: a thread per output element sums the inputs that reach it (the
  gather maps of ``shapes.gather_tap_map``), with the kernel of
  :mod:`.direct`: no atomics, bitwise reproducible.

Padding modes other than zeros are the adjoint of conv with that mode: the
result goes onto an extended output and is folded back
(:func:`._common.with_fold`), as on the CPU.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from ._common import blocks_1d, fold_workspace, gather_maps, scatter_maps, with_fold
from .direct import launch_gather_conv


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


def scatter_supports(plan) -> str | None:
    if np.dtype(plan.dtype).kind == "c":
        return "cuda.atomic.add has no complex type; use method='gather' for complex inputs"
    return _fold_fits(plan)


def _fold_fits(plan) -> str | None:
    from .. import config

    if fold_workspace(plan) > config.workspace_bytes:
        return (
            f"the extended output of one sample ({fold_workspace(plan)} bytes) for padding_mode="
            f"{plan.padding_mode!r} exceeds config.workspace_bytes={config.workspace_bytes}"
        )
    return None


def gather_supports(plan) -> str | None:
    return _fold_fits(plan)


def run_scatter(x5, w5, bias, plan, out5):
    """Transposed convolution by atomic scatter-add (device arrays, canonical 5-D)."""
    from ._common import _fill

    def body(x, b, target, lo, size):
        _fill(target.reshape(target.size), np.dtype(plan.dtype).type(0))
        maps = scatter_maps(plan, lo, size)
        blocks, threads = blocks_1d(x.size)
        _scatter_kernel[blocks, threads](x, w5, target, *maps, plan.groups)
        blocks, threads = blocks_1d(target.size)
        _add_bias[blocks, threads](target, b)

    return with_fold(plan, x5, bias, out5, body)


@cuda.jit
def _to_gather_layout(w, wc, groups):
    # wc[g*Og + og, cl*taps + t] = w[g*Cg + cl, og, t]: the conv-layout weight of the gather
    C, Og = w.shape[0], w.shape[1]
    taps = w.shape[2] * w.shape[3] * w.shape[4]
    KH, KW = w.shape[3], w.shape[4]
    Cg = C // groups
    i = cuda.grid(1)
    step = cuda.gridsize(1)
    while i < wc.size:
        col = i % (Cg * taps)
        row = i // (Cg * taps)
        cl = col // taps
        t = col % taps
        g = row // Og
        og = row % Og
        wc[row, col] = w[g * Cg + cl, og, t // (KH * KW), (t // KW) % KH, t % KW]
        i += step


def run_gather(x5, w5, bias, plan, out5):
    """Transposed convolution by gathering (device arrays, canonical 5-D)."""
    cg = plan.c_in // plan.groups
    taps = plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    wc = cuda.device_array((plan.c_out, cg * taps), dtype=plan.dtype)
    blocks, threads = blocks_1d(wc.size)
    _to_gather_layout[blocks, threads](w5, wc, plan.groups)

    def body(x, b, target, lo, size):
        launch_gather_conv(x, wc, b, target, gather_maps(plan, lo, size), plan.groups, plan.kernel)

    return with_fold(plan, x5, bias, out5, body)
