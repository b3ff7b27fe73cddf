"""Separable kernels as 1-D passes on the CPU (``method="separable"``): see
:mod:`numbaconv.separable`. Each pass runs on the direct path
(:mod:`numbaconv.cpu.direct`, the micro-kernel), its cost is the direct
path's estimate of that pass (the row is priced with direct's constants)."""

from __future__ import annotations

import numpy as np

from .. import costs, separable
from . import direct, sepfused

INTEGER_INPUTS = direct.INTEGER_INPUTS  # the first pass reads the input (direct.run)


def supports(plan) -> str | None:
    """The plan must be marked separable (:func:`numbaconv.separable.mark`)."""
    if not separable.eligible(plan):
        return "separable needs a real conv with one input and one output channel per group and taps along 2+ dims"
    if not plan.separable:
        return "the kernel is not rank one per channel (not separable)"
    return None


def cost_features(plan) -> dict[str, float]:
    """The direct path's features of every pass, summed; for the fused
    kernel (:func:`sepfused.fits`) its own counts in the direct path's
    units: its FLOPs as one-tap FLOPs (each sweep streams a row per tap past
    an accumulator row, as the one-tap blocks stream lines past theirs) and
    the image read and written as elements copied (``tile``)."""
    if sepfused.fits(plan):
        return costs.per_dtype(sepfused.cost_features(plan, direct.cost_features(plan)), plan)
    return separable.pass_features(plan, direct.cost_features)


def stores_integers(plan) -> bool:
    """Whether :func:`run` writes an integer ``out5`` itself (the fused kernel)."""
    return sepfused.fits(plan)


def workspace_bytes(plan) -> int:
    """The intermediates of the passes and the largest pass's own workspace
    (a row a task where the passes run fused)."""
    if sepfused.fits(plan):
        return 0
    passes = separable.pass_plans(plan)
    return separable.intermediate_bytes(plan) + max((direct.workspace_bytes(p) for _, p in passes), default=0)


def run(x5, w5, bias, plan, out5):
    """The passes of a separable conv on canonical 5-D host arrays (fused
    into one kernel over H and W where :func:`sepfused.fits`)."""
    if sepfused.fits(plan):
        sepfused.run(x5, separable.pass_weights(w5, plan), bias, plan, out5)
        return out5
    return separable.run_passes(x5, w5, bias, plan, out5, direct.run, np.empty)
