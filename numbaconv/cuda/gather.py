"""Transposed convolution by gathering on the GPU (``method="gather"``).

A thread per output element sums the inputs that reach it (the gather maps of
``shapes.gather_tap_map``), with the kernel of :mod:`.direct` and the weight
re-laid to the conv layout ``(C_out, C_in/groups * taps)``: no atomics,
bitwise reproducible. Padding modes other than zeros go through the extended
output and its fold (:func:`._common.with_fold`), as on the CPU.
"""

from __future__ import annotations

from numba import cuda

from ..common import fold_workspace, gpu_roofline
from ._common import blocks_1d, fold_fits, gather_maps, with_fold
from .direct import launch_gather_conv


def supports(plan) -> str | None:
    return fold_fits(plan)


def workspace_bytes(plan) -> int:
    return (
        fold_workspace(plan)
        + plan.c_out
        * (plan.c_in // plan.groups)
        * int(plan.kernel[0] * plan.kernel[1] * plan.kernel[2])
        * plan.dtype.itemsize
    )


def cost_features(plan) -> dict[str, float]:
    return gpu_roofline("gather", plan)


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


def run(x5, w5, bias, plan, out5):
    """Transposed convolution by gathering (device arrays, canonical 5-D)."""
    cg = plan.c_in // plan.groups
    taps = plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
    wc = cuda.device_array((plan.c_out, cg * taps), dtype=plan.dtype)
    blocks, threads = blocks_1d(wc.size)
    _to_gather_layout[blocks, threads](w5, wc, plan.groups)

    def body(x, b, target, lo, size):
        launch_gather_conv(x, wc, b, target, gather_maps(plan, lo, size), plan.groups, plan.kernel)

    return with_fold(plan, x5, bias, out5, body)
