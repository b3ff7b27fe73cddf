"""Separable kernels as 1-D passes on the GPU (``method="separable"``): the
GPU twin of :mod:`numbaconv.cpu.separable`, each pass on the direct kernel
(:mod:`numbaconv.cuda.direct`), intermediates on the device. The factors are
found on the host (the weight is small; a device weight is copied there)."""

from __future__ import annotations

import numpy as np
from numba import cuda

from .. import separable
from ..cpu.separable import supports  # the same condition on the plan
from . import direct

__all__ = ["cost_features", "run", "supports", "workspace_bytes"]


def cost_features(plan) -> dict[str, float]:
    """The direct kernel's features of every pass, summed."""
    return separable.pass_features(plan, direct.cost_features)


def workspace_bytes(plan) -> int:
    """The intermediates of the passes (device memory)."""
    return separable.intermediate_bytes(plan)


def run(x5, w5, bias, plan, out5):
    """The passes of a separable conv on canonical 5-D device arrays."""
    host = w5.copy_to_host() if hasattr(w5, "copy_to_host") else np.asarray(w5)

    def on_device(src, w, b, p, dst):
        return direct.run(src, cuda.to_device(w), b, p, dst)

    return separable.run_passes(x5, host, bias, plan, out5, on_device, cuda.device_array)
