"""The method table: which algorithm runs a plan.

One row per method: its name, its device, ``supports(plan)`` (None when it can
do the case, else the reason it cannot) and the module whose ``run(x5, w5,
bias, plan, out5)`` does the work. ``method="auto"`` picks the first supported
row by an interim rule in :func:`select`; the cost model replaces it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass


class UnsupportedMethodError(ValueError):
    """A forced method cannot do this case (the message says what it lacks)."""


@dataclass(frozen=True)
class MethodRow:
    name: str
    op: str
    device: str
    module: str
    supports: Callable[[object], str | None]
    entry: str = "run"

    def runner(self):
        return getattr(importlib.import_module(self.module, __package__), self.entry)


def _always(plan) -> str | None:
    return None


def _gather_supports(plan) -> str | None:
    from .cpu.transpose import gather_supports

    return gather_supports(plan)


def _gemm_supports(plan) -> str | None:
    from .cpu.gemm import supports

    return supports(plan)


def _fft_supports(plan) -> str | None:
    from .cpu.fft import supports

    return supports(plan)


TABLE: tuple[MethodRow, ...] = (
    MethodRow("direct", "conv", "cpu", ".cpu.direct", _always),
    MethodRow("gemm", "conv", "cpu", ".cpu.gemm", _gemm_supports),
    MethodRow("fft", "conv", "cpu", ".cpu.fft", _fft_supports),
    MethodRow("scatter", "conv_transpose", "cpu", ".cpu.transpose", _always, "run_scatter"),
    MethodRow("gather", "conv_transpose", "cpu", ".cpu.transpose", _gather_supports, "run_gather"),
    MethodRow("gemm", "conv_transpose", "cpu", ".cpu.gemm", _gemm_supports, "run_transpose"),
    MethodRow("fft", "conv_transpose", "cpu", ".cpu.fft", _fft_supports, "run_transpose"),
)

SPECIAL_METHODS = ("auto",)


def method_names(op: str) -> tuple[str, ...]:
    return SPECIAL_METHODS + tuple(r.name for r in TABLE if r.op == op)


def check_method(op: str, method) -> str:
    """Validate a ``method=`` argument (before any work is done)."""
    names = method_names(op)
    if not isinstance(method, str):
        raise TypeError(f"method must be a str, one of {', '.join(map(repr, names))}; got {method!r}")
    if method not in names:
        raise ValueError(
            f"unknown method {method!r} for {op}; valid methods are {', '.join(map(repr, names))}"
        )
    return method


def select(op: str, plan, method: str) -> MethodRow:
    """The row that runs ``plan``; raises UnsupportedMethodError for a forced misfit."""
    rows = [r for r in TABLE if r.op == op and r.device == "cpu"]
    if method == "auto":
        want = _auto_choice(op, plan)
        # ask only the preferred row first: supports() can cost milliseconds
        # (the FFT path plans its tiles), and this runs on every call
        for row in sorted(rows, key=lambda r: r.name != want):
            if row.supports(plan) is None:
                return row
        raise UnsupportedMethodError(f"no {op} method supports this case")
    row = next(r for r in rows if r.name == method)
    why = row.supports(plan)
    if why is not None:
        raise UnsupportedMethodError(f"method={method!r} cannot do this case: {why}")
    return row


def _auto_choice(op: str, plan) -> str:
    """The interim rule of ``method="auto"`` until the cost model."""
    from . import config

    cg = plan.c_in // plan.groups
    if op == "conv":
        # measured on the bench workloads: FFT for large kernels (31x31: 15 ms
        # vs 150 direct; 1025 taps: 5 vs 9 ms); the GEMM path once a group has
        # a few input channels (1x1, 3x3, 7x7 stem, 3x3x3); direct for depthwise
        taps = plan.kernel[0] * plan.kernel[1] * plan.kernel[2]
        if taps > 125:
            return "fft"
        return "gemm" if cg >= 3 else "direct"
    # transposed: with enough input channels per group the GEMM path is fastest
    # (unet 13-15 ms vs gather 15-16, dcgan 22 vs 22-24), else the scatter kernel
    return "gemm" if cg >= config.direct_channels_last_min else "scatter"
