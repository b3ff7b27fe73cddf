"""Shape arithmetic, argument normalization and validation (pure Python).

Every public entry point turns its arguments into a frozen :class:`ConvPlan`
here, before any kernel runs. The plan is in the canonical form used by every
kernel: three spatial dimensions ``(D, H, W)``; 1-D and 2-D problems get
leading singleton dimensions (kernel 1, stride 1, dilation 1, padding 0).

All errors raised here are ``TypeError`` (wrong kind of value) or
``ValueError`` (right kind, bad value), and their messages name the parameter
and the bad value.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import operator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "PADDING_MODES",
    "FILTER_MODES",
    "make_filter_plan",
    "ConvPlan",
    "conv_output_size",
    "conv_output_shape",
    "conv_transpose_output_shape",
    "conv_transpose_output_size",
    "make_conv_plan",
    "make_conv_transpose_plan",
    "make_plan",
    "normalize_padding",
    "normalize_tuple",
    "output_padding_for",
    "PlanView",
    "same_padding",
]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# The modes of the SciPy front-ends too (numbaconv.signal, numbaconv.ndimage):
# "symmetric" reflects with the edge repeated (numpy.pad's 'symmetric',
# scipy.ndimage's 'reflect', convolve2d's boundary='symm'). Each dim may have
# its own (``ConvPlan.mode``); none has PyTorch's limits on the padding.
FILTER_MODES = PADDING_MODES + ("symmetric",)
# the integer code of each mode inside njit kernels (the CPU FFT path's window maps)
MODE_CODES = {name: code for code, name in enumerate(FILTER_MODES)}
OPS = ("conv", "conv_transpose")
MAX_INT = 2**62  # every size and parameter must fit the kernels' int64 arithmetic
_COMPUTE_DTYPES = tuple(np.dtype(t) for t in (np.float32, np.float64, np.complex64, np.complex128))


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def normalize_tuple(value, n: int, name: str, *, minimum: int) -> tuple[int, ...]:
    """Return ``value`` as a tuple of ``n`` ints, each ``>= minimum``.

    ``value`` is an int (repeated ``n`` times) or a sequence of ``n`` ints.
    Raises ``TypeError`` for any other kind of value (float, None, str, bool)
    and ``ValueError`` for a wrong length or a value below ``minimum``.
    """
    if _is_int(value):
        values = (operator.index(value),) * n
    elif isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(
                f"{name} must be an int or a tuple of {n} ints (one per spatial "
                f"dimension), got {value!r} of length {len(value)}"
            )
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{name} must contain ints only, got {value!r}")
        values = tuple(operator.index(v) for v in value)
    else:
        raise TypeError(
            f"{name} must be an int or a tuple of {n} ints, got {value!r} of type {type(value).__name__}"
        )
    for v in values:
        if v < minimum:
            bound = "positive" if minimum == 1 else f">= {minimum}"
            raise ValueError(f"{name} must be {bound}, got {value!r}")
        if v > MAX_INT:
            raise ValueError(f"{name} must be at most 2**62 (sizes are 64-bit integers), got {value!r}")
    return values


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """(lo, hi) padding of ``padding="same"`` for one dimension.

    Stride 1 follows PyTorch: total ``dilation * (kernel - 1)``, the odd extra
    element on the high side. Stride > 1 follows JAX/TensorFlow ``SAME``:
    the output has ``ceil(size / stride)`` elements.
    """
    span = dilation * (kernel - 1)
    if stride == 1:
        total = span
    else:
        out = -(-size // stride)
        total = max((out - 1) * stride + span + 1 - size, 0)
    lo = total // 2
    return lo, total - lo


def normalize_padding(
    padding,
    n: int,
    in_size: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    dilation: tuple[int, ...],
    *,
    transposed: bool = False,
) -> tuple[tuple[int, int], ...]:
    """Return the padding as ``n`` ``(lo, hi)`` pairs.

    Accepted forms: an int; a tuple of ``n`` ints; a tuple of ``n`` items each
    an int or an ``(lo, hi)`` pair; ``"valid"``; ``"same"`` (convolution only).
    """
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if transposed:
                raise ValueError(
                    "padding='same' is not defined for transposed convolution "
                    "(as in PyTorch); give explicit padding or output_size"
                )
            return tuple(same_padding(in_size[i], kernel[i], stride[i], dilation[i]) for i in range(n))
        raise ValueError(f"padding string must be 'same' or 'valid', got {padding!r}")
    if _is_int(padding):
        p = operator.index(padding)
        if p < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        if p > MAX_INT:
            raise ValueError(f"padding must be at most 2**62 (sizes are 64-bit integers), got {padding!r}")
        return ((p, p),) * n
    if not isinstance(padding, (tuple, list)):
        raise TypeError(
            "padding must be an int, a tuple of ints or (lo, hi) pairs, 'same' or "
            f"'valid', got {padding!r} of type {type(padding).__name__}"
        )
    if len(padding) != n:
        raise ValueError(
            f"padding must have one entry per spatial dimension ({n}), got "
            f"{padding!r} of length {len(padding)}"
        )
    pairs = []
    for item in padding:
        if _is_int(item):
            pair = (operator.index(item),) * 2
        elif isinstance(item, (tuple, list)) and len(item) == 2 and all(_is_int(v) for v in item):
            pair = (operator.index(item[0]), operator.index(item[1]))
        else:
            raise TypeError(
                f"padding entries must be ints or (lo, hi) pairs of ints, got {item!r} in padding={padding!r}"
            )
        if pair[0] < 0 or pair[1] < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        if max(pair) > MAX_INT:
            raise ValueError(f"padding must be at most 2**62 (sizes are 64-bit integers), got {padding!r}")
        pairs.append(pair)
    return tuple(pairs)


def conv_output_size(size: int, kernel: int, stride: int, lo: int, hi: int, dilation: int) -> int:
    """``floor((size + lo + hi - dilation * (kernel - 1) - 1) / stride) + 1``."""
    return (size + lo + hi - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class ConvPlan:
    """Everything a kernel needs, in the canonical 3-spatial-dim form.

    ``in_size``, ``kernel``, ``out_size``, ``stride``, ``dilation``,
    ``padding`` (``(lo, hi)`` pairs) and ``output_padding`` always have three
    entries ``(D, H, W)``; a 1-D or 2-D problem has leading entries of size 1.
    """

    op: str
    ndim: int
    batched: bool
    batch: int
    c_in: int
    c_out: int
    groups: int
    in_size: tuple[int, int, int]
    kernel: tuple[int, int, int]
    out_size: tuple[int, int, int]
    stride: tuple[int, int, int]
    dilation: tuple[int, int, int]
    padding: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    padding_mode: str | tuple[str, str, str]
    dtype: np.dtype
    has_bias: bool
    output_padding: tuple[int, int, int] = (0, 0, 0)
    # conv with one input and one output channel per group whose every
    # channel's kernel is rank one (numbaconv.separable.mark): the
    # "separable" method can run it as 1-D passes
    separable: bool = False

    def mode(self, i: int) -> str:
        """The padding mode of canonical dim ``i`` (``padding_mode`` is one
        mode, or one per canonical dim from the SciPy front-ends)."""
        return self.padding_mode if isinstance(self.padding_mode, str) else self.padding_mode[i]

    def __hash__(self) -> int:
        # computed once: plans key several caches a call (a dataclass's
        # generated hash rebuilds and hashes the tuple of every field each time)
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self):
        # without the kept hash: str hashes differ between processes
        return {k: v for k, v in self.__dict__.items() if k != "_hash"}

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of the result as the user sees it (batched or not)."""
        spatial = self.out_size[3 - self.ndim :]
        lead = (self.batch, self.c_out) if self.batched else (self.c_out,)
        return lead + spatial

    @property
    def input_shape5(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.c_in) + self.in_size

    @property
    def output_shape5(self) -> tuple[int, int, int, int, int]:
        return (self.batch, self.c_out) + self.out_size

    @property
    def weight_shape5(self) -> tuple[int, int, int, int, int]:
        if self.op == "conv":
            return (self.c_out, self.c_in // self.groups) + self.kernel
        return (self.c_in, self.c_out // self.groups) + self.kernel

    @property
    def padding_lo(self) -> tuple[int, int, int]:
        """The low padding of each dim."""
        return tuple(p[0] for p in self.padding)

    @property
    def spans(self) -> tuple[int, int, int]:
        """Positions one output reads (conv) or one input reaches (transposed)
        per dim: ``dilation * (k - 1) + 1``."""
        return tuple(self.dilation[i] * (self.kernel[i] - 1) + 1 for i in range(3))

    @property
    def padded_size(self) -> tuple[int, int, int]:
        """Conv: the padded input, ``L + lo + hi`` per dim."""
        return tuple(self.in_size[i] + self.padding[i][0] + self.padding[i][1] for i in range(3))

    @property
    def extended_size(self) -> tuple[int, int, int]:
        """Transposed op: every position reached before the padding is removed,
        ``(L - 1) * stride + dilation * (k - 1) + 1`` per dim (the buffer the
        non-zero padding modes fold back onto the output)."""
        return tuple((self.in_size[i] - 1) * self.stride[i] + self.spans[i] for i in range(3))

    @property
    def folds(self) -> bool:
        """Transposed op: whether the result goes through the extended buffer
        and the fold (every padding mode but zeros)."""
        return self.op == "conv_transpose" and self.padding_mode != "zeros"

    @property
    def user(self) -> PlanView:
        """The plan as the user wrote it: shapes and per-dim parameters with the
        canonical form's leading singleton dims dropped."""
        k = 3 - self.ndim
        lead = (self.batch, self.c_in) if self.batched else (self.c_in,)
        return PlanView(
            op=self.op,
            input_shape=lead + self.in_size[k:],
            weight_shape=self.weight_shape5[:2] + self.kernel[k:],
            output_shape=self.output_shape,
            stride=self.stride[k:],
            padding=self.padding[k:],
            dilation=self.dilation[k:],
            output_padding=self.output_padding[k:],
            groups=self.groups,
            padding_mode=self.padding_mode,
            dtype=self.dtype,
            has_bias=self.has_bias,
        )

    @property
    def reduction_length(self) -> int:
        """Number of products summed into one output element (at most)."""
        # conv: C_in/groups channels times all taps. Transposed: an output
        # gathers from C_in/groups channels and at most all taps (an upper bound).
        return self.c_in // self.groups * self.kernel[0] * self.kernel[1] * self.kernel[2]

    @property
    def flops(self) -> int:
        """Multiply-adds times two, counting every tap (padding included)."""
        k = self.kernel[0] * self.kernel[1] * self.kernel[2]
        if self.op == "conv":
            outs = self.batch * self.c_out * self.out_size[0] * self.out_size[1] * self.out_size[2]
            return 2 * outs * (self.c_in // self.groups) * k
        ins = self.batch * self.c_in * self.in_size[0] * self.in_size[1] * self.in_size[2]
        return 2 * ins * (self.c_out // self.groups) * k


@dataclass(frozen=True)
class PlanView:
    """A :class:`ConvPlan` in the user's terms (``ConvPlan.user``): shapes as the
    arrays have them, one entry per spatial dim of the call."""

    op: str
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    output_padding: tuple[int, ...]
    groups: int
    padding_mode: str
    dtype: np.dtype
    has_bias: bool

    @property
    def bias_shape(self) -> tuple[int, ...] | None:
        return (self.output_shape[-len(self.stride) - 1],) if self.has_bias else None

    def kwargs(self) -> dict:
        """The op's keyword arguments that rebuild this plan (``conv(x, w, **kwargs)``)."""
        kw = dict(
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            padding_mode=self.padding_mode,
        )
        if self.op == "conv_transpose":
            kw["output_padding"] = self.output_padding
        return kw


def _canon(values: tuple, n: int, fill):
    return (fill,) * (3 - n) + tuple(values)


def check_dtype(dtype, name: str) -> None:
    """Refuse dtypes that are not numbers (bool, object, strings, ...)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iufc":
        raise TypeError(
            f"{name} has dtype {dtype}, which is not supported; numbaconv works on "
            "float32, float64, complex64 and complex128 arrays "
            f"(convert with {name}.astype(np.float32) or np.float64)"
        )


def result_dtype(*dtypes) -> np.dtype:
    """The compute/result dtype: NumPy promotion, which must be float or complex."""
    dt = np.result_type(*dtypes)
    if dt in _COMPUTE_DTYPES:
        return dt
    names = ", ".join(str(np.dtype(d)) for d in dtypes)
    hint = "np.float64" if dt.kind in "iu" else "np.float32"
    raise TypeError(
        f"the arrays' dtypes ({names}) promote to {dt}, which numbaconv does not "
        "compute in (it computes in float32, float64, complex64 and complex128); "
        f"cast the input and weight first, e.g. input.astype({hint}). Integer "
        "convolution is not done in integer arithmetic"
    )


def _parse_arrays(input_shape, weight_shape, bias_shape, groups, ndim, op):
    """Shared checks of the input/weight/bias shapes and groups.

    Returns ``(n, batched, batch, c_in, c_out, in_sp, k_sp, groups)``. The
    weight is ``(C_out, C_in/groups, *k)`` for conv and ``(C_in,
    C_out/groups, *k)`` for the transposed op.
    """
    input_shape = tuple(int(s) for s in input_shape)
    weight_shape = tuple(int(s) for s in weight_shape)
    layout = "(C_out, C_in/groups, *kernel)" if op == "conv" else "(C_in, C_out/groups, *kernel)"
    kind = "convolution" if op == "conv" else "transposed convolution"
    wn = len(weight_shape)
    if ndim is None:
        if wn not in (3, 4, 5):
            raise ValueError(
                f"weight must have 3, 4 or 5 dimensions {layout}, got weight.ndim={wn} "
                f"with shape {weight_shape}"
            )
        ndim = wn - 2
    elif wn != ndim + 2:
        raise ValueError(
            f"weight must have {ndim + 2} dimensions {layout} for a {ndim}-d {kind}, "
            f"got weight.ndim={wn} with shape {weight_shape}"
        )
    n = ndim
    if len(input_shape) == n + 2:
        batched = True
        batch, c_in = input_shape[:2]
    elif len(input_shape) == n + 1:
        batched = False
        batch, c_in = 1, input_shape[0]
    else:
        raise ValueError(
            f"input must have {n + 1} (unbatched) or {n + 2} (batched) dimensions "
            f"for a {n}-d {kind}, got input.ndim={len(input_shape)} with shape "
            f"{input_shape}"
        )
    in_sp = input_shape[-n:]
    k_sp = weight_shape[2:]

    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r} of type {type(groups).__name__}")
    groups = operator.index(groups)
    if groups <= 0:
        raise ValueError(f"groups must be positive, got groups={groups}")
    for name, value in (("input", input_shape), ("weight", weight_shape)):
        if any(s == 0 for s in (value[1:] if name == "input" and batched else value)):
            raise ValueError(
                f"{name} has an empty dimension (shape {value}); only the batch dimension may be 0"
            )
    if c_in % groups:
        raise ValueError(
            f"groups must divide the input channels, but groups={groups} does not divide C_in={c_in}"
        )
    if op == "conv":
        c_out, c_per_group = weight_shape[:2]
        if c_out % groups:
            raise ValueError(
                f"groups must divide the output channels, but groups={groups} does not "
                f"divide C_out=weight.shape[0]={c_out}"
            )
        if c_per_group * groups != c_in:
            raise ValueError(
                f"channel mismatch: input has C_in={c_in} channels but weight.shape[1]"
                f"={c_per_group} with groups={groups} expects {c_per_group * groups} "
                f"(input shape {input_shape}, weight shape {weight_shape})"
            )
    else:
        if weight_shape[0] != c_in:
            raise ValueError(
                f"channel mismatch: input has C_in={c_in} channels but weight.shape[0]="
                f"{weight_shape[0]}; the transposed weight is {layout} "
                f"(input shape {input_shape}, weight shape {weight_shape})"
            )
        c_out = weight_shape[1] * groups
    if bias_shape is not None and tuple(bias_shape) != (c_out,):
        raise ValueError(f"bias must have shape (C_out,) = ({c_out},), got shape {tuple(bias_shape)}")
    return n, batched, batch, c_in, c_out, in_sp, k_sp, groups


def _check_padding_mode_name(padding_mode) -> None:
    if not isinstance(padding_mode, str):
        raise TypeError(f"padding_mode must be a str, got {padding_mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"padding_mode must be one of {', '.join(map(repr, PADDING_MODES))}, got {padding_mode!r}"
        )


def _plan(
    op,
    n,
    batched,
    batch,
    c_in,
    c_out,
    groups,
    in_sp,
    k_sp,
    out_sp,
    stride_t,
    dilation_t,
    pads,
    padding_mode,
    dtype,
    bias_shape,
    opad,
) -> ConvPlan:
    """The :class:`ConvPlan` of validated arguments, in the canonical 3-D form."""
    _check_representable(op, batch, c_out, out_sp, np.dtype(dtype))
    return ConvPlan(
        op=op,
        ndim=n,
        batched=batched,
        batch=batch,
        c_in=c_in,
        c_out=c_out,
        groups=groups,
        in_size=_canon(in_sp, n, 1),
        kernel=_canon(k_sp, n, 1),
        out_size=_canon(out_sp, n, 1),
        stride=_canon(stride_t, n, 1),
        dilation=_canon(dilation_t, n, 1),
        padding=_canon(pads, n, (0, 0)),
        padding_mode=padding_mode,
        dtype=np.dtype(dtype),
        has_bias=bias_shape is not None,
        output_padding=_canon(opad, n, 0),
    )


def _check_representable(op, batch, c_out, out_sp, dtype) -> None:
    """Refuse a result no array can hold (huge stride, padding or dilation), by name."""
    count = batch * c_out
    for n in out_sp:
        count *= n
    if count * dtype.itemsize > np.iinfo(np.intp).max or any(n > MAX_INT for n in out_sp):
        params = "stride, padding, dilation and output_padding" if op != "conv" else "padding and dilation"
        raise ValueError(
            f"the result would have spatial size {tuple(out_sp)} ({count} elements of {dtype.itemsize} "
            f"bytes), more than any array can hold; check the {params}"
        )


def _exact(value):
    """A built-in NumPy dtype as its type string (exact for those; NumPy's
    repr of a dtype took 4.5 us, a third of a kept plan's look-up), anything
    else as it is."""
    if isinstance(value, np.dtype) and value.isbuiltin == 1:
        return ("dtype", value.str)
    return value


def _memo_plan(make):
    """``make`` with its plans kept per arguments (a call validates and builds
    them in ~30 us; a small conv takes ~150 us). Only successful plans are
    kept: bad arguments raise every time. Unhashable arguments are not kept."""
    cache: dict = {}

    @functools.wraps(make)
    def wrapper(*args, **kwargs):
        try:
            hash((args, tuple(kwargs.items())))  # lists, arrays: not kept
        except TypeError:
            return make(*args, **kwargs)
        # the text tells apart what compares equal across types (True == 1,
        # 1.0 == 1: a bool stride is refused, an int is not); hashable
        # arguments are ints, strings, dtypes, None and tuples of them, whose
        # text is exact
        key = repr((args, sorted((k, _exact(v)) for k, v in kwargs.items())))
        plan = cache.get(key)
        if plan is None:
            plan = make(*args, **kwargs)
            if len(cache) >= 512:
                cache.clear()
            cache[key] = plan
        return plan

    return wrapper


@_memo_plan
def make_conv_plan(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    *,
    padding_mode: str = "zeros",
    dtype=np.float64,
    ndim: int | None = None,
) -> ConvPlan:
    """Validate convolution arguments and return the :class:`ConvPlan`.

    ``ndim`` is the number of spatial dimensions the caller expects (``conv2d``
    passes 2); ``None`` takes it from ``weight_shape``.
    """
    n, batched, batch, c_in, c_out, in_sp, k_sp, groups = _parse_arrays(
        input_shape, weight_shape, bias_shape, groups, ndim, "conv"
    )
    stride_t = normalize_tuple(stride, n, "stride", minimum=1)
    dilation_t = normalize_tuple(dilation, n, "dilation", minimum=1)
    pads = normalize_padding(padding, n, in_sp, k_sp, stride_t, dilation_t)
    _check_padding_mode_name(padding_mode)
    check_padding_mode(padding_mode, in_sp, pads)

    out_sp = []
    for i in range(n):
        lo, hi = pads[i]
        span = dilation_t[i] * (k_sp[i] - 1) + 1
        if in_sp[i] + lo + hi < span:
            raise ValueError(
                f"kernel larger than the padded input in spatial dim {i}: input size "
                f"{in_sp[i]} padded by ({lo}, {hi}) is {in_sp[i] + lo + hi}, but the "
                f"kernel of size {k_sp[i]} with dilation {dilation_t[i]} spans {span}"
            )
        out_sp.append(conv_output_size(in_sp[i], k_sp[i], stride_t[i], lo, hi, dilation_t[i]))

    return _plan(
        "conv",
        n,
        batched,
        batch,
        c_in,
        c_out,
        groups,
        in_sp,
        k_sp,
        out_sp,
        stride_t,
        dilation_t,
        pads,
        padding_mode,
        dtype,
        bias_shape,
        (0,) * n,
    )


def make_filter_plan(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    padding: tuple[tuple[int, int], ...],
    groups: int,
    modes: tuple[str, ...],
    dtype,
) -> ConvPlan:
    """The plan of a SciPy front-end's filter: a conv at stride and dilation 1
    with padding ``(lo, hi)`` per spatial dim and a mode per spatial dim from
    :data:`FILTER_MODES` (any padding: the index maps fold it as often as it
    takes, where PyTorch limits 'reflect' and 'circular' to one fold)."""
    n = len(weight_shape) - 2
    for m in modes:
        if m not in FILTER_MODES:
            raise ValueError(f"padding mode must be one of {', '.join(map(repr, FILTER_MODES))}, got {m!r}")
    if len(modes) != n:
        raise ValueError(f"{len(modes)} padding modes for {n} spatial dims")
    plan = make_conv_plan(input_shape, weight_shape, None, 1, tuple(padding), 1, groups, dtype=dtype)
    mode = modes[0] if len(set(modes)) == 1 else _canon(tuple(modes), n, "zeros")
    return dataclasses.replace(plan, padding_mode=mode)


def conv_transpose_output_size(
    size: int, kernel: int, stride: int, lo: int, hi: int, dilation: int, output_padding: int = 0
) -> int:
    """``(size - 1) * stride - lo - hi + dilation * (kernel - 1) + output_padding + 1``."""
    return (size - 1) * stride - lo - hi + dilation * (kernel - 1) + output_padding + 1


def _output_padding_for(in_sp, k_sp, stride_t, pads, dilation_t, output_size) -> tuple[int, ...]:
    n = len(in_sp)
    if _is_int(output_size) or not isinstance(output_size, (tuple, list)):
        raise TypeError(
            f"output_size must be a tuple of {n} ints (the spatial sizes, optionally "
            f"preceded by the batch and channel sizes), got {output_size!r}"
        )
    if len(output_size) not in (n, n + 1, n + 2):
        raise ValueError(
            f"output_size must have {n} entries (one per spatial dimension), or {n + 1} "
            f"or {n + 2} with the channel and batch sizes in front, got {output_size!r} "
            f"of length {len(output_size)}"
        )
    if not all(_is_int(v) for v in output_size):
        raise TypeError(f"output_size must contain ints only, got {output_size!r}")
    want = [operator.index(v) for v in output_size[len(output_size) - n :]]
    lo_sizes = [
        conv_transpose_output_size(in_sp[i], k_sp[i], stride_t[i], *pads[i], dilation_t[i]) for i in range(n)
    ]
    hi_sizes = [lo_sizes[i] + stride_t[i] - 1 for i in range(n)]
    if any(not lo_sizes[i] <= want[i] <= hi_sizes[i] for i in range(n)):
        raise ValueError(
            f"requested an output size of {want}, but valid sizes range from {lo_sizes} "
            f"to {hi_sizes} (for an input of {list(in_sp)})"
        )
    return tuple(want[i] - lo_sizes[i] for i in range(n))


def output_padding_for(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    output_size: tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    padding=0,
    dilation: int | tuple[int, ...] = 1,
) -> tuple[int, ...]:
    """The ``output_padding`` that makes ``conv_transpose`` return ``output_size``.

    ``input_shape`` is the transposed op's input (batched or not) and
    ``weight_shape`` its weight ``(C_in, C_out/groups, *k)``; ``output_size``
    gives the spatial sizes (leading batch/channel entries are ignored, as in
    PyTorch). Valid sizes per dim run from ``(L - 1) * stride - lo - hi +
    dilation * (k - 1) + 1`` to that plus ``stride - 1``; anything else
    raises ``ValueError`` stating the range.

    Shape
    -----
    Returns one int per spatial dim.
    """
    weight_shape = tuple(int(s) for s in weight_shape)
    n = len(weight_shape) - 2
    if n not in (1, 2, 3):
        raise ValueError(f"weight must have 3, 4 or 5 dimensions, got shape {weight_shape}")
    in_sp = tuple(int(s) for s in input_shape)[-n:]
    k_sp = weight_shape[2:]
    stride_t = normalize_tuple(stride, n, "stride", minimum=1)
    dilation_t = normalize_tuple(dilation, n, "dilation", minimum=1)
    pads = normalize_padding(padding, n, in_sp, k_sp, stride_t, dilation_t, transposed=True)
    return _output_padding_for(in_sp, k_sp, stride_t, pads, dilation_t, output_size)


@_memo_plan
def make_conv_transpose_plan(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    stride=1,
    padding=0,
    output_padding=0,
    groups=1,
    dilation=1,
    *,
    output_size=None,
    padding_mode: str = "zeros",
    dtype=np.float64,
    ndim: int | None = None,
) -> ConvPlan:
    """Validate transposed-convolution arguments and return the :class:`ConvPlan`.

    The argument order is PyTorch's ``conv_transpose{1,2,3}d``; ``output_size``
    (spatial sizes, or the full shape) replaces ``output_padding``.
    """
    n, batched, batch, c_in, c_out, in_sp, k_sp, groups = _parse_arrays(
        input_shape, weight_shape, bias_shape, groups, ndim, "conv_transpose"
    )
    stride_t = normalize_tuple(stride, n, "stride", minimum=1)
    dilation_t = normalize_tuple(dilation, n, "dilation", minimum=1)
    pads = normalize_padding(padding, n, in_sp, k_sp, stride_t, dilation_t, transposed=True)
    opad = normalize_tuple(output_padding, n, "output_padding", minimum=0)
    if output_size is not None:
        if any(opad):
            raise ValueError(
                f"give output_padding or output_size, not both (got output_padding="
                f"{output_padding!r} and output_size={output_size!r})"
            )
        opad = _output_padding_for(in_sp, k_sp, stride_t, pads, dilation_t, output_size)
    for i in range(n):
        if opad[i] >= stride_t[i] and opad[i] >= dilation_t[i]:
            raise ValueError(
                f"output_padding must be smaller than either stride or dilation, but "
                f"output_padding={output_padding!r} has {opad[i]} in spatial dim {i} "
                f"where stride={stride_t[i]} and dilation={dilation_t[i]}"
            )
    _check_padding_mode_name(padding_mode)
    out_sp = [
        conv_transpose_output_size(in_sp[i], k_sp[i], stride_t[i], *pads[i], dilation_t[i], opad[i])
        for i in range(n)
    ]
    for i in range(n):
        if out_sp[i] < 1:
            raise ValueError(
                f"padding too large: the output of spatial dim {i} would have size {out_sp[i]} "
                f"((L - 1) * stride - lo - hi + dilation * (k - 1) + output_padding + 1 with "
                f"L={in_sp[i]}, stride={stride_t[i]}, padding={pads[i]}, dilation="
                f"{dilation_t[i]}, k={k_sp[i]}, output_padding={opad[i]})"
            )
    # the adjoint of conv with this mode pads the *output* of the transposed op
    check_padding_mode(padding_mode, out_sp, pads, what="output of the transposed convolution")
    return _plan(
        "conv_transpose",
        n,
        batched,
        batch,
        c_in,
        c_out,
        groups,
        in_sp,
        k_sp,
        out_sp,
        stride_t,
        dilation_t,
        pads,
        padding_mode,
        dtype,
        bias_shape,
        opad,
    )


def check_padding_mode(mode: str, in_sp, pads, what: str = "input") -> None:
    """PyTorch's limits on padding for the non-zero modes (``in_sp``: the padded array)."""
    for i, (size, (lo, hi)) in enumerate(zip(in_sp, pads)):
        if mode == "reflect" and max(lo, hi) >= size:
            raise ValueError(
                f"padding_mode='reflect' needs padding smaller than the size of the {what}, "
                f"but spatial dim {i} has size {size} and padding ({lo}, {hi})"
            )
        if mode == "circular" and max(lo, hi) > size:
            raise ValueError(
                f"padding_mode='circular' needs padding no larger than the size of the "
                f"{what}, but spatial dim {i} has size {size} and padding ({lo}, {hi})"
            )


def conv_output_shape(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    padding=0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> tuple[int, ...]:
    """Shape of ``conv(input, weight, ...)`` for arrays of these shapes.

    Shape
    -----
    Per spatial dim: ``floor((L + lo + hi - dilation * (k - 1) - 1) / stride) + 1``.
    The result keeps the input's batched/unbatched form, with ``C_out =
    weight_shape[0]`` channels.
    """
    plan = make_conv_plan(input_shape, weight_shape, None, stride, padding, dilation, groups)
    return plan.output_shape


def conv_transpose_output_shape(
    input_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    padding=0,
    output_padding: int | tuple[int, ...] = 0,
    groups: int = 1,
    dilation: int | tuple[int, ...] = 1,
    *,
    output_size: tuple[int, ...] | None = None,
) -> tuple[int, ...]:
    """Shape of ``conv_transpose(input, weight, ...)`` for arrays of these shapes.

    Shape
    -----
    Per spatial dim: ``(L - 1) * stride - lo - hi + dilation * (k - 1) +
    output_padding + 1``. The result keeps the input's batched/unbatched form,
    with ``C_out = weight_shape[1] * groups`` channels.
    """
    plan = make_conv_transpose_plan(
        input_shape,
        weight_shape,
        None,
        stride,
        padding,
        output_padding,
        groups,
        dilation,
        output_size=output_size,
    )
    return plan.output_shape


def make_plan(op: str, input, weight, bias=None, *, dtype=None, **params) -> ConvPlan:
    """The :class:`ConvPlan` of ``op`` for arrays or shapes.

    ``input``, ``weight`` and ``bias`` are arrays (their shapes and dtypes are
    used) or shape tuples; ``dtype`` overrides the promoted dtype (float32 when
    only shapes are given). ``params`` are the op's keyword arguments.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(map(repr, OPS))}, got {op!r}")
    xs, xd = _shape_and_dtype(input, "input")
    ws, wd = _shape_and_dtype(weight, "weight")
    bs, bd = _shape_and_dtype(bias, "bias")
    if dtype is None:
        found = [d for d in (xd, wd, bd) if d is not None]
        dtype = result_dtype(*found) if found else np.dtype(np.float32)
    dtype = np.dtype(dtype)
    if dtype not in _COMPUTE_DTYPES:
        raise TypeError(
            f"dtype must be one of {', '.join(str(d) for d in _COMPUTE_DTYPES)} (numbaconv's compute "
            f"dtypes), got {dtype}"
        )
    make = make_conv_plan if op == "conv" else make_conv_transpose_plan
    return make(xs, ws, bs, dtype=dtype, **params)


def _shape_and_dtype(value, name: str = "input"):
    """(shape, dtype) of an array, (shape, None) of a shape tuple, (None, None) of None."""
    if value is None:
        return None, None
    if isinstance(value, tuple | list) and all(isinstance(v, int | np.integer) for v in value):
        return tuple(int(v) for v in value), None
    if isinstance(value, tuple) and value and all(isinstance(v, numbers.Real) for v in value):
        raise TypeError(f"the {name} shape must contain ints only, got {value!r}")
    arr = value if hasattr(value, "shape") and hasattr(value, "dtype") else np.asarray(value)
    return tuple(arr.shape), np.dtype(arr.dtype)


def tap_table(out: int, kernel: int, stride: int, dilation: int, lo: int, size: int, mode: str):
    """Input index read by each (output position, kernel tap) in one dimension.

    Entry ``[o, k]`` is the input index for padded position
    ``o * stride + k * dilation - lo``, folded back by the padding mode, or -1
    where ``mode == "zeros"`` and it falls into the padding. Shape
    ``(out, kernel)``, dtype int64.
    """
    p = (
        np.arange(out, dtype=np.int64)[:, None] * stride
        + np.arange(kernel, dtype=np.int64)[None, :] * dilation
        - lo
    )
    return fold_index(p, size, mode)


def fold_index(p, size: int, mode: str):
    """Input index of (unpadded) positions ``p`` (any shape), folded back into
    ``[0, size)`` by the padding mode, or -1 outside it for ``"zeros"``."""
    if mode == "zeros":
        return np.where((p >= 0) & (p < size), p, -1)
    if mode == "replicate":
        return np.clip(p, 0, size - 1)
    if mode == "circular":
        return np.mod(p, size)
    if mode == "symmetric":  # period 2 * size, the edge repeated
        q = np.mod(p, 2 * size)
        return np.where(q >= size, 2 * size - 1 - q, q)
    # reflect, without repeating the edge; period 2 * (size - 1)
    if size == 1:
        return np.zeros_like(p)
    period = 2 * (size - 1)
    q = np.mod(p, period)
    return np.where(q >= size, period - q, q)


def gather_table(out: int, kernel: int, stride: int, dilation: int, lo: int, size: int):
    """Input index that output ``o`` of the transposed op gathers at tap ``k``.

    The inverse of ``tap_table(size, kernel, stride, dilation, lo, out,
    "zeros")``: entry ``[o, k]`` is the input ``i`` with ``i * stride + k *
    dilation - lo == o``, or -1 when there is none (not divisible, or outside
    ``[0, size)``). Shape ``(out, kernel)``, dtype int64.
    """
    p = np.arange(out, dtype=np.int64)[:, None] + lo - np.arange(kernel, dtype=np.int64)[None, :] * dilation
    i = p // stride
    ok = (p >= 0) & (p - i * stride == 0) & (i < size)
    return np.where(ok, i, -1)


# Compact tap maps. A (positions x taps) table costs positions * taps entries:
# 537 MB for a 65536-sample signal and a 1025-tap filter. The kernels take
# instead a 1-D map ``f`` and a geometry ``geo = (a, b, c, taps, positions)``
# with ``table[o, k] == f[o * a + k * b + c]`` (see ``expand``).


def _sparse(length: int, out: int, kernel: int) -> bool:
    """Whether a compact map of ``length`` positions would be mostly unread by
    ``out`` positions x ``kernel`` taps (huge padding, stride or dilation):
    the dense (out x kernel) table is then the smaller one, so the maps stay
    in proportion to the work, not to the padding."""
    return length > 4 * out * kernel + 4096


def dense_tap_map(table):
    """``(f, geo)`` of a full (positions x taps) table: ``geo = (taps, 1, 0, ...)``."""
    out, kernel = table.shape
    geo = np.array([kernel, 1, 0, kernel, out], np.int64)
    return np.ascontiguousarray(table, dtype=np.int64).ravel(), geo


def conv_tap_map(size: int, out: int, kernel: int, stride: int, dilation: int, lo: int, hi: int, mode: str):
    """``(f, geo)`` for ``tap_table(out, kernel, stride, dilation, lo, size, mode)``.

    ``f[q]`` is the input index of padded position ``q`` (``q - lo`` folded by
    the mode, or -1 in zero padding), for ``q`` in ``[0, lo + size + hi)``; or,
    where that would be mostly unread, the table itself (:func:`dense_tap_map`).
    """
    if _sparse(lo + size + hi, out, kernel):
        return dense_tap_map(tap_table(out, kernel, stride, dilation, lo, size, mode))
    f = tap_table(lo + size + hi, 1, 1, 1, lo, size, mode)[:, 0].copy()
    return f, np.array([stride, dilation, 0, kernel, out], dtype=np.int64)


def gather_tap_map(out: int, kernel: int, stride: int, dilation: int, lo: int, size: int):
    """``(f, geo)`` for ``gather_table(out, kernel, stride, dilation, lo, size)``.

    Output ``o`` at tap ``k`` reads ``f[o - k * dilation + lo + dilation * (kernel - 1)]``,
    the input ``i`` with ``i * stride == o + lo - k * dilation``, or -1 (or the
    dense table, :func:`dense_tap_map`, where that map would be mostly unread).
    """
    span = dilation * (kernel - 1)
    if _sparse(out + lo + span, out, kernel):
        return dense_tap_map(gather_table(out, kernel, stride, dilation, lo, size))
    v = np.arange(out + lo + span, dtype=np.int64) - span
    i = v // stride
    f = np.where((v >= 0) & (v - i * stride == 0) & (i < size), i, -1)
    return f, np.array([1, -dilation, lo + span, kernel, out], dtype=np.int64)


def scatter_tap_map(size: int, out: int, kernel: int, stride: int, dilation: int, lo: int):
    """``(f, geo)`` for ``tap_table(size, kernel, stride, dilation, lo, out, "zeros")``:
    input ``i`` at tap ``k`` adds into output ``f[i * stride + k * dilation]`` (or nowhere, -1)."""
    extent = (size - 1) * stride + dilation * (kernel - 1) + 1
    if _sparse(extent, size, kernel):
        return dense_tap_map(tap_table(size, kernel, stride, dilation, lo, out, "zeros"))
    f = tap_table(extent, 1, 1, 1, lo, out, "zeros")[:, 0].copy()
    return f, np.array([stride, dilation, 0, kernel, size], dtype=np.int64)


def expand(f, geo):
    """The full (positions x taps) table of a tap map (for tests and small cases)."""
    a, b, c, taps, positions = (int(v) for v in geo)
    o = np.arange(positions, dtype=np.int64)[:, None]
    k = np.arange(taps, dtype=np.int64)[None, :]
    return f[o * a + k * b + c]


@functools.lru_cache(maxsize=256)
def conv_tap_maps(plan: ConvPlan) -> tuple:
    """The conv's compact tap maps of the three dims, ``(fd, gd, fh, gh, fw, gw)``
    (:func:`conv_tap_map`: output position x tap -> input index, -1 for a zero).
    Kept per plan (making them took ~20 us of each GEMM-path call); the
    kernels only read them (writeable: a read-only array is another Numba
    type, another compile)."""
    maps = []
    for i in range(3):
        maps += conv_tap_map(
            plan.in_size[i], plan.out_size[i], plan.kernel[i], plan.stride[i], plan.dilation[i],
            *plan.padding[i], plan.mode(i),
        )  # fmt: skip
    return tuple(maps)


def gather_tap_maps(plan: ConvPlan, lo, size) -> tuple:
    """The transposed op's gather maps of the three dims for a target of
    ``size`` with padding ``lo`` removed (:func:`gather_tap_map`)."""
    maps = []
    for i in range(3):
        maps += gather_tap_map(
            size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo[i], plan.in_size[i]
        )
    return tuple(maps)


def scatter_tap_maps(plan: ConvPlan, lo, size) -> tuple:
    """Input position x tap -> output position (or -1) of the transposed op,
    three dims (:func:`scatter_tap_map`)."""
    maps = []
    for i in range(3):
        maps += scatter_tap_map(
            plan.in_size[i], size[i], plan.kernel[i], plan.stride[i], plan.dilation[i], lo[i]
        )
    return tuple(maps)
