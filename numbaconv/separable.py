"""Separable kernels: a conv with one input and one output channel per group
(depthwise, or one single-channel filter) whose every channel's kernel is
rank one, ``w[c] = u_D[c] (x) u_H[c] (x) u_W[c]``, runs as 1-D passes (W, then
H, then D), ``k_D + k_H + k_W`` taps per output instead of ``k_D k_H k_W``.

Detection (:func:`factors`) is by an outer-product test: the factors are
read off the kernel through its largest entry and their product must equal
the kernel within a few units of the dtype's rounding (:data:`TOLERANCE`
``* eps * max|w[c]|``), so the passes round as a direct sum does. A kernel
with a NaN or Inf never passes. :func:`mark` sets ``plan.separable`` so that
the dispatcher offers the "separable" method (its cost: the direct path's
estimate of each pass, :func:`pass_plans`).

Each pass is a depthwise conv along one dim with that dim's stride,
dilation, padding and padding mode; every mode extends the array one dim at
a time (index folding), so the passes equal the full filter, NaN and Inf
included: a term of the full sum is ``u_a v_b x`` and each pass reproduces
its factor's sign, zero and infinity. The bias is added by the last pass.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .common import WeightCache
from .shapes import ConvPlan

__all__ = ["TOLERANCE", "eligible", "factors", "mark", "pass_plans"]

TOLERANCE = 4.0  # units of eps * max|w[c]| the rank-one reconstruction may differ by


def eligible(plan: ConvPlan) -> bool:
    """A conv of real dtype with one input and one output channel per group
    and taps along at least two dims."""
    return (
        plan.op == "conv"
        and plan.dtype.kind == "f"
        and plan.c_in == plan.groups == plan.c_out
        and sum(k > 1 for k in plan.kernel) >= 2
    )


def factors(w5: np.ndarray, plan: ConvPlan) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """``(scale (C,), [(C, kD), (C, kH), (C, kW)])`` in float64: each
    channel's kernel ``w5[c, 0]`` is ``scale[c]`` times the outer product of
    its three factors (each 1 at the largest entry's position), or None when
    a channel is not rank one within :data:`TOLERANCE`."""
    c = plan.c_out
    eps = np.finfo(plan.dtype).eps
    with np.errstate(invalid="ignore", over="ignore"):
        if _surely_not(np.asarray(w5).reshape((c,) + plan.kernel), plan.kernel, eps):
            return None
        w = np.asarray(w5, dtype=np.float64).reshape((c,) + plan.kernel)
        if not np.isfinite(w).all():
            return None
        flat = np.abs(w).reshape(c, -1)
        top = flat.max(axis=1)
        piv = np.unravel_index(flat.argmax(axis=1), plan.kernel)
        ch = np.arange(c)
        p = w[ch, piv[0], piv[1], piv[2]]
        safe = np.where(p == 0, 1.0, p)
        out = [
            w[ch, :, piv[1], piv[2]] / safe[:, None],
            w[ch, piv[0], :, piv[2]] / safe[:, None],
            w[ch, piv[0], piv[1], :] / safe[:, None],
        ]
        rebuilt = p[:, None, None, None] * (
            out[0][:, :, None, None] * out[1][:, None, :, None] * out[2][:, None, None, :]
        )
        err = np.abs(rebuilt - w).reshape(c, -1).max(axis=1)
    if not (err <= TOLERANCE * eps * top).all():
        return None
    return p, out


def _surely_not(w: np.ndarray, kernel, eps: float) -> bool:
    """A quick refusal: the first 2x2 minor over two tap dims of some channel
    is far from zero (every minor of a rank-one kernel is zero up to
    rounding), for the random-looking kernels of most convs, a few
    microseconds where the full test takes ~100 (a depthwise layer's call)."""
    d0, d1 = [d for d in range(3) if kernel[d] > 1][:2]
    idx = [0, 0, 0]

    def at(i, j):
        idx[d0], idx[d1] = i, j
        return w[(slice(None),) + tuple(idx)]

    det = at(0, 0) * at(1, 1) - at(0, 1) * at(1, 0)
    top = np.maximum(
        np.maximum(np.abs(at(0, 0)), np.abs(at(1, 1))), np.maximum(np.abs(at(0, 1)), np.abs(at(1, 0)))
    )
    return bool((np.abs(det) > 64 * TOLERANCE * eps * top * top).any())


def mark(plan: ConvPlan, w) -> ConvPlan:
    """``plan`` with ``separable`` set when :func:`factors` finds ``w``
    (host or device array) rank one per channel."""
    if not eligible(plan) or not rank_one(plan, w):
        return plan
    return dataclasses.replace(plan, separable=True)


def rank_one(plan: ConvPlan, w) -> bool:
    """Whether ``w`` (host or device array) of an :func:`eligible` plan is
    rank one per channel (kept per weight's content)."""
    host = w.copy_to_host() if hasattr(w, "copy_to_host") else np.asarray(w)
    key = ("rank one", plan.kernel, plan.dtype.str)
    return _RANK_ONE.get(host, key, lambda: factors(host, plan) is not None)


# whether a weight is rank one per channel, kept per weight (compared by
# content): the test took 12-22 us of a small call
_RANK_ONE = WeightCache("weight_cache_bytes")


def pass_plans(plan: ConvPlan) -> list[tuple[int, ConvPlan]]:
    """``(dim, plan)`` of each 1-D pass, in the order they run (W, H, D): a
    depthwise conv along ``dim`` with its stride, dilation, padding and
    mode (the other dims as they are); dims with one tap, stride 1 and no
    padding have none. Only the last pass has the bias."""
    size = list(plan.in_size)
    dims = [d for d in (2, 1, 0) if plan.kernel[d] > 1 or plan.stride[d] > 1 or plan.padding[d] != (0, 0)]
    out = []
    for i, d in enumerate(dims):

        def pick(values, other, d=d):
            return tuple(values[e] if e == d else other for e in range(3))

        modes = pick([plan.mode(e) for e in range(3)], "zeros")
        p = dataclasses.replace(
            plan,
            in_size=tuple(size),
            kernel=pick(plan.kernel, 1),
            stride=pick(plan.stride, 1),
            dilation=pick(plan.dilation, 1),
            padding=pick(plan.padding, (0, 0)),
            padding_mode=modes[d] if len(set(modes)) == 1 else modes,
            out_size=tuple(plan.out_size[e] if e == d else size[e] for e in range(3)),
            has_bias=plan.has_bias and i == len(dims) - 1,
            separable=False,
            ndim=3,
            batched=True,
        )
        size[d] = plan.out_size[d]
        out.append((d, p))
    return out


def pass_features(plan: ConvPlan, features) -> dict[str, float]:
    """A direct path's cost ``features(plan)`` of every pass, summed (no
    pass, one tap: never separable, the plan's own)."""
    passes = pass_plans(plan)
    if not passes:
        return features(plan)
    total: dict[str, float] = {}
    for _, p in passes:
        for k, v in features(p).items():
            total[k] = total.get(k, 0.0) + v
    return total


def intermediate_bytes(plan: ConvPlan) -> int:
    """Bytes of the arrays between the passes."""
    passes = pass_plans(plan)[:-1]
    return sum(int(np.prod(p.output_shape5)) for _, p in passes) * plan.dtype.itemsize


def pass_weights(w5: np.ndarray, plan: ConvPlan) -> tuple[np.ndarray, ...]:
    """Each pass's weight ``(C, 1, 1, 1, k)`` placed on its dim, in the plan's
    dtype (read-only: kept per weight, compared by content)."""
    dims = tuple(d for d in range(3) if plan.kernel[d] > 1 or plan.stride[d] > 1 or plan.padding[d] != (0, 0))
    key = ("pass weights", plan.kernel, dims, plan.dtype.str)
    host = np.asarray(w5)
    return _PASS_WEIGHTS.get(host, key, lambda: _pass_weights(host, plan))


# the passes' weights, kept per weight: the rank-one test again, and the
# factors' arrays, were ~0.4 ms of a 2048^2 image filter's 3 ms
_PASS_WEIGHTS = WeightCache("weight_cache_bytes")


def _pass_weights(w5: np.ndarray, plan: ConvPlan) -> tuple[np.ndarray, ...]:
    found = factors(w5, plan)
    if found is None:
        raise ValueError(
            "the weight is not separable (numbaconv.separable.factors found no rank-one factors)"
        )
    scale, f = found
    passes = pass_plans(plan)
    out = []
    for i, (d, _) in enumerate(passes):
        k = f[d] * scale[:, None] if i == len(passes) - 1 else f[d]  # the scale with the last pass
        k = k.reshape((plan.c_out, 1) + tuple(plan.kernel[d] if e == d else 1 for e in range(3)))
        out.append(np.array(k, dtype=plan.dtype, order="C"))
    return tuple(out)


def run_passes(x5, w5, bias, plan: ConvPlan, out5, runner, empty):
    """The passes of ``plan`` with ``runner(x5, w5, bias, pass_plan, out5)``
    (a direct path) and intermediates from ``empty(shape, dtype)``."""
    weights = pass_weights(w5, plan)
    passes = pass_plans(plan)
    src = x5
    for i, ((_, p), w) in enumerate(zip(passes, weights)):
        last = i == len(passes) - 1
        dst = out5 if last else empty(p.output_shape5, plan.dtype)
        runner(src, w, bias if last else None, p, dst)
        src = dst
    return out5
