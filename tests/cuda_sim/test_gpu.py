"""Every GPU kernel against the CPU paths (themselves checked against the
NumPy reference and PyTorch), device routing and its errors, the GPU rows of
the dispatcher. Tiny shapes: the simulator runs one OS thread per CUDA thread."""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

import numbaconv as nc
from numbaconv import config, dispatch, shapes

from ..conftest import assert_close, random_array, tolerance
from ..reference import conv_reference

CONV = [
    # (input, weight, params)
    ((1, 2, 9), (3, 2, 3), dict(stride=2, padding=((2, 1),), dilation=2)),
    ((2, 4, 5, 7), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)),
    ((1, 2, 5, 6), (2, 2, 3, 3), dict(padding="same", padding_mode="reflect")),
    ((1, 3, 4, 5), (3, 1, 2, 3), dict(padding=1, groups=3, padding_mode="circular")),
    ((1, 2, 3, 4, 5), (2, 2, 2, 3, 2), dict(stride=(1, 2, 1), padding=1, padding_mode="replicate")),
]


def _pads(plan):
    return [tuple(p) for p in plan.padding[3 - plan.ndim :]]


def _names(op):
    """The GPU rows of ``op`` from the dispatcher's table."""
    return [r.name for r in dispatch.rows(op, "cuda")]


def _refused(op, method, plan, call) -> bool:
    """A row that cannot run here (the fft rows: the simulator has no cuFFT;
    their algorithm is tested below with NumPy standing in for CuPy) must
    refuse with its reason; returns whether it did."""
    why = dispatch.row(op, method, "cuda").supports(plan)
    if why is None:
        return False
    with pytest.raises(nc.UnsupportedMethodError, match="cannot do this case on cuda"):
        call()
    return True


@pytest.mark.parametrize("method", _names("conv"))
@pytest.mark.parametrize("case", CONV, ids=lambda c: f"{len(c[0]) - 2}d-{c[2].get('padding_mode', 'zeros')}")
def test_conv_methods(case, method):
    xs, ws, kw = case
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    plan = shapes.make_plan("conv", x, w, b, **kw)
    call = lambda: nc.conv(x, w, b, method=method, device="cuda", **kw)  # noqa: E731
    if _refused("conv", method, plan, call):
        return
    y = call()
    assert isinstance(y, np.ndarray)  # host in, host out
    nd = plan.ndim
    ref = conv_reference(
        x, w, b, list(plan.stride[3 - nd :]), _pads(plan), list(plan.dilation[3 - nd :]), plan.groups,
        plan.padding_mode,
    )  # fmt: skip
    tol = tolerance(np.float64, plan.reduction_length, x, w, b, stride=list(plan.stride[3 - nd :]),
                    pads=_pads(plan), dilation=list(plan.dilation[3 - nd :]), groups=plan.groups,
                    mode=plan.padding_mode)  # fmt: skip
    assert_close(y, ref, tol, method)


TRANSPOSED = [
    ((1, 2, 5), (2, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    (
        (2, 4, 4, 5),
        (4, 3, 3, 2),
        dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2)),
    ),
    ((1, 2, 4, 4), (2, 2, 3, 3), dict(stride=2, padding=1, padding_mode="circular")),
    ((1, 2, 3, 3, 2), (2, 1, 2, 2, 3), dict(stride=(2, 1, 2), padding=(0, 1, 1), padding_mode="reflect")),
]


@pytest.mark.parametrize("method", _names("conv_transpose"))
@pytest.mark.parametrize(
    "case", TRANSPOSED, ids=lambda c: f"{len(c[0]) - 2}d-{c[2].get('padding_mode', 'zeros')}"
)
def test_transposed_methods(case, method):
    xs, ws, kw = case
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    b = rng.standard_normal(ws[1] * kw.get("groups", 1))
    plan = shapes.make_plan("conv_transpose", x, w, b, **kw)
    call = lambda: nc.conv_transpose(x, w, b, method=method, device="cuda", **kw)  # noqa: E731
    if _refused("conv_transpose", method, plan, call):
        return
    ref = nc.conv_transpose(x, w, b, method="scatter", **kw)  # the CPU path, checked elsewhere
    y = call()
    scale = float(np.max(np.abs(ref))) + 1.0
    assert_close(y, ref, 1e-12 * scale * np.prod(ws[1:]), method)


@pytest.mark.parametrize(
    "op, method, dtype",
    [
        ("conv", "direct", np.float32),
        ("conv", "gemm", np.complex64),
        ("conv", "direct", np.complex128),
        ("conv_transpose", "gather", np.complex64),
        ("conv_transpose", "scatter", np.float32),
        ("conv_transpose", "gemm", np.float32),
    ],
)
def test_dtypes(op, method, dtype):
    rng = np.random.default_rng(2)
    x = random_array(rng, (1, 2, 5, 6), dtype)
    w = random_array(rng, (2, 2, 3, 2), dtype)
    fn = nc.conv if op == "conv" else nc.conv_transpose
    kw = dict(stride=2, padding=1)
    y = fn(x, w, method=method, device="cuda", **kw)
    ref = fn(x.astype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64), w, **kw)
    assert y.dtype == np.dtype(dtype)
    eps = np.finfo(np.dtype(dtype)).eps
    assert_close(y, ref, 16 * eps * float(np.max(np.abs(ref)) + 1) * 12, f"{method} {np.dtype(dtype)}")


def test_scatter_refuses_complex_and_fft_says_why():
    x = np.ones((1, 2, 4, 4), np.complex64)
    with pytest.raises(nc.UnsupportedMethodError, match="on cuda: cuda.atomic.add has no complex type"):
        nc.conv_transpose2d(x, np.ones((2, 2, 2, 2), np.complex64), method="scatter", device="cuda")
    with pytest.raises(nc.UnsupportedMethodError, match="the CUDA simulator has no cuFFT"):
        nc.conv2d(x.real.copy(), x[:, :, :2, :2].real.copy(), method="fft", device="cuda")


def test_device_arrays_stay_on_the_device():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    ref = nc.conv2d(x, w, b, padding=1)
    xd, wd, bd = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    y = nc.conv2d(xd, wd, bd, padding=1)  # device="auto": data on the GPU
    assert nc.cuda.is_device_array(y) and not isinstance(y, np.ndarray)
    np.testing.assert_allclose(y.copy_to_host(), ref, rtol=1e-12, atol=1e-12)
    out = cuda.device_array((1, 3, 5, 5))
    assert nc.conv2d(xd, wd, bd, padding=1, out=out) is out
    np.testing.assert_allclose(out.copy_to_host(), ref, rtol=1e-12, atol=1e-12)
    host_out = np.empty((1, 3, 5, 5))
    assert nc.conv2d(x, w, b, padding=1, device="cuda", out=host_out) is host_out
    np.testing.assert_allclose(host_out, ref, rtol=1e-12, atol=1e-12)
    wt = w  # as a transposed weight: (C_in=3, C_out=2, 3, 3)
    yt = nc.conv_transpose2d(cuda.to_device(ref), cuda.to_device(wt), stride=2)
    assert nc.cuda.is_device_array(yt)
    want = nc.conv_transpose2d(ref, wt, stride=2)
    np.testing.assert_allclose(yt.copy_to_host(), want, rtol=1e-12, atol=1e-12)


def test_routing_errors_say_why():
    x, w = np.ones((1, 2, 4, 4)), np.ones((2, 2, 3, 3))
    xd, wd = cuda.to_device(x), cuda.to_device(w)
    with pytest.raises(ValueError, match="input is a CUDA device array but weight is a host array"):
        nc.conv2d(xd, w)
    with pytest.raises(ValueError, match="device='cpu'; copy it to the host first"):
        nc.conv2d(xd, wd, device="cpu")
    with pytest.raises(ValueError, match="must share one dtype"):
        nc.conv2d(xd, cuda.to_device(w.astype(np.float32)))
    with pytest.raises(ValueError, match="non-contiguous device array"):
        nc.conv2d(cuda.to_device(np.ones((1, 2, 4, 8)))[:, :, :, ::2], wd)
    with pytest.raises(ValueError, match="out has shape"):
        nc.conv2d(xd, wd, out=cuda.device_array((1, 2, 3, 3)))
    with pytest.raises(ValueError, match="unknown method 'toom'"):
        nc.conv2d(xd, wd, method="toom")


def test_dispatcher_gpu_rows_and_measure(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "cache_dir", str(tmp_path))
    from numbaconv import autotune

    monkeypatch.setattr(autotune, "REST_S", 0.0)
    c = nc.choose_method("conv", (1, 2, 6, 6), (2, 2, 3, 3), padding=1, device="cuda")
    assert (
        c.device == "cuda" and set(c.estimates) == {"direct", "gemm", "winograd"} and "fft" in c.unsupported
    )
    e = nc.explain("conv_transpose", (1, 2, 4, 4), (2, 2, 3, 3), stride=2, device="cuda")
    assert "decision:" in str(e) and e.choice.device == "cuda"
    x, w = np.ones((1, 2, 4, 4)), np.ones((2, 2, 3, 3))
    y = nc.conv2d(cuda.to_device(x), cuda.to_device(w), padding=1, method="measure")
    np.testing.assert_allclose(y.copy_to_host(), nc.conv2d(x, w, padding=1))
    assert (tmp_path / "autotune.json").exists()


@pytest.fixture
def numpy_as_cupy(monkeypatch):
    """NumPy standing in for CuPy (the same API): runs cuda/fft.py's algorithm
    (padding through the tap maps, strides, groups, the transposed op's zero
    insertion and fold) on the simulator's arrays, whose memory NumPy shares.
    cuFFT itself cannot run here."""
    import sys
    import types

    shim = types.ModuleType("cupy")
    for name in ("asarray", "take", "zeros", "einsum", "fft"):
        setattr(shim, name, getattr(np, name))
    monkeypatch.setitem(sys.modules, "cupy", shim)
    from numbaconv.cuda import fft as gfft

    return gfft


FFT_CASES = [
    ("conv", (2, 4, 9, 8), (6, 2, 3, 4), dict(stride=(2, 1), padding=((2, 1), (0, 3)), dilation=(1, 2),
                                              groups=2, padding_mode="reflect")),
    ("conv", (1, 2, 11), (3, 2, 4), dict(padding="same", padding_mode="circular")),
    ("conv", (1, 2, 4, 5, 6), (2, 2, 2, 3, 2), dict(stride=2, padding=1)),
    ("conv_transpose", (2, 4, 5, 6), (4, 3, 3, 2), dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
                                                        groups=2, dilation=(1, 2))),
    ("conv_transpose", (1, 2, 4, 4), (2, 2, 3, 3), dict(stride=2, padding=1, padding_mode="replicate")),
]  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("case", FFT_CASES, ids=lambda c: f"{c[0]}-{len(c[1]) - 2}d")
def test_fft_path_logic(case, dtype, numpy_as_cupy):
    op, xs, ws, kw = case
    rng = np.random.default_rng(5)
    x, w = random_array(rng, xs, dtype), random_array(rng, ws, dtype)
    c_out = ws[0] if op == "conv" else ws[1] * kw.get("groups", 1)
    b = random_array(rng, (c_out,), dtype)
    plan = shapes.make_plan(op, x, w, b, **kw)
    fn = nc.conv if op == "conv" else nc.conv_transpose
    ref = fn(x, w, b, method="direct" if op == "conv" else "scatter", **kw)
    out5 = cuda.device_array(plan.output_shape5, dtype=plan.dtype)
    run = numpy_as_cupy.run if op == "conv" else numpy_as_cupy.run_transpose
    run(cuda.to_device(x.reshape(plan.input_shape5)), cuda.to_device(w.reshape(plan.weight_shape5)),
        cuda.to_device(b), plan, out5)  # fmt: skip
    got = out5.copy_to_host().reshape(plan.output_shape)
    scale = float(np.linalg.norm(x) * np.linalg.norm(w)) + float(np.max(np.abs(b)))
    assert_close(got, ref, 1e-12 * scale, f"fft {op}")


@pytest.mark.parametrize("case", [CONV[1], CONV[3], CONV[4]], ids=["2d-groups", "2d-circular", "3d-repl"])
def test_direct_weight_staging_kernel(case, monkeypatch):
    """With no room for the input tile, the direct and gather paths take the
    kernel that stages only the weights (in chunks): same results."""
    xs, ws, kw = case
    rng = np.random.default_rng(6)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    tiled = nc.conv(x, w, b, method="direct", device="cuda", **kw)
    monkeypatch.setattr(config, "cuda_shared_bytes", 0)
    staged = nc.conv(x, w, b, method="direct", device="cuda", **kw)
    np.testing.assert_allclose(staged, tiled, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(staged, nc.conv(x, w, b, **kw), rtol=1e-12, atol=1e-12)
    xt = rng.standard_normal((1, 2, 4, 3))
    wt = rng.standard_normal((2, 3, 3, 2))
    kt = dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    np.testing.assert_allclose(
        nc.conv_transpose2d(xt, wt, method="gather", device="cuda", **kt),
        nc.conv_transpose2d(xt, wt, **kt), rtol=1e-12, atol=1e-12,
    )  # fmt: skip


# the simulator computes with NumPy scalars, which warn on inf * 0 (a GPU does not)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("op", ["conv", "conv_transpose"])
def test_nonfinite_weights_as_on_the_cpu(op):
    """A NaN/Inf weight: the NaN pattern of every GPU method is the CPU's (which
    is PyTorch's, tests/test_methods.py): conv's zero padding multiplies the
    weight (NaN), the transposed op's missing taps never do."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 5, 6))
    w = rng.standard_normal((2, 2, 3, 3))
    w[1, 0, 0, 0] = np.nan
    w[0, 1, 2, 1] = np.inf
    fn = nc.conv if op == "conv" else nc.conv_transpose
    kw = dict(padding=1) if op == "conv" else dict(stride=2, padding=1)
    want = np.isnan(fn(x, w, method="gemm", **kw))
    assert want.any() and not want.all()
    for method in _names(op):
        plan = shapes.make_plan(op, x, w, **kw)
        call = lambda m=method: fn(x, w, method=m, device="cuda", **kw)  # noqa: E731
        if _refused(op, method, plan, call):
            continue
        np.testing.assert_array_equal(np.isnan(call()), want, err_msg=method)


@pytest.mark.parametrize("resident", [False, True])
def test_separable_passes_on_the_device(resident):
    """A rank-one kernel per channel runs as 1-D passes of the GPU direct
    kernel (intermediates on the device), host or device arrays."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 7, 8))
    w = rng.standard_normal((3, 1, 3, 1)) * rng.standard_normal((3, 1, 1, 4))
    b = rng.standard_normal(3)
    kw = dict(stride=(2, 1), padding=(1, 2), groups=3, padding_mode="reflect")
    args = (cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)) if resident else (x, w, b)
    y = nc.conv2d(*args, method="separable", device="cuda", **kw)
    y = y.copy_to_host() if resident else y
    plan = shapes.make_plan("conv", x, w, b, **kw)
    ref = conv_reference(x, w, b, [2, 1], _pads(plan), [1, 1], 3, "reflect")
    tol = tolerance(np.float64, 12, x, w, b, stride=[2, 1], pads=_pads(plan), dilation=[1, 1], groups=3,
                    mode="reflect")  # fmt: skip
    assert_close(y, ref, tol, "separable")
    dense = rng.standard_normal((3, 1, 3, 4))
    with pytest.raises(nc.UnsupportedMethodError, match="not rank one"):
        nc.conv2d(x, dense, method="separable", device="cuda", **kw)
