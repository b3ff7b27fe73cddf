"""The method table and the choice of a method (what ``method="auto"`` means).

One row per method: its name, op, device, ``supports(plan)`` (None when it
can do the case, else the reason it cannot), ``cost(plan)`` (estimated
seconds, :mod:`numbaconv.costs`) and the module function that runs it
(``run(x5, w5, bias, plan, out5)``). ``method="auto"`` takes the supported
row with the lowest estimate; ``method="measure"`` times the candidates on
the real arrays and remembers the winner (:mod:`numbaconv.autotune`).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field


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

    def cost(self, plan) -> float:
        """Estimated seconds of one call on ``plan`` (the cost model)."""
        from .costs import estimate

        return estimate(self.op, self.name, plan, self.device)


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


def _cuda_supports(module: str, fn: str = "supports"):
    def check(plan) -> str | None:
        from . import cuda as gpu

        usable, why = gpu.status()
        if not usable:
            return why
        return getattr(importlib.import_module(f".cuda.{module}", __package__), fn)(plan)

    return check


TABLE: tuple[MethodRow, ...] = (
    MethodRow("direct", "conv", "cpu", ".cpu.direct", _always),
    MethodRow("gemm", "conv", "cpu", ".cpu.gemm", _gemm_supports),
    MethodRow("fft", "conv", "cpu", ".cpu.fft", _fft_supports),
    MethodRow("scatter", "conv_transpose", "cpu", ".cpu.transpose", _always, "run_scatter"),
    MethodRow("gather", "conv_transpose", "cpu", ".cpu.transpose", _gather_supports, "run_gather"),
    MethodRow("gemm", "conv_transpose", "cpu", ".cpu.gemm", _gemm_supports, "run_transpose"),
    MethodRow("fft", "conv_transpose", "cpu", ".cpu.fft", _fft_supports, "run_transpose"),
    MethodRow("direct", "conv", "cuda", ".cuda.direct", _cuda_supports("direct")),
    MethodRow("gemm", "conv", "cuda", ".cuda.gemm", _cuda_supports("gemm")),
    MethodRow("fft", "conv", "cuda", ".cuda.fft", _cuda_supports("fft")),
    MethodRow(
        "scatter",
        "conv_transpose",
        "cuda",
        ".cuda.transpose",
        _cuda_supports("transpose", "scatter_supports"),
        "run_scatter",
    ),
    MethodRow(
        "gather",
        "conv_transpose",
        "cuda",
        ".cuda.transpose",
        _cuda_supports("transpose", "gather_supports"),
        "run_gather",
    ),
    MethodRow("gemm", "conv_transpose", "cuda", ".cuda.gemm", _cuda_supports("gemm"), "run_transpose"),
    MethodRow("fft", "conv_transpose", "cuda", ".cuda.fft", _cuda_supports("fft"), "run_transpose"),
)
DEVICES = ("cpu", "cuda")

SPECIAL_METHODS = ("auto", "measure")
OPS = ("conv", "conv_transpose")


def method_names(op: str) -> tuple[str, ...]:
    return SPECIAL_METHODS + tuple(dict.fromkeys(r.name for r in TABLE if r.op == op))


def rows_for(op: str, device: str = "cpu") -> list[MethodRow]:
    return [r for r in TABLE if r.op == op and r.device == device]


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


@dataclass(frozen=True)
class Choice:
    """The method a call uses and why.

    ``estimates`` maps every supported method to its estimated seconds;
    ``unsupported`` maps the others to the reason they cannot run the case;
    ``measured`` (``method="measure"`` and ``explain(measure=True)`` only)
    maps the timed methods to their measured seconds.
    """

    method: str
    device: str
    reason: str
    estimates: dict[str, float]
    unsupported: dict[str, str] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _settings_key():
    from . import config, costs

    return (config.workspace_bytes, config.direct_channels_last_min, id(costs.constants()))


def estimate_all(op: str, plan, device: str = "cpu") -> tuple[dict[str, float], dict[str, str]]:
    """(estimates of the supported methods, reasons of the unsupported ones)."""
    return _estimate_all(op, plan, device, _settings_key())


@functools.lru_cache(maxsize=1024)
def _estimate_all(op, plan, device, settings):
    estimates, unsupported = {}, {}
    for row in rows_for(op, device):
        why = row.supports(plan)
        if why is None:
            estimates[row.name] = row.cost(plan)
        else:
            unsupported[row.name] = why
    return estimates, unsupported


def choose(op: str, plan, method: str = "auto", device: str = "cpu") -> Choice:
    """The :class:`Choice` for ``plan`` with ``method`` "auto" or a method name
    (a forced method that cannot do the case raises UnsupportedMethodError)."""
    estimates, unsupported = estimate_all(op, plan, device)
    if method in ("auto", "measure"):
        if not estimates:
            raise UnsupportedMethodError(
                f"no {op} method supports this case: "
                + "; ".join(f"{k}: {v}" for k, v in unsupported.items())
            )
        ranked = sorted(estimates, key=estimates.get)
        best = ranked[0]
        reason = f"{best} has the lowest estimated time ({_ms(estimates[best])})"
        if len(ranked) > 1:
            nxt = ranked[1]
            reason += f"; next is {nxt} ({_ms(estimates[nxt])}, {estimates[nxt] / estimates[best]:.1f}x)"
        if unsupported:
            reason += f"; {', '.join(unsupported)} cannot run this case"
        return Choice(best, device, reason, dict(estimates), dict(unsupported))
    if method in unsupported:
        raise UnsupportedMethodError(
            f"method={method!r} cannot do this case on {device}: {unsupported[method]}"
            if device != "cpu"
            else f"method={method!r} cannot do this case: {unsupported[method]}"
        )
    return Choice(method, device, f"method={method!r} was asked for", dict(estimates), dict(unsupported))


def row(op: str, name: str, device: str = "cpu") -> MethodRow:
    return next(r for r in rows_for(op, device) if r.name == name)


def select(op: str, plan, method: str, device: str = "cpu") -> MethodRow:
    """The row that runs ``plan`` ("auto" or a method name); raises
    UnsupportedMethodError for a forced misfit."""
    if method == "auto":
        return row(op, choose(op, plan, method, device).method, device)
    r = row(op, method, device)
    why = r.supports(plan)  # a forced method: only its own check, no estimates
    if why is not None:
        where = "" if device == "cpu" else f" on {device}"
        raise UnsupportedMethodError(f"method={method!r} cannot do this case{where}: {why}")
    return r


def choose_method(
    op: str, input, weight, bias=None, *, method: str = "auto", device: str = "cpu", **params
) -> Choice:
    """The method numbaconv would use for ``op`` on these arrays, and why.

    Parameters
    ----------
    op : {'conv', 'conv_transpose'}
    input, weight : array_like or shape tuple
        Arrays (only their shapes and dtypes are used) or shapes (float32 is
        then assumed unless ``dtype=`` is given).
    bias : array_like, shape tuple or None
    method : str, default 'auto'
        'auto' (the cost model), 'measure' (the cost model's view of which
        candidates would be timed; see :func:`numbaconv.explain` with
        ``measure=True`` to time them) or a method name (checked).
    device : {'cpu', 'cuda'}, default 'cpu'
        Whose method table to consult (the GPU rows say why they cannot run
        where CUDA is not usable).
    **params
        The op's keyword arguments (stride, padding, dilation, groups,
        padding_mode, output_padding, output_size) and ``dtype``.

    Returns
    -------
    Choice
        ``.method``, ``.device``, ``.reason`` (one sentence), ``.estimates``
        (seconds per supported method), ``.unsupported`` (reasons).

    Shape
    -----
    As the op: ``input`` ``(N, C_in, *spatial)`` or unbatched; ``weight``
    ``(C_out, C_in / groups, *kernel)`` for conv, ``(C_in, C_out / groups,
    *kernel)`` for conv_transpose.
    """
    plan = make_plan(op, input, weight, bias, **params)
    check_method(op, method)
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")
    return choose(op, plan, method, device)


def make_plan(op: str, input, weight, bias=None, *, dtype=None, **params):
    """The ConvPlan of ``op`` for arrays or shapes (see :func:`choose_method`)."""
    import numpy as np

    from .shapes import make_conv_plan, make_conv_transpose_plan, result_dtype

    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(map(repr, OPS))}, got {op!r}")

    def shape_dtype(value):
        if value is None:
            return None, None
        if isinstance(value, tuple | list) and all(isinstance(v, int | np.integer) for v in value):
            return tuple(int(v) for v in value), None
        arr = value if hasattr(value, "shape") and hasattr(value, "dtype") else np.asarray(value)
        return tuple(arr.shape), np.dtype(arr.dtype)

    xs, xd = shape_dtype(input)
    ws, wd = shape_dtype(weight)
    bs, bd = shape_dtype(bias)
    if dtype is None:
        found = [d for d in (xd, wd, bd) if d is not None]
        dtype = result_dtype(*found) if found else np.dtype(np.float32)
    make = make_conv_plan if op == "conv" else make_conv_transpose_plan
    return make(xs, ws, bs, dtype=np.dtype(dtype), **params)
