"""scipy.ndimage-compatible filters: ``correlate``, ``convolve``,
``correlate1d`` and ``convolve1d`` with SciPy's signatures, modes, origins,
``axes``, ``output`` (array or dtype) and errors, on numbaconv's kernels
(multi-threaded, through the dispatcher; see :mod:`numbaconv.filters`).

Modes: 'reflect' (= 'grid-mirror', the edge repeated), 'mirror' (the edge
not repeated), 'nearest', 'wrap' (= 'grid-wrap') and 'constant' (=
'grid-constant', ``cval``), folded by index arithmetic in the kernels at any
kernel size. As in SciPy, ``correlate``/``convolve`` take one mode for all
axes (a sequence raises RuntimeError); :func:`numbaconv.ndimage.sepfilter`
takes one per axis.

Precision: float64 and (u)int32/64 inputs, and any input with a float64 or
complex128 output, are computed in float64 (as SciPy); float32 and
8/16-bit integer and bool inputs otherwise in float32 (SciPy uses float64
throughout); complex inputs or weights in complex64 or complex128 directly
(SciPy combines real convolutions). Integer outputs truncate toward
zero and wrap in their dtype as SciPy's do; a sum whose exact value is an
integer may round to either side of it in a different summation order, so
an integer output can differ from SciPy's by one where the weights are not
integers.

Extension: the keyword ``method`` (default "auto") names numbaconv's method.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import filters, lazy
from .cpu.microkernel import INTEGER_SOURCES

__all__ = ["convolve", "convolve1d", "correlate", "correlate1d", "sepfilter"]

_MODES = {
    "reflect": "symmetric",
    "grid-mirror": "symmetric",
    "mirror": "reflect",
    "nearest": "replicate",
    "wrap": "circular",
    "grid-wrap": "circular",
    "constant": "constant",
    "grid-constant": "constant",
}
_FLOAT32_INPUTS = {np.dtype(t) for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.float32)}


def _filter_mode(mode) -> str:
    if not isinstance(mode, str) and isinstance(mode, Iterable):
        raise RuntimeError("A sequence of modes is not supported")
    try:
        return _MODES[mode]
    except (KeyError, TypeError):
        raise RuntimeError("boundary mode not supported") from None


def _check_input(x: np.ndarray) -> None:
    if x.dtype.kind not in "biufc" or x.dtype in (np.float16, np.longdouble, np.clongdouble):
        raise RuntimeError(f"array type {x.dtype!r} not supported")


def _check_axes(axes, ndim: int) -> tuple[int, ...]:
    if axes is None:
        return tuple(range(ndim))
    if np.isscalar(axes):
        axes = (operator.index(axes),)
    elif isinstance(axes, Iterable):
        axes = tuple(operator.index(ax) for ax in axes)
        for ax in axes:
            if ax < -ndim or ax > ndim - 1:
                raise ValueError(f"specified axis: {ax} is out of range")
        axes = tuple(ax % ndim for ax in axes)
    else:
        raise ValueError("axes must be an integer, iterable of integers, or None")
    if len(set(axes)) != len(axes):
        raise ValueError("axes must be unique")
    return axes


def _sequence(value, rank: int) -> list:
    """A scalar repeated ``rank`` times, or a sequence of that length."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return [value] * rank
    out = list(value)
    if len(out) != rank:
        raise RuntimeError("sequence argument must have length equal to input rank")
    return out


def _output(output, x: np.ndarray, complex_output: bool) -> np.ndarray | np.dtype:
    """The array the result goes into (``output=`` an array), else the dtype
    of a new one, as scipy.ndimage's ``_get_output`` decides them."""
    if output is None:
        return np.promote_types(x.dtype, np.complex64) if complex_output else x.dtype
    if isinstance(output, type | np.dtype):
        if complex_output and np.dtype(output).kind != "c":
            warnings.warn("promoting specified output dtype to complex", stacklevel=4)
            output = np.promote_types(output, np.complex64)
        return np.dtype(output)
    if isinstance(output, str):
        dtype = np.dtype(output)
        if complex_output and dtype.kind != "c":
            raise RuntimeError("output must have complex dtype")
        if not issubclass(dtype.type, np.number):
            raise RuntimeError("output must have numeric dtype")
        return dtype
    out = np.asarray(output)
    if out.shape != x.shape:
        raise RuntimeError("output shape not correct")
    if complex_output and out.dtype.kind != "c":
        raise RuntimeError("output must have complex dtype")
    return out


def _check_output_type(out, complex_output: bool) -> None:
    """SciPy's C loops store real results into the real dtypes they know
    (bool, integers, float32, float64) only."""
    dtype = out if isinstance(out, np.dtype) else out.dtype
    if not complex_output and (
        dtype.kind == "c" or dtype in (np.float16, np.longdouble) or dtype.kind not in "biufc"
    ):
        raise RuntimeError(f"array type {dtype!r} not supported")


def _compute_dtype(x: np.ndarray, w: np.ndarray, out) -> np.dtype:
    """float32 (complex64) for float32, 8/16-bit integer and bool inputs
    unless the output is double precision; else float64 (complex128)."""
    out_dtype = out if isinstance(out, np.dtype) else out.dtype
    single = x.dtype in _FLOAT32_INPUTS or x.dtype == np.complex64
    real = np.float32 if single and out_dtype not in (np.float64, np.complex128) else np.float64
    if x.dtype.kind == "c" or w.dtype.kind == "c":
        return np.dtype(np.complex64 if real == np.float32 else np.complex128)
    return np.dtype(real)


def _store(y: np.ndarray, out: np.ndarray | np.dtype) -> np.ndarray:
    """``y`` into ``out`` (or a new array of that dtype: ``y`` itself where it
    has it) as SciPy's C loops store a double: integers truncated toward zero
    and wrapped in their dtype, bool as nonzero."""
    if isinstance(out, np.dtype):
        if y.dtype == out:
            return y
        out = np.empty(y.shape, out)
    elif y.dtype == out.dtype:  # stored by the kernel already (filters.correlate's store)
        out[...] = y
        return out
    if out.dtype.kind == "b":
        out[...] = y != 0
    elif out.dtype.kind in "iu":
        real = y.real if y.dtype.kind == "c" else y
        if out.dtype != np.uint64 and out.flags.c_contiguous and real.flags.c_contiguous:
            from .cpu.convert import truncate_into

            truncate_into(real.reshape(-1), out.reshape(-1))
        else:
            with np.errstate(invalid="ignore"):
                big = np.uint64 if out.dtype == np.uint64 else np.int64
                out[...] = np.trunc(real).astype(big).astype(out.dtype)
    elif out.dtype.kind == "c" or y.dtype.kind != "c":
        out[...] = y
    else:
        out[...] = y.real
    return out


def _check_cval(cval, x: np.ndarray, w: np.ndarray):
    """A complex ``cval`` needs a complex input (checked first with complex
    weights, as SciPy's complex path does, else when the filter runs)."""
    if np.iscomplexobj(cval) and x.dtype.kind != "c":
        if w.dtype.kind == "c":
            raise ValueError("Cannot provide a complex-valued cval when the input is real.")
        raise TypeError("must be real number, not complex")
    return cval


def _run(x, w, origins, mode, cval, output, convolution, method):
    """The filter of full-rank weights ``w`` over every axis of ``x``."""
    if convolution:
        w = w[(slice(None, None, -1),) * w.ndim]
        origins = [-o - (1 - w.shape[d] % 2) for d, o in enumerate(origins)]
    elif w.dtype.kind == "c":
        w = np.conj(w)  # as np.correlate: the weights conjugated
    pads = []
    for k, o in zip(w.shape, origins):
        lo = k // 2 + o
        pads.append((lo, k - 1 - lo))
    block = lazy.block_pads()
    if block is not None:  # a dask block's slab: its true edges' padding only (lazy.ndimage_filter)
        pads = [tuple(p) for p in block]
    cdt = _compute_dtype(x, w, output)
    modes = (mode,) * x.ndim if isinstance(mode, str) else tuple(mode)
    # 8/16-bit integer images stay as they are: the direct path's tiles
    # convert them while they copy (no float copy of the whole input)
    keep = cdt.kind == "f" and x.dtype.name in INTEGER_SOURCES
    xc = x if keep else x.astype(cdt, copy=False)
    out_dtype = output if isinstance(output, np.dtype) else output.dtype
    store = out_dtype if cdt.kind == "f" and out_dtype.kind in "iu" and out_dtype != np.uint64 else None
    y = filters.correlate(xc, w.astype(cdt, copy=False), pads, modes, cval, method, store)
    return _store(y, output)


def _invalid_origin(origin, k: int) -> bool:
    return origin < -(k // 2) or origin > (k - 1) // 2


def _arrays(input, weights, cval):
    """The input and weights as arrays (real weights in float64, as SciPy
    reads them) and whether the result is complex; SciPy's first checks (a
    complex cval beside complex weights, the input dtype)."""
    x = np.asarray(input)
    w = np.asarray(weights)
    complex_out = x.dtype.kind == "c" or w.dtype.kind == "c"
    if w.dtype.kind == "c":
        _check_cval(cval, x, w)
    _check_input(x)
    if w.dtype.kind != "c":
        w = np.asarray(w, dtype=np.float64)
    return x, w, complex_out


def _nd(input, weights, output, mode, cval, origin, convolution, axes, method):
    x, w, complex_out = _arrays(input, weights, cval)
    axes = _check_axes(axes, x.ndim)
    if len(axes) < x.ndim:
        if w.ndim != len(axes):
            raise RuntimeError(f"weights.ndim ({w.ndim}) must match len(axes) ({len(axes)})")
        w = np.expand_dims(w, tuple(ax for ax in range(x.ndim) if ax not in axes))
    origins = _sequence(origin, len(axes))
    if len(axes) < x.ndim:
        full = [0] * x.ndim
        for o, ax in zip(origins, axes):
            full[ax] = o
        origins = full
    wshape = [n for n in w.shape if n > 0]
    if len(wshape) != x.ndim:
        raise RuntimeError(f"weights.ndim ({len(wshape)}) must match len(axes) ({len(axes)})")
    shifted = [(-o - (1 - k % 2)) if convolution else o for o, k in zip(origins, w.shape)]
    for o, k in zip(shifted, w.shape):
        if _invalid_origin(o, k):
            raise ValueError(
                "Invalid origin; origin must satisfy -(weights.shape[k] // 2) <= origin[k] <= "
                "(weights.shape[k]-1) // 2"
            )
    out = _output(output, x, complex_out)
    _check_output_type(out, complex_out)
    fmode = _filter_mode(mode)
    cval = _check_cval(cval, x, w)
    return _run(x, w, origins, fmode, cval, out, convolution, method)


def _1d(input, weights, axis, output, mode, cval, origin, convolution, method):
    x, w, complex_out = _arrays(input, weights, cval)
    if w.ndim != 1 or w.shape[0] < 1:
        raise RuntimeError("no filter weights given")
    axis = operator.index(axis)
    if not -x.ndim <= axis < x.ndim:
        raise np.exceptions.AxisError(axis, x.ndim)
    axis %= x.ndim
    k = w.shape[0]
    check = -origin - (1 - k % 2) if convolution else origin
    if _invalid_origin(check, k):
        raise ValueError(
            "Invalid origin; origin must satisfy -(len(weights) // 2) <= origin <= (len(weights)-1) // 2"
        )
    out = _output(output, x, complex_out)
    _check_output_type(out, complex_out)
    fmode = _filter_mode(mode)
    cval = _check_cval(cval, x, w)
    shape = [1] * x.ndim
    shape[axis] = k
    origins = [0] * x.ndim
    origins[axis] = origin
    return _run(x, w.reshape(shape), origins, fmode, cval, out, convolution, method)


def _lazy(func, input, kwargs, sizes, origins, modes):
    """A dask ``input``: :func:`numbaconv.lazy.ndimage_filter` (sizes,
    origins and modes per input axis; a mode that is not a string is left
    for the argument check to refuse). A convolution's origins become its
    correlation's (the flipped weights' window, as :func:`_run` has it)."""
    modes = [_MODES.get(m, "symmetric") if isinstance(m, str) else "symmetric" for m in modes]
    if func in (convolve, convolve1d):
        origins = [-int(o) - (1 - k % 2) if k > 1 else 0 for k, o in zip(sizes, origins)]
    return lazy.ndimage_filter(func, input, kwargs, sizes, origins, modes)


def _lazy_nd(func, input, weights, output, mode, cval, origin, axes, method):
    w = lazy.host(weights)
    nd = input.ndim
    axes_t = _check_axes(axes, nd)
    sizes, origins = [1] * nd, [0] * nd
    if w.ndim == len(axes_t):
        for ax, k, o in zip(axes_t, w.shape, _sequence(origin, len(axes_t))):
            sizes[ax], origins[ax] = k, o
    kwargs = dict(weights=w, output=output, mode=mode, cval=cval, origin=origin, axes=axes, method=method)
    return _lazy(func, input, kwargs, sizes, origins, [mode] * nd)


def _lazy_1d(func, input, weights, axis, output, mode, cval, origin, method):
    w = lazy.host(weights)
    nd = input.ndim
    sizes, origins = [1] * nd, [0] * nd
    if w.ndim == 1 and -nd <= operator.index(axis) < nd:
        sizes[axis % nd], origins[axis % nd] = w.shape[0], origin
    kwargs = dict(weights=w, axis=axis, output=output, mode=mode, cval=cval, origin=origin, method=method)
    return _lazy(func, input, kwargs, sizes, origins, [mode] * nd)


_SHAPE_DOC = """
    Shape
    -----
    The output has the input's shape."""


def correlate(
    input: ArrayLike,
    weights: ArrayLike,
    output: np.ndarray | DTypeLike | None = None,
    mode: str = "reflect",
    cval: complex = 0.0,
    origin: int | Sequence[int] = 0,
    *,
    axes: int | Sequence[int] | None = None,
    method: str = "auto",
) -> np.ndarray:
    """Multidimensional correlation, as ``scipy.ndimage.correlate``:
    ``out[i] = sum_j conj(weights[j]) * input[i + j - weights.shape // 2 - origin]``,
    the input extended by ``mode``.

    Parameters
    ----------
    input : array_like
        Any number of dims (more than three with taps run as sums of 3-D ones).
    weights : array_like
        One dim per filtered axis (``axes``), or per input dim.
    output : ndarray or dtype, optional
        Where the result goes (any shape-matching array, the input itself
        included), or its dtype; default the input's dtype (complex when
        either argument is complex).
    mode : {'reflect', 'constant', 'nearest', 'mirror', 'wrap', 'grid-constant', 'grid-mirror', 'grid-wrap'}
        One mode for every axis.
    cval : scalar
        The value outside the input in the 'constant' modes.
    origin : int or sequence of int
        Shifts the filter: ``-(k // 2) <= origin <= (k - 1) // 2`` per axis.
    axes : int or sequence of int, optional
        The axes filtered (default all).
    method : str
        numbaconv's method ("auto", "direct", "gemm", "fft", ...).

    Returns
    -------
    ndarray
        ``output``.
    """
    if lazy.is_dask(input):
        return _lazy_nd(correlate, input, weights, output, mode, cval, origin, axes, method)
    return _nd(input, weights, output, mode, cval, origin, False, axes, method)


def convolve(
    input: ArrayLike,
    weights: ArrayLike,
    output: np.ndarray | DTypeLike | None = None,
    mode: str = "reflect",
    cval: complex = 0.0,
    origin: int | Sequence[int] = 0,
    *,
    axes: int | Sequence[int] | None = None,
    method: str = "auto",
) -> np.ndarray:
    """Multidimensional convolution, as ``scipy.ndimage.convolve``: the
    correlation with the weights flipped (and not conjugated), the origin
    negated (and moved by one along even-sized axes).

    Parameters as :func:`correlate`.

    Returns
    -------
    ndarray
        ``output``.
    """
    if lazy.is_dask(input):
        return _lazy_nd(convolve, input, weights, output, mode, cval, origin, axes, method)
    return _nd(input, weights, output, mode, cval, origin, True, axes, method)


def correlate1d(
    input: ArrayLike,
    weights: ArrayLike,
    axis: int = -1,
    output: np.ndarray | DTypeLike | None = None,
    mode: str = "reflect",
    cval: complex = 0.0,
    origin: int = 0,
    *,
    method: str = "auto",
) -> np.ndarray:
    """1-D correlation along ``axis``, as ``scipy.ndimage.correlate1d``; the
    other axes are batched. Parameters as :func:`correlate`, ``weights`` 1-D.

    Returns
    -------
    ndarray
        ``output``.
    """
    if lazy.is_dask(input):
        return _lazy_1d(correlate1d, input, weights, axis, output, mode, cval, origin, method)
    return _1d(input, weights, axis, output, mode, cval, origin, False, method)


def convolve1d(
    input: ArrayLike,
    weights: ArrayLike,
    axis: int = -1,
    output: np.ndarray | DTypeLike | None = None,
    mode: str = "reflect",
    cval: complex = 0.0,
    origin: int = 0,
    *,
    method: str = "auto",
) -> np.ndarray:
    """1-D convolution along ``axis``, as ``scipy.ndimage.convolve1d``.
    Parameters as :func:`correlate1d`.

    Returns
    -------
    ndarray
        ``output``.
    """
    if lazy.is_dask(input):
        return _lazy_1d(convolve1d, input, weights, axis, output, mode, cval, origin, method)
    return _1d(input, weights, axis, output, mode, cval, origin, True, method)


def sepfilter(
    input: ArrayLike,
    kernels: Sequence[ArrayLike],
    axes: int | Sequence[int] | None = None,
    output: np.ndarray | DTypeLike | None = None,
    mode: str | Sequence[str] = "reflect",
    cval: complex = 0.0,
    origin: int | Sequence[int] = 0,
    *,
    method: str = "auto",
) -> np.ndarray:
    """Correlation with a separable kernel given by its factors, one 1-D
    kernel per axis (OpenCV's ``sepFilter2D`` in any number of dims):
    :func:`correlate` with ``weights = kernels[0] (x) kernels[1] (x) ...`` over
    ``axes``, each axis with its own mode and origin.

    Parameters
    ----------
    input : array_like
    kernels : sequence of 1-D array_like
        One per filtered axis (``len(axes)``), real or complex (complex ones
        conjugated, as :func:`correlate` does).
    axes : int or sequence of int, optional
        The axes filtered, in the order of ``kernels`` (default all).
    output, cval, method
        As :func:`correlate`.
    mode : str or sequence of str
        One mode, or one per filtered axis (the modes of :func:`correlate`).
    origin : int or sequence of int
        One, or one per filtered axis.

    Returns
    -------
    ndarray
        ``output``.
    """
    if lazy.is_dask(input):
        ks = [lazy.host(k) for k in kernels]
        nd = input.ndim
        axes_t = _check_axes(axes, nd)
        sizes, origins, modes = [1] * nd, [0] * nd, ["reflect"] * nd
        if len(ks) == len(axes_t):
            for ax, k, o, m in zip(axes_t, ks, _sequence(origin, len(ks)), _sequence(mode, len(ks))):
                sizes[ax], origins[ax], modes[ax] = max(k.size, 1), o, m
        kwargs = dict(
            kernels=ks, axes=axes, output=output, mode=mode, cval=cval, origin=origin, method=method
        )
        return _lazy(sepfilter, input, kwargs, sizes, origins, modes)
    x = np.asarray(input)
    axes = _check_axes(axes, x.ndim)
    ks = [np.asarray(k) for k in kernels]
    if len(ks) != len(axes):
        raise ValueError(f"sepfilter takes one kernel per filtered axis: {len(axes)} axes, {len(ks)} kernels")
    for i, k in enumerate(ks):
        if k.ndim != 1 or k.shape[0] < 1:
            raise ValueError(f"kernels[{i}] must be a non-empty 1-D array, got shape {k.shape}")
    modes = [_filter_mode(m) for m in _sequence(mode, len(axes))]
    weights = np.ones((1,) * x.ndim, dtype=np.result_type(*ks, np.float64))
    for ax, k in zip(axes, ks):
        weights = weights * k.reshape(tuple(-1 if d == ax else 1 for d in range(x.ndim)))
    full_modes = ["constant"] * x.ndim  # axes not filtered have one tap and no padding
    for ax, m in zip(axes, modes):
        full_modes[ax] = m
    origins = [0] * x.ndim
    for ax, o in zip(axes, _sequence(origin, len(axes))):
        if _invalid_origin(o, weights.shape[ax]):
            raise ValueError(f"Invalid origin {o} for a kernel of length {weights.shape[ax]} on axis {ax}")
        origins[ax] = o
    complex_out = x.dtype.kind == "c" or weights.dtype.kind == "c"
    if weights.dtype.kind == "c":
        _check_cval(cval, x, weights)
    _check_input(x)
    out = _output(output, x, complex_out)
    _check_output_type(out, complex_out)
    cval = _check_cval(cval, x, weights)
    return _run(x, weights, origins, full_modes, cval, out, False, method)


for _f in (correlate, convolve, correlate1d, convolve1d):
    _f.__doc__ += _SHAPE_DOC
