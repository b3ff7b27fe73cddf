"""Public functional API: normalize arguments -> ConvPlan -> dispatch -> run."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from . import autotune, config, costs, dispatch, firstcall, lazy, runtime, separable
from .shapes import (
    ConvPlan,
    check_dtype,
    make_conv_plan,
    make_conv_transpose_plan,
    make_filter_plan,
    result_dtype,
)

__all__ = [
    "conv",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
]

IntOrInts = int | Sequence[int]
Padding = int | str | Sequence[int | tuple[int, int]]

# what device= accepts: the table's devices, or "auto" (where the data lives)
DEVICE_ARGS = ("auto",) + dispatch.DEVICES


def _as_host_array(value, name: str, *, allow_none: bool = False) -> np.ndarray | None:
    if value is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be an array, got None")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists, exotic objects
        raise TypeError(f"{name} could not be converted to an array: {exc}") from exc
    check_dtype(arr.dtype, name)
    return arr


def _check_device(device) -> None:
    if not isinstance(device, str) or device not in DEVICE_ARGS:
        raise ValueError(f"device must be one of {', '.join(map(repr, DEVICE_ARGS))}, got {device!r}")


def _device_array(value, name: str):
    """A Numba device array view of a device array (zero-copy for any
    ``__cuda_array_interface__`` object), checked."""
    from numba import cuda

    arr = value if type(value).__name__ in ("DeviceNDArray", "FakeCUDAArray") else cuda.as_cuda_array(value)
    check_dtype(arr.dtype, name)
    if not arr.is_c_contiguous():
        raise ValueError(
            f"{name} is a non-contiguous device array; numbaconv's GPU kernels take C-contiguous "
            f"arrays (make one first, e.g. cupy.ascontiguousarray({name}))"
        )
    return arr


def _route(input, weight, bias, device) -> tuple[str, bool]:
    """(target device, whether the arrays are on the device already)."""
    from . import cuda as gpu  # light: numba.cuda is only imported for device arrays

    given = (("input", input), ("weight", weight), ("bias", bias))
    on_dev = [n for n, v in given if v is not None and gpu.is_device_array(v)]
    host = [n for n, v in given if v is not None and n not in on_dev]
    if on_dev and device == "cpu":
        raise ValueError(
            f"{on_dev[0]} is a CUDA device array but device='cpu'; copy it to the host first "
            f"({on_dev[0]}.copy_to_host() or cupy.asnumpy({on_dev[0]})) or pass device='auto'"
        )
    if on_dev and host:
        raise ValueError(
            f"{on_dev[0]} is a CUDA device array but {host[0]} is a host array; pass input, weight and "
            f"bias on one device (numba.cuda.to_device({host[0]})), or host arrays with device='cuda'"
        )
    target = "cuda" if (device == "cuda" or on_dev) else "cpu"
    if target == "cuda":
        gpu.require()
    return target, bool(on_dev)


def _kernel_array(arr: np.ndarray, dtype: np.dtype, shape5) -> np.ndarray:
    """C-contiguous, native-order, writeable ``dtype`` view or copy, as 5-D.

    Read-only arrays are copied too: numba compiles a separate specialization
    for read-only buffers, and one signature per dtype keeps compile time down.
    The caller's array is never written.
    """
    a = np.ascontiguousarray(arr, dtype=dtype)
    if not a.flags.writeable:
        a = a.copy()
    return a.reshape(shape5)


def _kernel_arrays(plan: ConvPlan, x, w, b, x_dtype) -> tuple:
    """The kernels' canonical 5-D input (in ``x_dtype``) and weight and 1-D bias."""
    x5 = _kernel_array(x, x_dtype, plan.input_shape5)
    w5 = _kernel_array(w, plan.dtype, plan.weight_shape5)
    return x5, w5, None if b is None else np.ascontiguousarray(b, dtype=plan.dtype)


def _check_out(out, plan: ConvPlan, inputs) -> None:
    if not isinstance(out, np.ndarray) or isinstance(out, np.matrix):
        raise TypeError(f"out must be a numpy.ndarray (not a numpy.matrix), got {type(out).__name__}")
    if out.shape != plan.output_shape:
        raise ValueError(f"out has shape {out.shape}, but the result has shape {plan.output_shape}")
    if out.dtype != plan.dtype:
        raise ValueError(
            f"out has dtype {out.dtype}, but the result has dtype {plan.dtype} "
            "(NumPy promotion of the input, weight and bias dtypes)"
        )
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    for name, arr in inputs:
        if arr is not None and np.may_share_memory(out, arr):
            raise ValueError(f"out overlaps {name}; give a separate output array")


def _prepare(op, input, weight, bias, method, device):
    """Checks shared by both ops: arrays, dtypes, method, device. Returns the
    arrays (host, or device ones), the method, the result dtype and
    ``(target device, arrays on the device)``."""
    _check_device(device)
    method = dispatch.check_method(op, method)
    target, resident = _route(input, weight, bias, device)
    if resident:
        if input is None or weight is None:
            raise TypeError(f"{'input' if input is None else 'weight'} must be an array, got None")
        x = _device_array(input, "input")
        w = _device_array(weight, "weight")
        b = None if bias is None else _device_array(bias, "bias")
        dtypes = {np.dtype(a.dtype) for a in (x, w, b) if a is not None}
        if len(dtypes) != 1:
            raise ValueError(
                "on the GPU, input, weight and bias must share one dtype (no conversion is done on "
                f"the device); got {', '.join(sorted(str(d) for d in dtypes))}"
            )
        dtype = result_dtype(*dtypes)
    else:
        x = _as_host_array(input, "input")
        w = _as_host_array(weight, "weight")
        b = _as_host_array(bias, "bias", allow_none=True)
        dtypes = [x.dtype, w.dtype] + ([b.dtype] if b is not None else [])
        dtype = result_dtype(*dtypes)
    if b is not None and b.ndim != 1:
        raise ValueError(f"bias must be 1-D with shape (C_out,), got shape {b.shape}")
    return x, w, b, method, dtype, (target, resident)


# Calls kept by what their plan and method depend on (the arrays' types,
# shapes and dtypes, the parameters, the settings): a later call with the
# same ones skips the checks, the plan, the dispatcher and the first-call
# test (~35 us of a call; a 1x1 layer on 14x14 planes takes ~200 us)
_KEPT: dict = {}
_KEPT_MAX = 512


def _exact_key(value):
    """``value`` when it is an int, a str, None or a tuple of those (equal
    keys then mean equal arguments: no ``True == 1`` or ``1.0 == 1`` across
    types), else TypeError."""
    t = type(value)
    if t is int or t is str or value is None:
        return value
    if t is tuple:
        return tuple(_exact_key(v) for v in value)
    raise TypeError(t)


def _call_key(op, input, weight, bias, params) -> tuple | None:
    """The key a host call is kept under (``params``: the other arguments
    but ``out``), or None where it is not kept: other array types (dask,
    device arrays, subclasses), arguments other than ints, strings, None and
    tuples of them, ``device='cuda'``, ``method='measure'``."""
    if type(input) is not np.ndarray or type(weight) is not np.ndarray:
        return None
    if bias is not None and type(bias) is not np.ndarray:
        return None
    try:
        params = _exact_key(params)
    except TypeError:
        return None
    if "cuda" in params or "measure" in params:
        return None
    state = config.state()
    try:
        hash(state)
    except TypeError:  # an override holding a list: such calls are not kept
        return None
    return (
        op,
        input.shape,
        input.dtype,
        weight.shape,
        weight.dtype,
        None if bias is None else (bias.shape, bias.dtype),
        params,
        state,
        runtime.num_threads(),
        costs._FORGOTTEN[0],
        firstcall.FORGOTTEN[0],
    )


def _run_kept(key, input, weight, bias, out):
    """The kept call ``key`` on these arrays, or None where it was kept for
    another kind of weight (a rank-one kernel where this one is not, or the
    reverse): :func:`_remember`."""
    kept = _KEPT.get(key)
    if kept is None:
        return None
    plan0, eligible, variants = kept
    hit = variants.get(eligible and separable.rank_one(plan0, weight))
    if hit is None:
        return None
    plan, row, over = hit
    if out is not None:
        _check_out(out, plan, (("input", input), ("weight", weight), ("bias", bias)))
    with runtime.kernel_section():
        return _execute(row, plan, input, weight, bias, out, over=over)


def _remember(key, plan0):
    """What :func:`_finish` calls with the plan and row it runs (the method's
    kernels have run before: not a first call), kept under ``key`` for the
    unmarked plan ``plan0``."""
    if key is None:
        return None

    def remember(plan, row):
        if len(_KEPT) >= _KEPT_MAX:
            _KEPT.clear()
        kept = _KEPT.setdefault(key, (plan0, separable.eligible(plan0), {}))
        kept[2][plan.separable] = (plan, row, dispatch.workspace_need(row, plan) > config.workspace_bytes)

    return remember


def clear_kept_calls() -> None:
    """Forget the kept calls (tests that change the dispatcher's inputs by
    other means than the settings)."""
    _KEPT.clear()


def _finish(op, plan, method, input, weight, bias, x, w, b, out, where=("cpu", False), remember=None):
    if where[0] == "cuda":
        return _finish_cuda(op, plan, method, x, w, b, out, resident=where[1])
    if out is not None:
        _check_out(out, plan, (("input", input), ("weight", weight), ("bias", bias)))
    if method == "measure":
        with runtime.kernel_section():
            result, _ = autotune.measure(op, plan, lambda row: _execute(row, plan, x, w, b, None))
        if out is not None:
            out[...] = result
            return out
        return result
    row = dispatch.resolve(op, plan, method)
    if (method == "auto" or firstcall.automatic_choice()) and firstcall.wanted(op, plan, row.name):
        return _first_call(op, row, plan, x, w, b, out)
    if remember is not None:
        remember(plan, row)
    with runtime.kernel_section():
        return _execute(row, plan, x, w, b, out)


def _first_call(op, row, plan, x, w, b, out):
    """NumPy's result while a thread prepares ``row``'s kernels (:mod:`numbaconv.firstcall`)."""
    x5, w5, b1 = _kernel_arrays(plan, x, w, b, plan.dtype)
    runner = row.runner()

    def prepare():
        runner(x5, w5, b1, plan, np.empty(plan.output_shape5, dtype=plan.dtype))

    result = firstcall.run(op, plan, row.name, x5, w5, b1, prepare).reshape(plan.output_shape)
    if out is not None:
        out[...] = result
        return out
    return result


def _conv_impl(
    ndim, input, weight, bias, stride, padding, dilation, groups, padding_mode, method, device, out
):
    params = (ndim, stride, padding, dilation, groups, padding_mode, method, device)
    key = _call_key("conv", input, weight, bias, params)
    if key is not None:
        result = _run_kept(key, input, weight, bias, out)
        if result is not None:
            return result
    if lazy.is_dask(input):  # checked alike; the blocks run lazily (numbaconv.lazy)
        x, w, b, method, dtype = lazy.prepare("conv", input, weight, bias, method, device, out, _check_device)
    else:
        x, w, b, method, dtype, where = _prepare("conv", input, weight, bias, method, device)
    plan = make_conv_plan(
        x.shape,
        w.shape,
        None if b is None else b.shape,
        stride,
        padding,
        dilation,
        groups,
        padding_mode=padding_mode,
        dtype=dtype,
        ndim=ndim,
    )
    if lazy.is_dask(x):
        return lazy.conv(x, plan, w, b, method, conv)
    marked = separable.mark(plan, w)
    return _finish("conv", marked, method, input, weight, bias, x, w, b, out, where, _remember(key, plan))


def filter_conv(x, w, padding, groups, modes, method="auto", plan=None, store=None) -> np.ndarray:
    """The SciPy front-ends' conv (numbaconv.signal, numbaconv.ndimage): stride
    and dilation 1, ``padding`` ``(lo, hi)`` and a mode of
    ``shapes.FILTER_MODES`` per spatial dim, no limit on the padding;
    ``plan``: the caller's (already marked) plan of these arrays. ``store``:
    the integer dtype the caller stores the result in (truncated toward zero,
    wrapped); the result comes in it where the method can write it itself
    (one pass less over the image), else in the plan's dtype."""
    x, w, _, method, dtype, where = _prepare("conv", x, w, None, method, "cpu")
    if plan is None:
        plan = separable.mark(make_filter_plan(x.shape, w.shape, padding, groups, tuple(modes), dtype), w)
    if store is not None and method != "measure":
        row = dispatch.resolve("conv", plan, method)
        if firstcall.automatic_choice() and firstcall.wanted("conv", plan, row.name):
            return _finish("conv", plan, method, x, w, None, x, w, None, None, where)  # a float result
        if getattr(row.module, "stores_integers", lambda plan: False)(plan):
            with runtime.kernel_section():
                return _execute(row, plan, x, w, None, None, np.dtype(store))
    return _finish("conv", plan, method, x, w, None, x, w, None, None, where)


def _conv_transpose_impl(
    ndim,
    input,
    weight,
    bias,
    stride,
    padding,
    output_padding,
    groups,
    dilation,
    output_size,
    padding_mode,
    method,
    device,
    out,
):
    params = (ndim, stride, padding, output_padding, groups, dilation, output_size, padding_mode)
    key = _call_key("conv_transpose", input, weight, bias, params + (method, device))
    if key is not None:
        result = _run_kept(key, input, weight, bias, out)
        if result is not None:
            return result
    if lazy.is_dask(input):  # checked alike; the blocks run lazily (numbaconv.lazy)
        x, w, b, method, dtype = lazy.prepare(
            "conv_transpose", input, weight, bias, method, device, out, _check_device
        )
    else:
        x, w, b, method, dtype, where = _prepare("conv_transpose", input, weight, bias, method, device)
    plan = make_conv_transpose_plan(
        x.shape,
        w.shape,
        None if b is None else b.shape,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size=output_size,
        padding_mode=padding_mode,
        dtype=dtype,
        ndim=ndim,
    )
    if lazy.is_dask(x):
        return lazy.conv_transpose(x, plan, w, b, method, conv_transpose)
    remember = _remember(key, plan)
    return _finish("conv_transpose", plan, method, input, weight, bias, x, w, b, out, where, remember)


def _finish_cuda(op, plan, method, x, w, b, out, resident: bool):
    """Run on the GPU: device arrays stay there (the result is a Numba device
    array); host arrays (``device='cuda'``) are copied in and the result out."""
    from numba import cuda

    if resident:
        x5 = x.reshape(plan.input_shape5)
        w5 = w.reshape(plan.weight_shape5)
        b1 = b
    else:
        x5 = cuda.to_device(_kernel_array(x, plan.dtype, plan.input_shape5))
        w5 = cuda.to_device(_kernel_array(w, plan.dtype, plan.weight_shape5))
        b1 = None if b is None else cuda.to_device(np.ascontiguousarray(b, dtype=plan.dtype))
    target = None
    if out is not None:
        if resident:
            from . import cuda as gpu

            if not gpu.is_device_array(out):
                raise TypeError("out must be a device array when the inputs are on the GPU")
            o = _device_array(out, "out")
            if tuple(o.shape) != plan.output_shape:
                raise ValueError(
                    f"out has shape {tuple(o.shape)}, but the result has shape {plan.output_shape}"
                )
            if np.dtype(o.dtype) != plan.dtype:
                raise ValueError(f"out has dtype {o.dtype}, but the result has dtype {plan.dtype}")
            target = o.reshape(plan.output_shape5)
        else:
            _check_out(out, plan, (("input", x), ("weight", w), ("bias", b)))
    if target is None:
        target = cuda.device_array(plan.output_shape5, dtype=plan.dtype)

    def execute(row, dst=target):
        if dst.size:
            row.runner()(x5, w5, b1, plan, dst)
        cuda.synchronize()
        return dst

    if method == "measure":
        best, _ = autotune.measure(
            op, plan, lambda row: execute(row, cuda.device_array(plan.output_shape5, plan.dtype)), "cuda"
        )
        if best is not target:
            target.copy_to_device(best)
    else:
        execute(dispatch.resolve(op, plan, method, "cuda"))
    if resident:
        return out if out is not None else target.reshape(plan.output_shape)
    host = target.copy_to_host().reshape(plan.output_shape)
    if out is not None:
        out[...] = host
        return out
    return host


def _warn_over_budget(row, plan: ConvPlan) -> None:
    need = dispatch.workspace_need(row, plan)
    if need > config.workspace_bytes:
        warnings.warn(
            f"numbaconv: method={row.name!r} needs {need} bytes of working memory for this case, more "
            f"than config.workspace_bytes={config.workspace_bytes}; running with it. Raise "
            "config.workspace_bytes (or NUMBACONV_WORKSPACE_BYTES) to allow it silently",
            RuntimeWarning,
            stacklevel=6,
        )


def _input_dtype(row, plan: ConvPlan, x) -> np.dtype:
    """The dtype the kernels read the input in: the plan's, or an 8/16-bit
    integer input as it is where the method's tiles convert it while they
    copy (no converted copy of the whole input: ``INTEGER_INPUTS`` of the
    method's module)."""
    kind = x.dtype.kind  # first: a dtype's name is built on each read (~1 us)
    if kind in "iu" and plan.dtype.kind == "f" and x.dtype.name in getattr(row.module, "INTEGER_INPUTS", ()):
        return x.dtype
    return plan.dtype


def _execute(row, plan: ConvPlan, x, w, b, out, result_dtype=None, over=None):
    """Run ``row`` on host arrays (saying so when it needs more than the
    budget; ``over``: whether it does, when known); ``result_dtype``: an
    integer dtype the row stores itself (its module's
    ``stores_integers(plan)``), without ``out``."""
    if over is None or over:
        _warn_over_budget(row, plan)
    runner = row.runner()
    if out is not None and out.flags.c_contiguous:
        result = out
    else:
        result = np.empty(plan.output_shape, dtype=result_dtype or plan.dtype)
    if result.size:
        runner(
            *_kernel_arrays(plan, x, w, b, _input_dtype(row, plan, x)),
            plan,
            result.reshape(plan.output_shape5),
        )
    if out is not None and result is not out:
        out[...] = result
        return out
    return result


_DOC = """{ndim_title} convolution (cross-correlation), with PyTorch's semantics.

    Computes ``out[n, o, *p] = bias[o] + sum_{{c, *k}} weight[o, c, *k] *
    x_pad[n, g*C_in/groups + c, *(p * stride + k * dilation)]`` where ``g`` is
    the group of output channel ``o`` and ``x_pad`` is the input padded by
    ``padding`` in ``padding_mode`` (done by index arithmetic, never by a
    padded copy).

    Parameters
    ----------
    input : array_like
        ``(N, C_in, {sp})`` or unbatched ``(C_in, {sp})``. float32, float64,
        complex64 or complex128 (other numeric dtypes are promoted with the
        weight as NumPy does, and must promote to one of those).
        Non-contiguous, Fortran-ordered, read-only and big-endian arrays are
        accepted; the input is never modified.
    weight : array_like
        ``(C_out, C_in / groups, {ksp})``.
    bias : array_like, optional
        ``(C_out,)``.
    stride : int or tuple of {n} ints, default 1
    padding : int, tuple, 'same' or 'valid', default 0
        An int, one int per spatial dim, one ``(lo, hi)`` pair per spatial dim
        (asymmetric), ``'valid'`` (no padding) or ``'same'`` (output size equals
        ``ceil(L / stride)``; at stride 1 PyTorch's rule, the odd extra element
        on the high side; at stride > 1 as JAX's ``SAME``).
    dilation : int or tuple of {n} ints, default 1
    groups : int, default 1
        Must divide ``C_in`` and ``C_out``. ``groups == C_in`` is depthwise.
    padding_mode : {{'zeros', 'reflect', 'replicate', 'circular'}}, keyword-only
        As PyTorch's ``nn.Conv{n}d``. 'reflect' needs padding < input size;
        'circular' needs padding <= input size.
    method : str, keyword-only, default 'auto'
        'auto' (the cost model's choice), 'measure' (time the candidates on
        these arrays once, remember the winner on disk), or a method:
        'direct', 'gemm' (im2col + GEMM) or 'fft'. See
        :func:`numbaconv.explain`.
    device : {{'auto', 'cpu', 'cuda'}}, keyword-only
        'auto': on the GPU when the arrays are device arrays (Numba device
        arrays or any ``__cuda_array_interface__`` object: CuPy arrays,
        PyTorch CUDA tensors via ``.detach()``; zero-copy, all of one dtype,
        C-contiguous), the result then a Numba device array (wrap it with
        ``cupy.asarray(y)`` or ``torch.as_tensor(y, device="cuda")``); else
        the CPU. 'cuda': host arrays are copied to the GPU and the result
        back. Mixing host and device arrays is an error. See docs/gpu.md.
    out : ndarray, optional, keyword-only
        Where to write the result: exact shape and dtype, writeable, not
        overlapping any input. Checked before anything is written.

    Returns
    -------
    ndarray
        The result, with the promoted dtype (``out`` when given).

    Shape
    -----
    Per spatial dim of size ``L`` with kernel size ``k``:
    ``L_out = floor((L + lo + hi - dilation * (k - 1) - 1) / stride) + 1``.
    Input ``(N, C_in, {sp})`` gives ``(N, C_out, {osp})``; unbatched
    ``(C_in, {sp})`` gives ``(C_out, {osp})``.

    Raises
    ------
    TypeError
        Wrong kind of argument (float stride, None padding, bool/object or
        integer-only dtypes, ...).
    ValueError
        Bad values or shapes; the message names the parameter and the value.
    """


def conv1d(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    dilation: IntOrInts = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
    device: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    return _conv_impl(
        1, input, weight, bias, stride, padding, dilation, groups, padding_mode, method, device, out
    )


def conv2d(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    dilation: IntOrInts = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
    device: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    return _conv_impl(
        2, input, weight, bias, stride, padding, dilation, groups, padding_mode, method, device, out
    )


def conv3d(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    dilation: IntOrInts = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
    device: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    return _conv_impl(
        3, input, weight, bias, stride, padding, dilation, groups, padding_mode, method, device, out
    )


def conv(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    dilation: IntOrInts = 1,
    groups: int = 1,
    *,
    padding_mode: str = "zeros",
    method: str = "auto",
    device: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    return _conv_impl(
        None, input, weight, bias, stride, padding, dilation, groups, padding_mode, method, device, out
    )


conv1d.__doc__ = _DOC.format(ndim_title="1-D", sp="L", ksp="k", osp="L_out", n=1)
conv2d.__doc__ = _DOC.format(ndim_title="2-D", sp="H, W", ksp="kH, kW", osp="H_out, W_out", n=2)
conv3d.__doc__ = _DOC.format(ndim_title="3-D", sp="D, H, W", ksp="kD, kH, kW", osp="D_out, H_out, W_out", n=3)
conv.__doc__ = _DOC.format(
    ndim_title="N-D (N = weight.ndim - 2, 1 to 3)",
    sp="*spatial",
    ksp="*k",
    osp="*spatial_out",
    n="N",
)


_DOC_T = """{ndim_title} transposed convolution, with PyTorch's semantics.

    The adjoint of :func:`conv{n_suffix}` with the same weight, stride, padding,
    dilation and groups: every input element ``x[n, c, *i]`` adds
    ``x[n, c, *i] * weight[c, o - g*C_out/groups, *k]`` into output position
    ``i * stride + k * dilation - lo`` of each output channel ``o`` of its group
    ``g`` (positions that fall into the padding are dropped for
    ``padding_mode='zeros'``), then ``bias`` is added.

    Parameters
    ----------
    input : array_like
        ``(N, C_in, {sp})`` or unbatched ``(C_in, {sp})``. float32, float64,
        complex64 or complex128 (other numeric dtypes promote with the weight
        as NumPy does, and must promote to one of those). Any memory layout;
        never modified.
    weight : array_like
        ``(C_in, C_out / groups, {ksp})`` (PyTorch's transposed layout).
    bias : array_like, optional
        ``(C_out,)``.
    stride : int or tuple of {n} ints, default 1
    padding : int, tuple or 'valid', default 0
        An int, one int per spatial dim, or one ``(lo, hi)`` pair per spatial
        dim: removed from the low/high end of each output dim. ``'same'`` is
        not defined for the transposed op (as in PyTorch).
    output_padding : int or tuple of {n} ints, default 0
        Extra size added to the high end of each output dim; each entry must be
        smaller than either the stride or the dilation of its dim.
    groups : int, default 1
        Must divide ``C_in``.
    dilation : int or tuple of {n} ints, default 1
    output_size : tuple of ints, keyword-only, optional
        The wanted spatial output size (leading batch/channel entries are
        ignored); computes ``output_padding`` (give one or the other). Valid
        sizes per dim run from the size with ``output_padding=0`` to that plus
        ``stride - 1``; anything else raises ``ValueError`` with the range.
    padding_mode : {{'zeros', 'reflect', 'replicate', 'circular'}}, keyword-only
        'zeros' as PyTorch. The others are defined as the adjoint of conv with
        that mode: contributions that land in the padding are added onto the
        output positions the padding copies (PyTorch has no such mode), so
        ``<conv(y, w), x> == <y, conv_transpose(x, w)>`` for every mode.
        'reflect' needs padding < output size, 'circular' padding <= output size.
    method : str, keyword-only, default 'auto'
        'auto' (the cost model's choice), 'measure' (time the candidates on
        these arrays once, remember the winner on disk), or a method:
        'scatter' (scatter-add), 'gather', 'gemm' (GEMM + col2im) or 'fft'.
    device : {{'auto', 'cpu', 'cuda'}}, keyword-only
        'auto': on the GPU when the arrays are device arrays (Numba device
        arrays or any ``__cuda_array_interface__`` object: CuPy arrays,
        PyTorch CUDA tensors via ``.detach()``; zero-copy, all of one dtype,
        C-contiguous), the result then a Numba device array (wrap it with
        ``cupy.asarray(y)`` or ``torch.as_tensor(y, device="cuda")``); else
        the CPU. 'cuda': host arrays are copied to the GPU and the result
        back. Mixing host and device arrays is an error. See docs/gpu.md.
    out : ndarray, optional, keyword-only
        Where to write the result: exact shape and dtype, writeable, not
        overlapping any input. Checked before anything is written.

    Returns
    -------
    ndarray
        The result, with the promoted dtype (``out`` when given).

    Shape
    -----
    Per spatial dim of size ``L`` with kernel size ``k``:
    ``L_out = (L - 1) * stride - lo - hi + dilation * (k - 1) + output_padding + 1``.
    Input ``(N, C_in, {sp})`` gives ``(N, C_out, {osp})`` with ``C_out =
    weight.shape[1] * groups``; unbatched ``(C_in, {sp})`` gives ``(C_out, {osp})``.

    Raises
    ------
    TypeError
        Wrong kind of argument.
    ValueError
        Bad values or shapes (output_padding too large, output_size out of
        range, channel mismatch, ...); the message names the parameter and the value.
    """


def conv_transpose1d(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    output_padding: IntOrInts = 0,
    groups: int = 1,
    dilation: IntOrInts = 1,
    *,
    output_size: Sequence[int] | None = None,
    padding_mode: str = "zeros",
    method: str = "auto",
    device: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    return _conv_transpose_impl(
        1,
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size,
        padding_mode,
        method,
        device,
        out,
    )


def conv_transpose2d(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    output_padding: IntOrInts = 0,
    groups: int = 1,
    dilation: IntOrInts = 1,
    *,
    output_size: Sequence[int] | None = None,
    padding_mode: str = "zeros",
    method: str = "auto",
    device: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    return _conv_transpose_impl(
        2,
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size,
        padding_mode,
        method,
        device,
        out,
    )


def conv_transpose3d(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    output_padding: IntOrInts = 0,
    groups: int = 1,
    dilation: IntOrInts = 1,
    *,
    output_size: Sequence[int] | None = None,
    padding_mode: str = "zeros",
    method: str = "auto",
    device: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    return _conv_transpose_impl(
        3,
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size,
        padding_mode,
        method,
        device,
        out,
    )


def conv_transpose(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: IntOrInts = 1,
    padding: Padding = 0,
    output_padding: IntOrInts = 0,
    groups: int = 1,
    dilation: IntOrInts = 1,
    *,
    output_size: Sequence[int] | None = None,
    padding_mode: str = "zeros",
    method: str = "auto",
    device: str = "auto",
    out: np.ndarray | None = None,
) -> np.ndarray:
    return _conv_transpose_impl(
        None,
        input,
        weight,
        bias,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size,
        padding_mode,
        method,
        device,
        out,
    )


conv_transpose1d.__doc__ = _DOC_T.format(ndim_title="1-D", n_suffix="1d", sp="L", ksp="k", osp="L_out", n=1)
conv_transpose2d.__doc__ = _DOC_T.format(
    ndim_title="2-D", n_suffix="2d", sp="H, W", ksp="kH, kW", osp="H_out, W_out", n=2
)
conv_transpose3d.__doc__ = _DOC_T.format(
    ndim_title="3-D", n_suffix="3d", sp="D, H, W", ksp="kD, kH, kW", osp="D_out, H_out, W_out", n=3
)
conv_transpose.__doc__ = _DOC_T.format(
    ndim_title="N-D (N = weight.ndim - 2, 1 to 3)",
    n_suffix="",
    sp="*spatial",
    ksp="*k",
    osp="*spatial_out",
    n="N",
)
