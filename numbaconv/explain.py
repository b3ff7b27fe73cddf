"""``numbaconv.explain`` and ``numbaconv.choose_method``: which method a call
would use, why, and every candidate's estimated (and, on request, measured) time."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from . import api, firstcall, lazy, separable
from .dispatch import DEVICES, Choice, UnsupportedMethodError, check_method, choose, estimate_all, rows
from .machine import block_best
from .shapes import make_plan


@dataclass
class Explanation:
    """The decision for one case (``str()`` gives a readable table).

    ``choice`` is the :class:`~numbaconv.dispatch.Choice` of ``method="auto"``;
    ``measured`` maps each supported method to its measured seconds (best of
    three calls) when ``measure=True`` was asked, else it is empty.
    """

    op: str
    plan: object
    choice: Choice
    measured: dict[str, float] = field(default_factory=dict)
    chunking: object = None  # a dask input's numbaconv.lazy.Layout
    first_call: bool = False  # a call now would be answered by NumPy while the method compiles

    def as_dict(self) -> dict:
        u = self.plan.user
        return {
            "op": self.op,
            "input_shape": list(u.input_shape),
            "weight_shape": list(u.weight_shape),
            "output_shape": list(u.output_shape),
            "dtype": str(u.dtype),
            "stride": list(u.stride),
            "padding": [list(v) for v in u.padding],
            "dilation": list(u.dilation),
            "groups": u.groups,
            "padding_mode": u.padding_mode,
            "method": self.choice.method,
            "device": self.choice.device,
            "reason": self.choice.reason,
            "estimated_s": self.choice.estimates,
            "unsupported": self.choice.unsupported,
            "over_budget_bytes": self.choice.over_budget,
            "measured_s": self.measured,
        }

    def __str__(self) -> str:
        d = self.as_dict()
        lines = [
            f"{self.op}: input {tuple(d['input_shape'])} weight {tuple(d['weight_shape'])} {d['dtype']} "
            f"-> {tuple(d['output_shape'])}",
            f"  stride {tuple(d['stride'])}, padding {tuple(map(tuple, d['padding']))}, dilation "
            f"{tuple(d['dilation'])}, groups {d['groups']}, padding_mode {d['padding_mode']!r}",
            f"decision: {self.choice.method} ({self.choice.device}): {self.choice.reason}",
        ]
        if self.first_call:
            lines.append(
                f"  (not yet run in this process: a call now is answered by NumPy while a thread prepares "
                f"{self.choice.method}'s kernels; config.compile_in_background)"
            )
        lines += [
            "",
            f"  {'method':10s} {'estimated ms':>13s} {'measured ms':>12s}",
        ]
        names = [r.name for r in rows(self.op, self.choice.device)]
        ranked = sorted(self.choice.estimates, key=self.choice.estimates.get)
        for name in ranked + [n for n in names if n not in ranked]:
            if name in self.choice.estimates:
                est = f"{self.choice.estimates[name] * 1e3:13.3f}"
                meas = f"{self.measured[name] * 1e3:12.3f}" if name in self.measured else f"{'-':>12s}"
                mark = "  <- chosen" if name == self.choice.method else ""
                if name in self.choice.over_budget:
                    mark += f"  (needs {self.choice.over_budget[name]} bytes > config.workspace_bytes)"
                lines.append(f"  {name:10s} {est} {meas}{mark}")
            else:
                lines.append(f"  {name:10s} {'unsupported':>13s}   {self.choice.unsupported[name]}")
        if self.measured and self.choice.method in self.measured:
            fastest = min(self.measured, key=self.measured.get)
            regret = self.measured[self.choice.method] / self.measured[fastest]
            lines.append(f"measured fastest: {fastest}; the decision's time / the fastest: {regret:.2f}")
        if self.chunking is not None:
            note = "  (each block's method is chosen for its own slab; the table is the whole array's)"
            lines += ["", str(self.chunking), note]
        return "\n".join(lines)


def explain(
    op: str,
    input: ArrayLike | tuple[int, ...],
    weight: ArrayLike | tuple[int, ...],
    bias: ArrayLike | tuple[int, ...] | None = None,
    *,
    method: str = "auto",
    measure: bool = False,
    device: str = "cpu",
    **params,
) -> Explanation:
    """How numbaconv would run ``op`` for these shapes, and why.

    Parameters
    ----------
    op : {'conv', 'conv_transpose'}
    input, weight : shape tuple or array_like
        Shapes (the dtype is then ``dtype=``, default float32) or arrays
        (their shapes and dtype).
    bias : shape tuple, array_like or None
    method : str, default 'auto'
        The decision to explain: 'auto' (the cost model's choice) or a method
        name (checked: UnsupportedMethodError when it cannot do the case).
    measure : bool, default False
        Also time every supported method on random arrays of these shapes
        (each compiled first, then the best of three calls after a pause).
    device : {'cpu', 'cuda'}, default 'cpu'
        Whose methods to consider (on a machine without a usable GPU every
        GPU method is listed as unsupported, with the reason).
    **params
        The op's keyword arguments: stride, padding, dilation, groups,
        padding_mode, and for conv_transpose output_padding and output_size;
        ``dtype``.

    Returns
    -------
    Explanation
        ``.choice`` (method, device, reason, estimates, unsupported) and
        ``.measured``; ``str(explanation)`` is a table, ``.as_dict()`` plain data.

    Shape
    -----
    conv: input ``(N, C_in, *spatial)`` (or unbatched), weight ``(C_out, C_in
    / groups, *kernel)``; conv_transpose: weight ``(C_in, C_out / groups,
    *kernel)``. The output shape is in the table.

    Examples
    --------
    >>> import numbaconv as nc
    >>> e = nc.explain("conv", (1, 8, 256, 256), (8, 8, 31, 31), padding=15)
    >>> e.choice.method
    'fft'
    """
    _check_device(device)
    x = None
    if lazy.is_dask(input):  # its blocks' layout beside the whole array's decision
        x, weight, bias, _, dtype = lazy.prepare(op, input, weight, bias, method, device, None, _check_device)
        input, params = tuple(x.shape), {"dtype": dtype, **params}
    plan = _plan_of(op, input, weight, bias, params)
    check_method(op, method)
    run = lazy.conv if op == "conv" else lazy.conv_transpose
    chunking = None if x is None else run(x, plan, weight, bias, method, None, explain=True)
    if method not in ("auto", "measure"):  # a forced method: its own check first
        choice = choose(op, plan, method, device)
        measured = _measure_all(op, plan, device) if measure and choice.estimates else {}
        return Explanation(op, plan, choice, measured, chunking)
    try:
        choice = choose(op, plan, "auto", device)
    except UnsupportedMethodError as exc:  # nothing can run it here: say why for each
        _, unsupported = estimate_all(op, plan, device)
        choice = Choice("none", device, str(exc), {}, unsupported)
    measured = _measure_all(op, plan, device) if measure and choice.estimates else {}
    first = device == "cpu" and method == "auto" and choice.method != "none"
    first = first and firstcall.wanted(op, plan, choice.method)
    return Explanation(op, plan, choice, measured, chunking, first)


def _check_device(device) -> None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICES))}, got {device!r}")


def _measure_all(op: str, plan, device: str = "cpu") -> dict[str, float]:
    rng = np.random.default_rng(0)
    real = np.dtype(plan.dtype).kind == "f"

    def rand(shape):
        a = rng.standard_normal(shape)
        if not real:
            a = a + 1j * rng.standard_normal(shape)
        return a.astype(plan.dtype)

    u = plan.user
    x, w = rand(u.input_shape), rand(u.weight_shape)
    if plan.separable:  # a rank-one kernel per channel, as the plan says
        w = np.ones(u.weight_shape, plan.dtype)
        for d in range(2, w.ndim):
            w = w * rand(tuple(n if e in (0, d) else 1 for e, n in enumerate(u.weight_shape)))
    b = rand(u.bias_shape) if u.has_bias else None
    fn = api.conv if op == "conv" else api.conv_transpose
    out = {}
    for r in rows(op, device):
        if r.supports(plan) is not None:
            continue
        call = lambda r=r: fn(x, w, b, method=r.name, device=device, **u.kwargs())  # noqa: E731
        with warnings.catch_warnings():  # over-budget methods are timed too (marked in the table)
            warnings.filterwarnings("ignore", r"numbaconv: method=.* needs \d+ bytes", RuntimeWarning)
            call()
            out[r.name] = block_best(call)
    return out


def choose_method(
    op: str,
    input: ArrayLike | tuple[int, ...],
    weight: ArrayLike | tuple[int, ...],
    bias: ArrayLike | tuple[int, ...] | None = None,
    *,
    method: str = "auto",
    device: str = "cpu",
    **params,
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
    plan = _plan_of(op, input, weight, bias, params)
    check_method(op, method)
    _check_device(device)
    return choose(op, plan, method, device)


def _plan_of(op, input, weight, bias, params):
    """The plan of shapes or arrays; a weight array's values decide whether
    the "separable" method can run it (:func:`numbaconv.separable.mark`)."""
    plan = make_plan(op, input, weight, bias, **params)
    if not isinstance(weight, tuple):  # values, not a shape
        plan = separable.mark(plan, weight)
    return plan
