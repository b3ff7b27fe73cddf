"""The method table and the choice of a method (what ``method="auto"`` means).

One :class:`MethodRow` per (method, op, device). A row names the module that
implements the method; that module exposes

- ``supports(plan) -> str | None``: None when it can run the case, else why not;
- ``cost_features(plan) -> dict``: its operation counts, which
  :mod:`numbaconv.costs` turns into estimated seconds with the row's constants;
- ``workspace_bytes(plan) -> int``: the extra memory a call allocates;
- its run entry point, ``run(x5, w5, bias, plan, out5)`` (or the name in
  ``MethodRow.run``, e.g. ``run_transpose`` where one module serves both ops).

The module is imported on first use (GPU rows only once CUDA is usable), and
``plan.op`` tells a module serving both ops which one is asked. Adding a
method = one module + one row here + its constants in ``costs.SHIPPED``
(``numbaconv calibrate --ship``); the tests, ``calibrate`` and ``numbaconv
bench`` take the rows from :data:`TABLE`.

Entry points: :func:`choose` (the decision with every estimate and reason,
for ``explain``, ``choose_method``, ``measure`` and the signal API) and
:func:`resolve` (the row that runs a call).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from types import ModuleType

from . import config, costs, runtime


class UnsupportedMethodError(ValueError):
    """A forced method cannot do this case (the message says what it lacks)."""


DEVICES = ("cpu", "cuda")  # the devices of the table (the API's device= also takes "auto")
OPS = ("conv", "conv_transpose")
SPECIAL_METHODS = ("auto", "measure")


_MODULES: dict = {}  # module name -> module (import_module per call cost ~10 us)


@dataclass(frozen=True)
class MethodRow:
    """One method of one op on one device (see the module doc).

    ``error`` is how the method's rounding error behaves: ``"pointwise"``
    (each output within ``c * eps * sqrt(K) * max|ref|``, as a direct sum) or
    ``"norm"`` (relative to the norms of the inputs, as FFTs are).
    ``priced_as`` names the method whose constants price this row's
    features (a method made of calls of another, e.g. separable passes of
    the direct path); empty: its own.
    """

    name: str
    op: str
    device: str
    module_name: str
    run: str = "run"
    error: str = "pointwise"
    priced_as: str = ""

    @property
    def key(self) -> str:
        """The row's name: ``"op/method"``."""
        return f"{self.op}/{self.name}"

    @property
    def price_key(self) -> str:
        """The row in the cost tables whose constants price this one."""
        return f"{self.op}/{self.priced_as or self.name}"

    @property
    def module(self) -> ModuleType:
        mod = _MODULES.get(self.module_name)
        if mod is None:
            mod = _MODULES[self.module_name] = importlib.import_module(self.module_name, __package__)
        return mod

    def supports(self, plan) -> str | None:
        """None when this method can run ``plan`` here, else the reason it cannot."""
        if self.device == "cuda":
            from .cuda import status

            usable, why = status()
            if not usable:
                return why
        return self.module.supports(plan)

    def cost_features(self, plan) -> dict[str, float]:
        return self.module.cost_features(plan)

    def workspace_bytes(self, plan) -> int:
        return self.module.workspace_bytes(plan)

    def cost(self, plan) -> float:
        """Estimated seconds of one call on ``plan`` (the cost model)."""
        return costs.estimate(self.price_key, self.cost_features(plan), self.device)

    def runner(self):
        """The entry point ``(x5, w5, bias, plan, out5) -> out5``."""
        return getattr(self.module, self.run)


TABLE: tuple[MethodRow, ...] = (
    MethodRow("direct", "conv", "cpu", ".cpu.direct"),
    MethodRow("gemm", "conv", "cpu", ".cpu.gemm"),
    MethodRow("fft", "conv", "cpu", ".cpu.fft", error="norm"),
    MethodRow("winograd", "conv", "cpu", ".cpu.winograd"),
    MethodRow("separable", "conv", "cpu", ".cpu.separable", priced_as="direct"),
    MethodRow("scatter", "conv_transpose", "cpu", ".cpu.scatter"),
    MethodRow("gather", "conv_transpose", "cpu", ".cpu.gather"),
    MethodRow("gemm", "conv_transpose", "cpu", ".cpu.gemm", "run_transpose"),
    MethodRow("fft", "conv_transpose", "cpu", ".cpu.fft", "run_transpose", "norm"),
    MethodRow("direct", "conv", "cuda", ".cuda.direct"),
    MethodRow("gemm", "conv", "cuda", ".cuda.gemm"),
    MethodRow("fft", "conv", "cuda", ".cuda.fft", error="norm"),
    MethodRow("winograd", "conv", "cuda", ".cuda.winograd"),
    MethodRow("separable", "conv", "cuda", ".cuda.separable", priced_as="direct"),
    MethodRow("scatter", "conv_transpose", "cuda", ".cuda.scatter"),
    MethodRow("gather", "conv_transpose", "cuda", ".cuda.gather"),
    MethodRow("gemm", "conv_transpose", "cuda", ".cuda.gemm", "run_transpose"),
    MethodRow("fft", "conv_transpose", "cuda", ".cuda.fft", "run_transpose", "norm"),
)


def rows(op: str, device: str = "cpu") -> list[MethodRow]:
    """The rows of ``op`` on ``device``, in table order."""
    return [r for r in TABLE if r.op == op and r.device == device]


def row(op: str, name: str, device: str = "cpu") -> MethodRow:
    """The row of method ``name`` (KeyError if there is none)."""
    for r in rows(op, device):
        if r.name == name:
            return r
    raise KeyError(f"no {op} method {name!r} on {device}")


def method_names(op: str) -> tuple[str, ...]:
    """What ``method=`` accepts for ``op``: 'auto', 'measure' and every row's name."""
    return SPECIAL_METHODS + tuple(dict.fromkeys(r.name for r in TABLE if r.op == op))


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
    maps the timed methods to their measured seconds; ``over_budget`` maps
    the supported methods that would need more than
    ``config.workspace_bytes`` to the bytes they need.
    """

    method: str
    device: str
    reason: str
    estimates: dict[str, float]
    unsupported: dict[str, str] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    over_budget: dict[str, int] = field(default_factory=dict)


def format_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def _settings_key():
    # what the kept estimates depend on besides the plan: the settings the
    # methods' geometries read (layout, vector lanes and block, budget),
    # Numba's thread count (tasks, tiles) and the constants in use
    return (
        config.workspace_bytes,
        config.direct_channels_last_min,
        config.direct_layout,
        config.simd_lanes,
        config.simd_block,
        runtime.num_threads(),
        id(costs.constants()),
    )


def workspace_need(r: MethodRow, plan) -> int:
    """``r.workspace_bytes(plan)`` under the current settings, kept (each
    call checks it against the budget: ~5 us of tile geometry a call)."""
    return _workspace_need(r, plan, _settings_key())


@functools.lru_cache(maxsize=1024)
def _workspace_need(r, plan, settings):
    return r.workspace_bytes(plan)


def estimate_all(
    op: str, plan, device: str = "cpu", candidates: tuple[str, ...] | None = None
) -> tuple[dict[str, float], dict[str, str]]:
    """(estimates of the supported methods, reasons of the unsupported ones),
    over ``candidates`` (method names) or every row of ``op`` on ``device``."""
    return _estimate_all(op, plan, device, candidates, _settings_key())[:2]


@functools.lru_cache(maxsize=1024)
def _estimate_all(op, plan, device, candidates, settings):
    estimates, unsupported, over = {}, {}, {}
    for r in rows(op, device):
        if candidates is not None and r.name not in candidates:
            continue
        why = r.supports(plan)
        if why is None:
            estimates[r.name] = r.cost(plan)
            need = r.workspace_bytes(plan)
            if need > config.workspace_bytes:
                over[r.name] = need
        else:
            unsupported[r.name] = why
    return estimates, unsupported, over


# auto takes a method that needs more than config.workspace_bytes only when
# every method within the budget is estimated at least this many times slower
OVER_BUDGET_FACTOR = 10.0


def _pick(estimates: dict, over: dict) -> str:
    best = min(estimates, key=estimates.get)
    inside = [k for k in estimates if k not in over]
    if best not in over or not inside:
        return best
    best_inside = min(inside, key=estimates.get)
    return best if estimates[best_inside] >= OVER_BUDGET_FACTOR * estimates[best] else best_inside


def _where(device: str) -> str:
    return "" if device == "cpu" else f" on {device}"


def choose(
    op: str, plan, method: str = "auto", device: str = "cpu", candidates: tuple[str, ...] | None = None
) -> Choice:
    """The :class:`Choice` for ``plan``: with ``method`` "auto" (or "measure")
    the supported candidate with the lowest estimate, else the forced method
    (UnsupportedMethodError when it cannot do the case). ``candidates``
    limits the methods considered (the signal API offers 'direct' and 'fft')."""
    estimates, unsupported, over = _estimate_all(op, plan, device, candidates, _settings_key())
    if method not in SPECIAL_METHODS:
        if method in unsupported:
            raise UnsupportedMethodError(
                f"method={method!r} cannot do this case{_where(device)}: {unsupported[method]}"
            )
        reason = f"method={method!r} was asked for"
        return Choice(method, device, reason, dict(estimates), dict(unsupported), over_budget=dict(over))
    if not estimates:
        raise UnsupportedMethodError(
            f"no {op} method supports this case: " + "; ".join(f"{k}: {v}" for k, v in unsupported.items())
        )
    best = _pick(estimates, over)
    ranked = [best] + sorted((k for k in estimates if k != best), key=estimates.get)
    if best in over:
        reason = (
            f"{best} has the lowest estimated time ({format_ms(estimates[best])}) but needs {over[best]} "
            f"bytes of working memory, more than config.workspace_bytes={config.workspace_bytes}: "
            f"every method within the budget is estimated >= {OVER_BUDGET_FACTOR:g}x slower"
        )
    elif estimates[best] > min(estimates.values()):
        fast = min(estimates, key=estimates.get)
        reason = (
            f"{best} has the lowest estimated time ({format_ms(estimates[best])}) within "
            f"config.workspace_bytes={config.workspace_bytes} ({fast}, {format_ms(estimates[fast])}, "
            f"needs {over[fast]} bytes)"
        )
    else:
        reason = f"{best} has the lowest estimated time ({format_ms(estimates[best])})"
    if len(ranked) > 1:
        nxt = ranked[1]
        reason += f"; next is {nxt} ({format_ms(estimates[nxt])}, {estimates[nxt] / estimates[best]:.1f}x)"
    if unsupported:
        reason += f"; {', '.join(unsupported)} cannot run this case"
    return Choice(best, device, reason, dict(estimates), dict(unsupported), over_budget=dict(over))


def resolve(op: str, plan, method: str, device: str = "cpu") -> MethodRow:
    """The row that runs a call: the cost model's choice for "auto", else the
    forced method after its own ``supports`` check (no estimates are made);
    UnsupportedMethodError for a forced misfit."""
    if method == "auto":
        estimates, _, over = _estimate_all(op, plan, device, None, _settings_key())
        if not estimates:  # choose says why
            return row(op, choose(op, plan, method, device).method, device)
        return row(op, _pick(estimates, over), device)  # choose's pick, without its reason text
    r = row(op, method, device)
    why = r.supports(plan)
    if why is not None:
        raise UnsupportedMethodError(f"method={method!r} cannot do this case{_where(device)}: {why}")
    return r
