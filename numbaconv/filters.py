"""The engine under the SciPy-style filter front-ends (:mod:`numbaconv.signal`'s
``convolve2d``/``correlate2d``, :mod:`numbaconv.ndimage`): an N-D correlation
of one array with one kernel, padding ``(lo, hi)`` and a boundary mode per
axis, on numbaconv's conv kernels through the dispatcher.

Modes are those of :data:`numbaconv.shapes.FILTER_MODES` plus ``"constant"``
(a fill value): the kernels fold every mode by index arithmetic, with no
padded copy. A non-zero fill value is added afterwards in closed form: the
taps of output ``o`` that fall outside the array in a constant axis sum to
``sum(w) - (I_1 (x) ... (x) I_N) . w`` where ``I_d[o, k]`` says whether
position ``o + k - lo`` lies inside axis ``d`` (1 in the folded axes), a
contraction of small per-axis matrices with the kernel.

``method="auto"`` takes the dispatcher's choice, except that a transform
method (FFT, Winograd) must be estimated :data:`TRANSFORM_GAIN` times faster
than the best method that sums products directly: SciPy's filters are direct
sums (an exact zero stays zero, every output's error is relative to its own
terms), and a transform's rounding is relative to the largest values.

Axes where the kernel has one tap and no padding are batched; more than three
axes with taps run as a sum of 3-D correlations over the leading kernel axes
(each a slab of the input folded by that axis's mode).
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import api, dispatch, firstcall, separable
from .shapes import fold_index, make_filter_plan

__all__ = ["TRANSFORM_GAIN", "correlate", "choose_method"]

_MAX_AXES = 3
TRANSFORM_GAIN = 1.5  # estimated speed-up a transform method must bring (see the module docstring)
_TRANSFORMS = ("fft", "winograd")


def choose_method(plan) -> str:
    """The method ``method="auto"`` runs for a filter ``plan`` (see the module docstring)."""
    choice = dispatch.choose("conv", plan)
    est = choice.estimates
    sums = {m: t for m, t in est.items() if m not in _TRANSFORMS}
    if choice.method in _TRANSFORMS and sums and est[choice.method] * TRANSFORM_GAIN > min(sums.values()):
        return min(sums, key=sums.get)
    return choice.method


def _fold_mode(mode: str) -> str:
    """The conv kernels' mode for a filter mode ("constant" reads zeros)."""
    return "zeros" if mode == "constant" else mode


def correlate(
    x: np.ndarray, w: np.ndarray, pads, modes, cval=0, method: str = "auto", store=None
) -> np.ndarray:
    """``out[o] = sum_k w[k] * xe[o + k - lo]`` with ``xe`` the array
    extended by each axis's mode (``cval`` in "constant" axes).

    ``x`` and ``w`` have the same number of dims and a float or complex
    dtype; ``pads`` is ``(lo, hi)`` per axis, ``modes`` a mode per axis.
    ``store``: an integer dtype the caller stores the result in (truncated
    toward zero, wrapped); the result may come in it (``api.filter_conv``).

    Shape
    -----
    ``x.shape[d] + lo_d + hi_d - w.shape[d] + 1`` per axis ``d``.
    """
    nd = x.ndim
    out_shape = tuple(x.shape[d] + pads[d][0] + pads[d][1] - w.shape[d] + 1 for d in range(nd))
    dtype = np.result_type(x, w)
    if min(out_shape, default=1) <= 0:
        return np.zeros(tuple(max(0, n) for n in out_shape), dtype)
    if x.size == 0 or w.size == 0:
        y = np.zeros(out_shape, dtype)
    else:
        fill = cval != 0 and "constant" in modes  # added to the float result below
        y = _correlate_folded(x, w, pads, [_fold_mode(m) for m in modes], method, None if fill else store)
    if cval != 0 and "constant" in modes:
        y = y + cval * _outside_sums(x.shape, w, pads, modes).astype(dtype, copy=False)
    return y


def _correlate_folded(x, w, pads, modes, method, store=None):
    """:func:`correlate` with zero for "constant": the batched axes moved
    first, the others through :func:`_correlate_axes`."""
    nd = x.ndim
    batch = [d for d in range(nd) if w.shape[d] == 1 and pads[d] == (0, 0)]
    axes = [d for d in range(nd) if d not in batch]
    if not axes:  # one tap: a product
        return x * w.reshape(())
    order = batch + axes
    xt = np.transpose(x, order)
    lead = xt.shape[: len(batch)]
    xt = xt.reshape((-1,) + xt.shape[len(batch) :])
    wt = np.transpose(w, order).reshape(tuple(w.shape[d] for d in axes))
    y = _correlate_axes(xt, wt, [pads[d] for d in axes], [modes[d] for d in axes], method, store)
    y = y.reshape(lead + y.shape[1:])
    return np.transpose(y, np.argsort(order))


def _correlate_axes(xb, w, pads, modes, method, store=None):
    """A batch ``xb`` (B, *spatial) correlated with ``w`` (*spatial); more than
    three axes: the sum over the first kernel axis of slabs of lower rank
    (in float: ``store`` is for three axes or fewer)."""
    nd = w.ndim
    if nd <= _MAX_AXES:
        x5 = xb.reshape((xb.shape[0], 1) + xb.shape[1:])
        w5 = w.reshape((1, 1) + w.shape)
        plan = None
        chosen = contextlib.nullcontext()
        if method == "auto":
            dtype = np.result_type(x5, w5)
            plan = separable.mark(
                make_filter_plan(x5.shape, w5.shape, tuple(pads), 1, tuple(modes), dtype), w5
            )
            method = choose_method(plan)
            chosen = firstcall.automatic()  # NumPy's answer while its kernels compile
        with chosen:
            y = api.filter_conv(x5, w5, tuple(pads), 1, tuple(modes), method, plan, store)
        return y.reshape((xb.shape[0],) + y.shape[2:])
    n, k = xb.shape[1], w.shape[0]
    (lo, hi), rest = pads[0], pads[1:]
    out_n = n + lo + hi - k + 1
    idx = fold_index(np.arange(out_n)[:, None] + np.arange(k)[None, :] - lo, n, modes[0])
    acc = None
    for j in range(k):
        src = idx[:, j]
        inside = src >= 0
        if not inside.any():
            continue
        slab = xb[:, np.where(inside, src, 0)]  # (B, out_n, ...)
        part = _correlate_axes(slab.reshape((-1,) + slab.shape[2:]), w[j], rest, modes[1:], method)
        part = part.reshape((xb.shape[0], out_n) + part.shape[1:])
        if not inside.all():
            part[:, ~inside] = 0
        acc = part if acc is None else acc + part
    if acc is None:
        shape = tuple(xb.shape[d + 1] + pads[d][0] + pads[d][1] - w.shape[d] + 1 for d in range(nd))
        acc = np.zeros((xb.shape[0],) + shape, np.result_type(xb, w))
    return acc


def _outside_sums(shape, w, pads, modes) -> np.ndarray:
    """Per output, the sum of the kernel taps that fall outside the array in
    a "constant" axis (those the fill value multiplies)."""
    mats = []
    for d, n in enumerate(shape):
        lo, hi = pads[d]
        out_n = n + lo + hi - w.shape[d] + 1
        if modes[d] == "constant":
            p = np.arange(out_n)[:, None] + np.arange(w.shape[d])[None, :] - lo
            mats.append(((p >= 0) & (p < n)).astype(np.float64))
        else:
            mats.append(np.ones((out_n, w.shape[d])))
    inside = w.astype(np.complex128 if w.dtype.kind == "c" else np.float64)
    for d, m in enumerate(mats):  # contract axis d of the kernel with I_d
        inside = np.moveaxis(np.tensordot(m, inside, axes=([1], [d])), 0, d)
    return w.sum(dtype=inside.dtype) - inside
