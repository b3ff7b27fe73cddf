"""Separable kernels as 1-D passes on the CPU (``method="separable"``): see
:mod:`numbaconv.separable`. Each pass runs on the direct path
(:mod:`numbaconv.cpu.direct`, the micro-kernel), its cost is the direct
path's estimate of that pass (the row is priced with direct's constants)."""

from __future__ import annotations

import numpy as np

from .. import separable
from . import direct


def supports(plan) -> str | None:
    """The plan must be marked separable (:func:`numbaconv.separable.mark`)."""
    if not separable.eligible(plan):
        return "separable needs a real conv with one input and one output channel per group and taps along 2+ dims"
    if not plan.separable:
        return "the kernel is not rank one per channel (not separable)"
    return None


def cost_features(plan) -> dict[str, float]:
    """The direct path's features of every pass, summed."""
    passes = separable.pass_plans(plan)
    if not passes:  # one tap (never separable): the direct path's own
        return direct.cost_features(plan)
    total: dict[str, float] = {}
    for _, p in passes:
        for k, v in direct.cost_features(p).items():
            total[k] = total.get(k, 0.0) + v
    return total


def workspace_bytes(plan) -> int:
    """The intermediates of the passes and the largest pass's own workspace."""
    passes = separable.pass_plans(plan)
    mid = sum(int(np.prod(p.output_shape5)) for _, p in passes[:-1]) * plan.dtype.itemsize
    return mid + max((direct.workspace_bytes(p) for _, p in passes), default=0)


def run(x5, w5, bias, plan, out5):
    """The passes of a separable conv on canonical 5-D host arrays."""
    return separable.run_passes(x5, w5, bias, plan, out5, direct.run, np.empty)
