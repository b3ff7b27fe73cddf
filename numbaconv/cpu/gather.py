"""Transposed convolution by gathering on the CPU (``method="gather"``).

Every output element sums the inputs that reach it: the "zero-inserted input,
stride-1 conv" view done by index arithmetic (a gather map of output position
x tap -> input index or -1, ``shapes.gather_tap_map``; no zero-inserted
copy). It runs the channels-last kernel of :mod:`numbaconv.cpu.direct` with
those maps, register tiles of two output pixels one stride apart (same phase,
so the same taps are valid for both), and for one group with dilation 1 the
taps of each phase as one contiguous run (:func:`_gather_runs`). Non-zero
padding modes go through the extended output and its fold (:mod:`.fold`).
"""

from __future__ import annotations

import numpy as np

from .. import config, costs
from ..common import fold_workspace, transposed_as_conv
from ..shapes import gather_tap_maps
from . import direct
from .fold import with_fold


def supports(plan) -> str | None:
    """None when ``method="gather"`` can run the plan, else why not."""
    if not direct.channels_last_fits(plan):
        return (
            f"its channels-last copy of one input sample ({direct.sample_bytes(plan)} bytes) exceeds "
            f"config.workspace_bytes={config.workspace_bytes}"
        )
    return None


def workspace_bytes(plan) -> int:
    """The channels-last input copy and the extended buffer of the non-zero modes."""
    return direct.channels_last_workspace(plan) + fold_workspace(plan)


def cost_features(plan) -> dict[str, float]:
    """One call, outputs, FLOPs (split by whether a group has few channels:
    those run far below the peak) and channel runs (float32 units)."""
    kd, kh, _ = plan.kernel
    outputs = plan.batch * plan.c_out * int(np.prod(plan.out_size))
    thin = plan.c_in // plan.groups < config.direct_channels_last_min
    f = {
        "call": 1.0,
        "outputs": float(outputs),
        "flops": 0.0 if thin else float(plan.flops),
        "flops_thin": float(plan.flops) if thin else 0.0,
        "cl_runs": float(outputs * kd * kh),
    }
    return costs.per_dtype(f, plan)


def run(x5, w5, bias, plan, out5):
    """Transposed convolution by gathering (canonical 5-D arrays, see module doc)."""
    cg = plan.c_in // plan.groups
    kd, kh, kw = plan.kernel
    # the conv-layout weight (C_out, Cg, k), channels innermost: (C_out, KD, KH, KW * Cg)
    wc = np.ascontiguousarray(transposed_as_conv(w5, plan.groups).transpose(0, 2, 3, 4, 1))
    wc = wc.reshape(plan.c_out, kd, kh, kw * cg)

    def body(x, b, target, lo, size):
        tables = gather_tap_maps(plan, lo, size)
        runs = _gather_runs(plan, w5, lo[2], size[2])
        direct.run_channels_last(x, wc, b, target, tables, runs, plan.stride[2])

    return with_fold(plan, x5, bias, out5, body)


def _gather_runs(plan, w5, lo: int, size: int):
    """Contiguous runs for the gather (one group, dilation 1 in W).

    Output ``ow`` of phase ``r = (ow + lo) % s`` gathers taps ``kw = r, r + s,
    ...`` from inputs ``iw0, iw0 - 1, ...``: adjacent, so in the channels-last
    row they form one run of ``J * C`` elements, read against the phase's
    weight laid out in run order (taps reversed). Only phases with the full
    ``J = ceil(KW / s)`` taps and runs inside the input use it.
    """
    if plan.groups != 1 or plan.dilation[2] != 1:
        return None
    s = plan.stride[2]
    kw = plan.kernel[2]
    width = plan.in_size[2]
    c = plan.c_in
    j = -(-kw // s)
    ow = np.arange(size, dtype=np.int64)
    r = (ow + lo) % s
    taps = -(-(kw - r) // s)  # number of kw < KW with kw % s == r
    first = (ow + lo - r) // s  # input of tap r; tap r + m*s reads first - m
    last = first - (j - 1)
    rok = (taps == j) & (last >= 0) & (first < width)
    rst = np.where(rok, last * c, 0).astype(np.int64)
    # wr[r, o, kd, kh, m*C + c] = w[c, o, kd, kh, r + (J-1-m)*s] for full phases
    wconv = w5.transpose(1, 0, 2, 3, 4)  # (O, C, KD, KH, KW), one group
    o, _, kd, kh, _ = wconv.shape
    # only phases below KW have taps (a full phase needs taps == J >= 1): one
    # block per such phase, not per stride (a stride of 10**8 would be 800 MB)
    wr = np.zeros((min(s, kw), o, kd, kh, j * c), dtype=w5.dtype)
    for ph in range(min(s, kw)):
        if -(-(kw - ph) // s) != j:
            continue
        for m in range(j):
            tap = ph + (j - 1 - m) * s
            wr[ph, :, :, :, m * c : (m + 1) * c] = wconv[:, :, :, :, tap].transpose(0, 2, 3, 1)
    return wr, rok, rst, np.where(rok, r, 0)  # the phase is read only where rok
