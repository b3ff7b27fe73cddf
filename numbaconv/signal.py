"""SciPy-compatible convolution: ``convolve``, ``correlate``, ``fftconvolve``,
``oaconvolve`` and ``choose_conv_method`` with ``scipy.signal``'s parameters,
modes, output dtypes and errors, on numbaconv's kernels (multi-threaded).

Beyond SciPy: ``axes=`` for every function and method (SciPy has it for the
FFT functions only), and the axes not convolved are batched: each of them must
have equal sizes in both inputs or size 1 in one of them (broadcast), as in
``scipy.signal.fftconvolve``.

Limits: at most three axes are convolved per call (pass ``axes=`` for
higher-dimensional arrays; the other axes are batched). Integer inputs are
computed exactly (in float64 while every partial sum stays below 2**53, which
the code checks, else by SciPy's own integer path) and wrap around in the
input dtype as SciPy's direct method does; they never go through the FFT in
``convolve``/``correlate``.
"""

from __future__ import annotations

import contextlib
import operator
import time
import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import api, dispatch, filters, firstcall, lazy, separable
from .shapes import make_conv_plan

__all__ = [
    "choose_conv_method",
    "convolve",
    "convolve2d",
    "correlate",
    "correlate2d",
    "fftconvolve",
    "oaconvolve",
]

_MODES = ("full", "valid", "same")
_METHODS = ("auto", "direct", "fft")
CONV_METHODS = ("direct", "fft")  # the conv methods that method= names (as SciPy's)
_EXACT = 2**53


def _check_mode(mode) -> None:
    if mode not in _MODES:
        raise ValueError(f"Acceptable mode flags are 'valid', 'same', or 'full', not mode={mode}")


def _check_method(method) -> None:
    if method not in _METHODS:
        raise ValueError("Acceptable method flags are 'auto', 'direct', or 'fft'.")


def _as_arrays(in1, in2):
    a = np.asarray(in1)
    b = np.asarray(in2)
    if a.ndim != b.ndim:
        raise ValueError("volume and kernel should have the same dimensionality")
    for arr in (a, b):
        # as SciPy: bool works in 1-D (np.convolve), not in N-D
        if arr.dtype.kind not in "iufc" and not (arr.dtype.kind == "b" and arr.ndim <= 1):
            raise ValueError("Unsupported type")
    return a, b


def _norm_axes(axes, ndim):
    if axes is None:
        axes = list(range(ndim))
    elif np.isscalar(axes):
        axes = [axes]
    try:
        axes = [operator.index(ax) for ax in axes]
    except TypeError:
        raise ValueError("axes must be a scalar or iterable of integers") from None
    for ax in axes:
        if ax < -ndim or ax >= ndim:
            raise ValueError("axes exceeds dimensionality of input")
    axes = [ax % ndim for ax in axes]
    if len(set(axes)) != len(axes):
        raise ValueError("all axes must be unique")
    return sorted(axes)


def _pads(n: int, k: int, mode: str) -> tuple[int, int]:
    """(lo, hi) padding of the correlation with the flipped kernel giving SciPy's mode."""
    if mode == "full":
        return k - 1, k - 1
    if mode == "same":
        return k // 2, (k - 1) // 2
    return 0, 0


def _swap_needed(mode, s1, s2, axes) -> bool:
    """SciPy swaps the inputs for 'valid' when the second is the larger one."""
    if mode != "valid":
        return False
    ok1 = all(s1[i] >= s2[i] for i in axes)
    ok2 = all(s2[i] >= s1[i] for i in axes)
    if not (ok1 or ok2):
        raise ValueError("For 'valid' mode, one must be at least as large as the other in every dimension")
    return not ok1


def _layout(a_shape, b_shape, mode, axes):
    """How SciPy's problem maps onto numbaconv's conv: ``(swap, batch_axes,
    batch shape, kernel_batched, spatial output, (lo, hi) pads)``; the 5-D
    shapes follow (see :func:`_conv_shapes`)."""
    swap = _swap_needed(mode, a_shape, b_shape, axes)
    if swap:
        a_shape, b_shape = b_shape, a_shape
    if len(axes) > 3:
        raise ValueError(
            f"numbaconv.signal convolves over at most 3 axes, got {len(axes)}; pass axes= "
            "(the other axes are batched)"
        )
    batch_axes = [i for i in range(len(a_shape)) if i not in axes]
    bshape = []
    for i in batch_axes:
        if a_shape[i] != b_shape[i] and 1 not in (a_shape[i], b_shape[i]):
            raise ValueError(f"incompatible shapes for in1 and in2: {tuple(a_shape)} and {tuple(b_shape)}")
        bshape.append(max(a_shape[i], b_shape[i]))
    pads = [_pads(a_shape[i], b_shape[i], mode) for i in axes]
    out_sp = [a_shape[i] + lo + hi - b_shape[i] + 1 for i, (lo, hi) in zip(axes, pads)]
    kernel_batched = any(b_shape[i] != 1 for i in batch_axes)
    return swap, batch_axes, bshape, kernel_batched, out_sp, pads


def _conv_shapes(a_shape, b_shape, axes, bshape, kernel_batched):
    """(input, weight, groups) of the conv: a kernel per batch element is a
    depthwise conv (groups = batch), one kernel for all a plain one."""
    nb = int(np.prod(bshape)) if bshape else 1
    sp_a = tuple(a_shape[i] for i in axes)
    sp_b = tuple(b_shape[i] for i in axes)
    if kernel_batched:
        return (1, nb) + sp_a, (nb, 1) + sp_b, nb
    return (nb, 1) + sp_a, (1, 1) + sp_b, 1


def _convolve_core(a, b, mode, axes, method, flip_conj=False):
    """SciPy's convolve (or correlate with ``flip_conj``) over ``axes`` with numbaconv kernels.

    Returns the result in the compute dtype (float/complex); the caller casts.
    """
    ndim = a.ndim
    if flip_conj:
        b = np.conj(b[tuple(slice(None, None, -1) if i in axes else slice(None) for i in range(ndim))])
    swap, batch_axes, bshape, kernel_batched, out_sp, pads = _layout(a.shape, b.shape, mode, axes)
    if swap:
        a, b = b, a
    order = batch_axes + axes
    a_t = np.transpose(a, order)
    b_t = np.transpose(b, order)
    xs, ws, groups = _conv_shapes(a.shape, b.shape, axes, bshape, kernel_batched)
    sp_a = a_t.shape[len(batch_axes) :]
    sp_b = b_t.shape[len(batch_axes) :]
    # flip the kernel: numbaconv's conv is a correlation
    b_t = b_t[(Ellipsis,) + (slice(None, None, -1),) * len(axes)]
    a5 = _batched(a_t, tuple(bshape) + sp_a).reshape(xs)
    b5 = (_batched(b_t, tuple(bshape) + sp_b) if kernel_batched else b_t).reshape(ws)
    nb = xs[0] * xs[1]
    if min(a5.size, b5.size) == 0:
        y = np.zeros((nb,) + tuple(out_sp), dtype=np.result_type(a5, b5))
    else:
        y = api.conv(a5, b5, None, 1, tuple(pads), 1, groups, method=method)
    y = y.reshape(tuple(bshape) + tuple(out_sp))
    return np.transpose(y, np.argsort(order))


def _batched(a: np.ndarray, shape: tuple) -> np.ndarray:
    """``a`` broadcast to ``shape``, or ``a`` itself where it has that shape: a
    broadcast view is read-only, and the conv API copies read-only inputs (a
    2048 x 2048 float64 filter spent as long in that copy as in its kernel)."""
    return a if a.shape == shape else np.broadcast_to(a, shape)


def _compute_dtype(dt):
    if dt.kind in "iub":
        return np.dtype(np.float64)
    if dt == np.float16:
        return np.dtype(np.float32)
    return dt


def _fft_dtype(a, b):
    """The dtype SciPy's FFT functions compute in: integer inputs in float64,
    float16 in float32, the others as they are, promoted together."""

    def one(dt):
        return np.dtype(np.float64) if dt.kind in "iub" else _compute_dtype(dt)

    return np.result_type(one(a.dtype), one(b.dtype))


def _warn_nonfinite(y) -> None:
    """SciPy's RuntimeWarning when method='fft' gives NaN or Inf (checked on
    the first output value, as SciPy does)."""
    if y.size and not np.isfinite(y.reshape(-1)[0]):
        warnings.warn(
            "Use of fft convolution on input with NAN or inf results in NAN or inf output. "
            "Consider using method='direct' instead.",
            category=RuntimeWarning,
            stacklevel=4,
        )


def _int_exact(a, b, axes) -> bool:
    """Whether float64 sums of these integer products stay exact (< 2**53)."""
    amax = float(np.max(np.abs(a.astype(np.float64)))) if a.size else 0.0
    bsum = float(np.sum(np.abs(b.astype(np.float64)), axis=tuple(axes)).max()) if b.size else 0.0
    asum = float(np.sum(np.abs(a.astype(np.float64)), axis=tuple(axes)).max()) if a.size else 0.0
    bmax = float(np.max(np.abs(b.astype(np.float64)))) if b.size else 0.0
    return min(amax * bsum, asum * bmax) < _EXACT


def _finish(y, result_type):
    if result_type.kind == "b":
        return y != 0
    if result_type.kind in "iu":
        return np.rint(y).astype(np.int64).astype(result_type)
    return y.astype(result_type, copy=False)


def _direct_or_fft(a, b, mode, axes, method, flip_conj):
    result_type = np.result_type(a, b)
    if a.ndim == 0:
        return (a * (np.conj(b) if flip_conj else b)).astype(result_type)
    if result_type.kind in "iub":
        if not _int_exact(a, b, axes):  # SciPy's exact integer path
            import scipy.signal as ss  # here only: importing it takes ~0.7 s

            fn = ss.correlate if flip_conj else ss.convolve
            return fn(a, b, mode=mode, method="direct")
        method = "direct"
    inner = _choose(a, b, mode, axes) if method == "auto" else method
    cdt = _fft_dtype(a, b) if inner == "fft" else _compute_dtype(result_type)
    with firstcall.automatic() if method == "auto" else contextlib.nullcontext():
        y = _convolve_core(a.astype(cdt, copy=False), b.astype(cdt, copy=False), mode, axes, inner, flip_conj)
    if inner == "fft":
        _warn_nonfinite(y)
    return _finish(y, result_type)


def _choose(a, b, mode, axes) -> str:
    """'fft' or 'direct' (or 'separable', the direct sum of a rank-one kernel
    as 1-D passes): the dispatcher's choice among them for the conv this
    problem becomes; integer inputs take the exact direct path."""
    result_type = np.result_type(a, b)
    if result_type.kind in "iub":
        return "direct"
    swap, batch_axes, bshape, kernel_batched, _, pads = _layout(a.shape, b.shape, mode, axes)
    if swap:
        a, b = b, a
    xs, ws, groups = _conv_shapes(a.shape, b.shape, axes, bshape, kernel_batched)
    plan = make_conv_plan(xs, ws, None, 1, tuple(pads), 1, groups, dtype=_compute_dtype(result_type))
    if not kernel_batched and np.issubdtype(b.dtype, np.floating):  # one real kernel: maybe separable
        plan = separable.mark(plan, np.transpose(b, batch_axes + list(axes)).reshape(ws))
    return dispatch.choose("conv", plan, candidates=CONV_METHODS + ("separable",)).method


def _lazy(func, in1, in2, kwargs, conv_axes, pads_of, fold="zeros", fill=0, dtype=None):
    """A dask ``in1`` (``in2`` in memory): :func:`numbaconv.lazy.signal_filter`
    with the padding ``pads_of(n, k)`` on the convolved axes."""
    b = lazy.host(in2)
    if in1.ndim != b.ndim:
        raise ValueError("in1 and in2 should have the same dimensionality")
    if in1.size == 0 or b.size == 0:
        raise ValueError("in1 and in2 must not be empty")
    mode = kwargs.get("mode", "full")
    pads = []
    for i, (n, k) in enumerate(zip(in1.shape, b.shape)):
        if i not in conv_axes and k != 1:
            raise ValueError(
                f"for a dask in1, in2 must have size 1 along the axes not convolved (axis {i} has {k})"
            )
        if (mode == "valid" and k > n) or (n == 1 and k > 1):
            raise ValueError(
                "for a dask in1, in1 must be at least as large as in2 along every axis "
                f"({in1.shape} vs {b.shape})"
            )
        pads.append(pads_of(n, k) if i in conv_axes else (0, 0))
    return lazy.signal_filter(func, in1, b, kwargs, pads, fold, fill, dtype)


def _entry(in1, in2, mode, method, axes, flip_conj):
    if lazy.is_dask(in1):
        _check_mode(mode)
        _check_method(method)
        func = correlate if flip_conj else convolve
        ax = _norm_axes(axes, in1.ndim)
        kwargs = dict(mode=mode, method=method, axes=axes)
        return _lazy(func, in1, in2, kwargs, ax, lambda n, k: _pads(n, k, mode))
    a, b = _as_arrays(in1, in2)
    _check_mode(mode)
    _check_method(method)
    ax = _norm_axes(axes, a.ndim)
    if a.size == 0 or b.size == 0:
        raise ValueError("in1 and in2 must not be empty")
    return _direct_or_fft(a, b, mode, ax, method, flip_conj)


def convolve(
    in1: ArrayLike,
    in2: ArrayLike,
    mode: str = "full",
    method: str = "auto",
    axes: int | Sequence[int] | None = None,
) -> np.ndarray:
    """Convolve two N-dimensional arrays, as ``scipy.signal.convolve``.

    Parameters
    ----------
    in1, in2 : array_like
        Same number of dimensions. Integer inputs give exact integer results
        (wrapping in their dtype, as SciPy's direct method does).
    mode : {'full', 'valid', 'same'}
        'full': every overlap; 'valid': no zero padding (one input must be at
        least as large as the other in every convolved axis; the inputs are
        swapped when the second is the larger); 'same': the size of ``in1``,
        centered on the 'full' output.
    method : {'auto', 'direct', 'fft'}
        'auto' follows :func:`choose_conv_method`.
    axes : int or sequence of ints, optional
        The axes to convolve (default all, at most 3); the other axes are
        batched (equal sizes, or size 1 in one input).

    Returns
    -------
    ndarray
        ``np.result_type(in1, in2)``.

    Shape
    -----
    Per convolved axis with sizes ``n`` and ``k``: 'full' ``n + k - 1``,
    'same' ``n``, 'valid' ``max(n, k) - min(n, k) + 1``; batched axes broadcast.
    """
    return _entry(in1, in2, mode, method, axes, False)


def correlate(
    in1: ArrayLike,
    in2: ArrayLike,
    mode: str = "full",
    method: str = "auto",
    axes: int | Sequence[int] | None = None,
) -> np.ndarray:
    """Cross-correlate two N-dimensional arrays, as ``scipy.signal.correlate``:
    ``z[k] = sum_l in1[l] * conj(in2[l - k + N - 1])``.

    Parameters, modes, dtypes and errors as :func:`convolve`.

    Shape
    -----
    As :func:`convolve`.
    """
    return _entry(in1, in2, mode, method, axes, True)


_BOUNDARIES = {
    "fill": "constant",
    "pad": "constant",
    "wrap": "circular",
    "circular": "circular",
    "symm": "symmetric",
    "symmetric": "symmetric",
}


def _fill_value(fillvalue, dtype):
    """``fillvalue`` in the output dtype, as SciPy's convolve2d converts it
    (a safe cast of arrays, any cast of scalars; else through complex, which
    SciPy then refuses)."""
    try:
        fill = (
            np.asarray(fillvalue).astype(dtype, casting="safe")
            if isinstance(fillvalue, np.ndarray)
            else np.array(fillvalue, dtype=dtype)
        )
    except (TypeError, ValueError, OverflowError):
        c = np.array(fillvalue, dtype=np.complex128)  # raises as SciPy's complex path does
        if dtype.kind != "c" and np.any(c.imag != 0):
            warnings.warn(
                "Casting complex values to real discards the imaginary part",
                np.exceptions.ComplexWarning,
                stacklevel=4,
            )
        raise ValueError(
            "could not cast `fillvalue` directly to the output type (it was first converted to complex)."
        ) from None
    if fill.size != 1:
        if fill.size == 0:
            raise ValueError("`fillvalue` cannot be an empty array.")
        raise ValueError("`fillvalue` must be scalar or an array with one element.")
    return fill.reshape(()).item()


def _filter2d(in1, in2, mode, boundary, fillvalue, name, flip):
    if lazy.is_dask(in1):
        return _lazy2d(in1, in2, mode, boundary, fillvalue, name, flip)
    a = np.asarray(in1)
    b = np.asarray(in2)
    if not a.ndim == b.ndim == 2:
        raise ValueError(f"{name} inputs must both be 2-D arrays")
    swap = _swap_needed(mode, a.shape, b.shape, (0, 1))
    if swap:
        a, b = b, a
    if mode not in _MODES:
        raise ValueError("Acceptable mode flags are 'valid', 'same', or 'full'.")
    if boundary == "reflect":
        raise ValueError("Incorrect boundary value.")
    if boundary not in _BOUNDARIES:
        raise ValueError(
            "Acceptable boundary flags are 'fill', 'circular' (or 'wrap'), and 'symmetric' (or 'symm')."
        )
    rt = np.result_type(a, b)
    if rt.kind not in "iufc" or rt == np.float16:
        if rt.kind == "O":  # SciPy's object loop
            import scipy.signal as ss

            return getattr(ss, name)(in1, in2, mode=mode, boundary=boundary, fillvalue=fillvalue)
        raise ValueError("convolve2d not available for this type.")  # SciPy names its C loop
    bmode = _BOUNDARIES[boundary]
    fill = _fill_value(fillvalue, rt) if bmode == "constant" else 0
    if rt.kind in "iu" and not _int_exact2d(a, b, fill):
        import scipy.signal as ss  # SciPy's exact integer loop

        return getattr(ss, name)(in1, in2, mode=mode, boundary=boundary, fillvalue=fillvalue)
    cdt = _compute_dtype(rt)
    w = b[::-1, ::-1] if flip else np.conj(b)
    pads = [_pads2d(a.shape[i], b.shape[i], mode, flip) for i in range(2)]
    y = filters.correlate(a.astype(cdt, copy=False), w.astype(cdt, copy=False), pads, (bmode,) * 2, fill)
    if swap and not flip:
        y = y[::-1, ::-1]
    return _finish(y, rt)


def _lazy2d(in1, in2, mode, boundary, fillvalue, name, flip):
    """convolve2d / correlate2d of a dask ``in1``: the boundary read through
    the index maps (the fill value in the result dtype)."""
    b = lazy.host(in2)
    if not in1.ndim == b.ndim == 2:
        raise ValueError(f"{name} inputs must both be 2-D arrays")
    func = convolve2d if flip else correlate2d
    kwargs = dict(mode=mode, boundary=boundary, fillvalue=fillvalue)
    func(np.zeros(b.shape, in1.dtype), b, **kwargs)  # SciPy's argument errors, before any task
    rt = np.result_type(in1.dtype, b.dtype)
    bmode = _BOUNDARIES[boundary]
    fold = "zeros" if bmode == "constant" else bmode
    fill = _fill_value(fillvalue, rt) if bmode == "constant" else 0
    return _lazy(func, in1, b, kwargs, (0, 1), lambda n, k: _pads2d(n, k, mode, flip), fold, fill, rt)


def _pads2d(n: int, k: int, mode: str, flip: bool) -> tuple[int, int]:
    """(lo, hi) of convolve2d (``flip``) or correlate2d: 'same' takes the
    'full' output from ``(k - 1) // 2`` (convolve2d) or ``k // 2`` (correlate2d)."""
    if mode == "same":
        return (k // 2, (k - 1) // 2) if flip else ((k - 1) // 2, k // 2)
    return _pads(n, k, mode)


def _int_exact2d(a, b, fill) -> bool:
    """Whether float64 sums of the integer products (fill value included) stay exact."""
    amax = max(float(np.max(np.abs(a.astype(np.float64)))) if a.size else 0.0, abs(float(fill)))
    bsum = float(np.sum(np.abs(b.astype(np.float64))))
    return amax * bsum < _EXACT


def convolve2d(
    in1: ArrayLike, in2: ArrayLike, mode: str = "full", boundary: str = "fill", fillvalue=0
) -> np.ndarray:
    """Convolve two 2-D arrays, as ``scipy.signal.convolve2d``.

    Parameters
    ----------
    in1, in2 : array_like
        2-D arrays. Integer inputs give exact integer results that wrap in
        their dtype, as SciPy's; bool and float16 are refused, as SciPy does.
    mode : {'full', 'valid', 'same'}
        As :func:`convolve` ('same' centred as SciPy's convolve2d; 'valid'
        swaps the inputs when ``in2`` is the larger one).
    boundary : {'fill', 'wrap', 'symm'}
        'fill' pads with ``fillvalue``; 'wrap' ('circular') extends the array
        periodically; 'symm' ('symmetric') reflects it with the edge repeated.
        Any kernel size: the array is extended as often as it takes.
    fillvalue : scalar
        The padding value of ``boundary='fill'`` (a one-element array, cast to
        the output dtype as SciPy casts it).

    Returns
    -------
    ndarray
        ``np.result_type(in1, in2)``.

    Shape
    -----
    Per axis with sizes ``n`` and ``k``: 'full' ``n + k - 1``, 'same' ``n``,
    'valid' ``max(n, k) - min(n, k) + 1``.
    """
    return _filter2d(in1, in2, mode, boundary, fillvalue, "convolve2d", True)


def correlate2d(
    in1: ArrayLike, in2: ArrayLike, mode: str = "full", boundary: str = "fill", fillvalue=0
) -> np.ndarray:
    """Cross-correlate two 2-D arrays, as ``scipy.signal.correlate2d``
    (``in2`` conjugated, not flipped).

    Parameters, boundaries, dtypes and errors as :func:`convolve2d`; 'same'
    is centred as SciPy's correlate2d, and 'valid' with the inputs swapped
    returns the result reversed, as SciPy's does.

    Shape
    -----
    As :func:`convolve2d`.
    """
    return _filter2d(in1, in2, mode, boundary, fillvalue, "correlate2d", False)


def _fft_family(in1, in2, mode, axes, func=None):
    if lazy.is_dask(in1):
        if mode not in _MODES:
            raise ValueError("acceptable mode flags are 'valid', 'same', or 'full'")
        b = lazy.host(in2)
        ax = [i for i in _norm_axes(axes, in1.ndim) if b.shape[i] != 1]
        kwargs = dict(mode=mode, axes=axes)
        return _lazy(func, in1, b, kwargs, ax, lambda n, k: _pads(n, k, mode))
    a, b = np.asarray(in1), np.asarray(in2)
    if a.ndim == b.ndim == 0:
        return a * b
    if a.ndim != b.ndim:
        raise ValueError("in1 and in2 should have the same dimensionality")
    a, b = _as_arrays(a, b)
    if a.size == 0 or b.size == 0:
        return np.array([])
    ax = _norm_axes(axes, a.ndim)
    if axes is not None and not ax:
        raise ValueError("when provided, axes cannot be empty")
    # as SciPy: axes of length 1 in either input broadcast (no convolution)
    ax = [i for i in ax if a.shape[i] != 1 and b.shape[i] != 1]
    if mode not in _MODES:
        raise ValueError("acceptable mode flags are 'valid', 'same', or 'full'")
    if ax:
        cdt = _fft_dtype(a, b)
        y = _convolve_core(a.astype(cdt, copy=False), b.astype(cdt, copy=False), mode, ax, "fft")
    else:
        for i in range(a.ndim):
            if a.shape[i] != b.shape[i] and 1 not in (a.shape[i], b.shape[i]):
                raise ValueError(f"incompatible shapes for in1 and in2: {a.shape} and {b.shape}")
        y = a * b
    if mode == "same":  # SciPy centres every axis on in1's size, the broadcast ones too
        y = y[tuple(slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(y.shape, a.shape))]
    return y.copy() if not ax else y


def fftconvolve(
    in1: ArrayLike, in2: ArrayLike, mode: str = "full", axes: int | Sequence[int] | None = None
) -> np.ndarray:
    """Convolve by FFT, as ``scipy.signal.fftconvolve`` (integer inputs give
    float64, as in SciPy).

    Shape
    -----
    As :func:`convolve`.
    """
    return _fft_family(in1, in2, mode, axes, fftconvolve)


def oaconvolve(
    in1: ArrayLike, in2: ArrayLike, mode: str = "full", axes: int | Sequence[int] | None = None
) -> np.ndarray:
    """Convolve by overlap-add/save FFT blocks, as ``scipy.signal.oaconvolve``.
    numbaconv's FFT path always blocks by the kernel size and the memory budget,
    so this is :func:`fftconvolve`.

    Shape
    -----
    As :func:`convolve`.
    """
    return _fft_family(in1, in2, mode, axes, oaconvolve)


def choose_conv_method(
    in1: ArrayLike, in2: ArrayLike, mode: str = "full", measure: bool = False
) -> str | tuple[str, dict[str, float]]:
    """'direct' or 'fft' for :func:`convolve`/:func:`correlate`, as
    ``scipy.signal.choose_conv_method``. With ``measure=True`` both are timed
    on these arrays and ``(method, {'direct': s, 'fft': s})`` is returned.

    Shape
    -----
    Returns a str (or a tuple with ``measure=True``).
    """
    a, b = _as_arrays(in1, in2)
    _check_mode(mode)
    ax = list(range(a.ndim))
    if measure:
        times = {}
        for m in ("fft", "direct"):
            t0 = time.perf_counter()
            convolve(a, b, mode=mode, method=m)
            times[m] = time.perf_counter() - t0
        return min(times, key=times.get), times
    if a.ndim == 0 or a.size == 0 or b.size == 0:
        return "direct"
    chosen = _choose(a, b, mode, ax)
    return "direct" if chosen == "separable" else chosen  # SciPy's names: 1-D passes are a direct sum
