"""The SciPy filter front-ends (signal.convolve2d/correlate2d, numbaconv.ndimage)
against SciPy itself, the per-dim padding modes every method folds through,
and separable kernels against the independent reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.ndimage as snd
import scipy.signal as ss

import numbaconv as nc
from numbaconv import api, dispatch, filters, separable
from numbaconv import ndimage as nnd
from numbaconv import signal as ns
from numbaconv.shapes import FILTER_MODES, fold_index, make_filter_plan, make_plan

from .conftest import assert_close, tolerance
from .reference import conv_reference

NP_PAD = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
    "symmetric": "symmetric",
}


def _gaussian(n, sigma):
    t = np.arange(n) - n // 2
    g = np.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


# --- the modes the kernels fold by -------------------------------------------


@pytest.mark.parametrize("mode", FILTER_MODES)
def test_fold_index_matches_numpy_pad_over_several_periods(mode):
    for size in (1, 2, 5):
        pad = 3 * size + 2
        if mode in ("reflect",) and size == 1:
            continue  # numpy cannot reflect a single element; fold_index repeats it
        ref = np.pad(
            np.arange(size), pad, mode=NP_PAD[mode], **({"constant_values": -1} if mode == "zeros" else {})
        )
        got = fold_index(np.arange(-pad, size + pad), size, mode)
        np.testing.assert_array_equal(got, ref)


def test_fft_window_folds_as_fold_index_in_every_mode():
    from numbaconv.cpu.fft import _conv_window
    from numbaconv.shapes import MODE_CODES

    for mode in FILTER_MODES:
        for size, lo, hi in ((5, 7, 9), (1, 2, 3), (8, 0, 20)):
            starts = np.array([0, 3, 11], dtype=np.int64)
            out, _ = _conv_window(starts, 6, lo, size, hi, MODE_CODES[mode])
            p = starts[:, None] + np.arange(6)[None, :]
            want = np.where(p >= lo + size + hi, -1, fold_index(p - lo, size, mode))
            np.testing.assert_array_equal(out, want, err_msg=mode)


@pytest.mark.parametrize("method", ["direct", "gemm", "fft", "winograd", "separable"])
@pytest.mark.parametrize(
    "modes", [("symmetric", "symmetric"), ("circular", "symmetric"), ("zeros", "reflect")]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_every_method_folds_per_dim_modes_with_any_padding(method, modes, dtype):
    """Per-dim modes and padding larger than the input (several folds), as the
    SciPy front-ends ask, on every method that can take the case."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 7)).astype(dtype)
    w = rng.standard_normal((3, 1, 5, 4)) if method == "separable" else rng.standard_normal((4, 3, 5, 4))
    groups = 3 if method == "separable" else 1
    if method == "separable":
        w = rng.standard_normal((3, 1, 5, 1)) * rng.standard_normal((3, 1, 1, 4))
    w = w.astype(dtype)
    pads = ((6, 3), (2, 9))
    got = api.filter_conv(x, w, pads, groups, modes, method)
    ih = fold_index(np.arange(-6, 9 + 3), 9, modes[0])
    iw = fold_index(np.arange(-2, 7 + 9), 7, modes[1])
    xp = np.where((ih[:, None] >= 0) & (iw[None, :] >= 0), x[:, :, ih][:, :, :, iw], 0)
    ref = conv_reference(xp, w, groups=groups)
    K = w.shape[1] * 20
    assert_close(got, ref, tolerance(dtype, K, xp, w, None, groups=groups), method)


# --- signal.convolve2d / correlate2d -----------------------------------------


@pytest.mark.parametrize("fn", ["convolve2d", "correlate2d"])
@pytest.mark.parametrize("boundary", ["fill", "wrap", "symm"])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128, np.int32, np.uint8])
def test_2d_matches_scipy(fn, boundary, mode, dtype):
    rng = np.random.default_rng(1)
    for sa, sb in [((7, 8), (3, 3)), ((5, 6), (4, 2)), ((3, 3), (6, 7)), ((4, 4), (9, 9))]:
        a = (rng.standard_normal(sa) * 10).astype(dtype)
        b = (rng.standard_normal(sb) * 3).astype(dtype)
        if np.dtype(dtype).kind == "c":
            a, b = a + 1j * rng.standard_normal(sa), b - 2j
        a0, b0 = a.copy(), b.copy()
        want = getattr(ss, fn)(a, b, mode=mode, boundary=boundary, fillvalue=3)
        got = getattr(ns, fn)(a, b, mode=mode, boundary=boundary, fillvalue=3)
        np.testing.assert_array_equal(a, a0)
        np.testing.assert_array_equal(b, b0)
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.dtype.kind in "iu":
            np.testing.assert_array_equal(got, want)  # exact, wrapping as SciPy's
        else:
            eps = np.finfo(want.dtype).eps
            bound = 8 * eps * np.sqrt(b.size) * (np.abs(a).max() + 3) * np.abs(b).sum()
            np.testing.assert_allclose(got, want, rtol=0, atol=bound)


def test_2d_errors_as_scipy():
    cases = [
        dict(in1=np.ones((3, 3)), in2=np.ones(3)),
        dict(in1=np.ones((3, 3)), in2=np.ones((2, 2)), mode="bad"),
        dict(in1=np.ones((3, 3)), in2=np.ones((2, 2)), boundary="reflect"),
        dict(in1=np.ones((3, 3)), in2=np.ones((2, 2)), boundary="nope"),
        dict(in1=np.ones((2, 3)), in2=np.ones((3, 2)), mode="valid"),
        dict(in1=[[1]], in2=[[1, 2]], fillvalue=[1, 2]),
        dict(in1=[[1]], in2=[[1, 2]], fillvalue=[]),
        dict(in1=[[1.0]], in2=[[1.0, 2.0]], fillvalue=1j),
        dict(in1=np.ones((2, 2), np.float16), in2=np.ones((2, 2), np.float16)),
        dict(in1=np.ones((2, 2), bool), in2=np.ones((2, 2), bool)),
    ]
    for kw in cases:
        for fn in ("convolve2d", "correlate2d"):
            with warnings.catch_warnings():  # a complex fill value: both warn, then refuse
                warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
                with pytest.raises(ValueError) as theirs:
                    getattr(ss, fn)(**kw)
                with pytest.raises(ValueError) as ours:
                    getattr(ns, fn)(**kw)
            assert str(ours.value).split(" ")[:2] == str(theirs.value).split(" ")[:2], (kw, ours.value)


# --- numbaconv.ndimage -------------------------------------------------------

ND_MODES = ["reflect", "constant", "nearest", "mirror", "wrap", "grid-constant", "grid-mirror", "grid-wrap"]


@pytest.mark.parametrize("fn", ["correlate", "convolve"])
@pytest.mark.parametrize("mode", ND_MODES)
def test_ndimage_nd_matches_scipy(fn, mode):
    rng = np.random.default_rng(2)
    for shape, wshape, origin in [((9, 11), (3, 4), 0), ((6, 7), (5, 2), (1, -1)), ((4, 5, 6), (3, 2, 3), 0)]:
        x = rng.standard_normal(shape)
        w = rng.standard_normal(wshape)
        x0 = x.copy()
        want = getattr(snd, fn)(x, w, mode=mode, cval=1.5, origin=origin)
        got = getattr(nnd, fn)(x, w, mode=mode, cval=1.5, origin=origin)
        np.testing.assert_array_equal(x, x0)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("fn", ["correlate1d", "convolve1d"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16, np.complex64, np.complex128])
def test_ndimage_1d_dtypes_and_outputs_match_scipy(fn, dtype):
    rng = np.random.default_rng(3)
    x = (rng.uniform(0, 200, (6, 40))).astype(dtype)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(x.shape).astype(dtype)
    for w in (np.array([1, 2, 1]), np.array([0.25, 0.5, 0.25, 0.1]), np.array([1.0 - 1j, 2.0])):
        for axis, output in ((0, None), (-1, np.float64), (1, "complex128")):
            if np.iscomplexobj(w) or np.iscomplexobj(x):
                if output is np.float64:
                    continue  # SciPy promotes with a warning: tested in its own suite
            elif output == "complex128":  # a real filter into a complex array: both refuse
                for mod in (snd, nnd):
                    with pytest.raises(RuntimeError, match="not supported"):
                        getattr(mod, fn)(x, w, axis=axis, output=output)
                continue
            want = getattr(snd, fn)(x, w, axis=axis, output=output, mode="nearest")
            got = getattr(nnd, fn)(x, w, axis=axis, output=output, mode="nearest")
            assert got.dtype == want.dtype, (got.dtype, want.dtype)
            if want.dtype.kind in "iu":  # truncated toward zero as SciPy's
                assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max() <= 1
            else:
                tol = 1e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12
                np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_ndimage_output_array_and_in_place():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 9))
    w = rng.standard_normal((3, 3))
    out = np.empty((8, 9), np.float32)
    r = nnd.correlate(x, w, output=out)
    assert r is out
    np.testing.assert_allclose(out, snd.correlate(x, w), rtol=1e-5, atol=1e-5)
    y = x.copy()
    nnd.correlate(y, w, output=y)  # the input as the output: read before written
    np.testing.assert_allclose(y, snd.correlate(x, w), atol=1e-12)


def test_ndimage_kernel_larger_than_input_and_four_dims():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal((9, 11))
    for mode in ND_MODES:
        np.testing.assert_allclose(nnd.correlate(x, w, mode=mode), snd.correlate(x, w, mode=mode), atol=1e-12)
    x4 = rng.standard_normal((4, 5, 6, 7))
    w4 = rng.standard_normal((3, 2, 3, 2))
    for mode in ("reflect", "constant", "wrap"):
        want = snd.convolve(x4, w4, mode=mode, cval=0.5)
        np.testing.assert_allclose(nnd.convolve(x4, w4, mode=mode, cval=0.5), want, atol=1e-12)


def test_ndimage_errors_as_scipy():
    x = np.ones((4, 4))
    for kw, exc in [
        (dict(mode=["nearest", "reflect"]), RuntimeError),
        (dict(mode="bogus"), RuntimeError),
        (dict(origin=2), ValueError),
        (dict(output=np.ones((3, 3))), RuntimeError),
        (dict(axes=(0, 0)), ValueError),
    ]:
        for mod in (snd, nnd):
            with pytest.raises(exc):
                mod.correlate(x, np.ones((2, 2)), **kw)
    for mod in (snd, nnd):
        with pytest.raises(RuntimeError, match="no filter weights"):
            mod.correlate1d(x, [])
        with pytest.raises(RuntimeError, match="weights.ndim"):
            mod.correlate(x, np.ones(3))
        with pytest.raises(ValueError, match="complex-valued cval"):
            mod.correlate1d(x, [1j, 1], mode="constant", cval=1j)
        with pytest.raises(RuntimeError, match="not supported"):
            mod.correlate1d(np.ones(4, np.float16), [1, 1])


def test_sepfilter_equals_correlate_with_the_outer_product_and_per_axis_modes():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 20, 21))
    k1, k2 = rng.standard_normal(5), rng.standard_normal(4)
    for mode in ND_MODES:
        want = snd.correlate(x, np.outer(k1, k2)[None], mode=mode, cval=1.5)
        got = nnd.sepfilter(x, [k1, k2], axes=(1, 2), mode=mode, cval=1.5)
        np.testing.assert_allclose(got, want, atol=1e-12)
    got = nnd.sepfilter(x, [k1, k2], axes=(1, 2), mode=["wrap", "mirror"], origin=(1, -1))
    want = snd.correlate1d(
        snd.correlate1d(x, k1, axis=1, mode="wrap", origin=1), k2, axis=2, mode="mirror", origin=-1
    )
    np.testing.assert_allclose(got, want, atol=1e-12)
    with pytest.raises(ValueError, match="one kernel per filtered axis"):
        nnd.sepfilter(x, [k1], axes=(1, 2))
    with pytest.raises(ValueError, match="1-D"):
        nnd.sepfilter(x, [k1, np.ones((2, 2))], axes=(1, 2))


# --- separable kernels -------------------------------------------------------


def _plan(c, kernel, dtype=np.float64, **kw):
    from numbaconv.shapes import make_conv_plan

    return make_conv_plan((1, c) + (9,) * len(kernel), (c, 1) + kernel, None, groups=c, dtype=dtype, **kw)


def test_rank_one_detection():
    g = _gaussian(7, 1.5)
    sobel = np.outer([1, 2, 1], [1, 0, -1])
    for w, kernel, dtype, want in [
        (np.outer(g, g)[None, None], (7, 7), np.float32, True),
        (np.outer(g, g)[None, None], (7, 7), np.float64, True),
        (sobel[None, None], (3, 3), np.float64, True),
        (np.ones((2, 1, 5, 5)), (5, 5), np.float64, True),
        (np.einsum("i,j,k->ijk", g[:3], g[:4], g)[None, None], (3, 4, 7), np.float64, True),
        (np.random.default_rng(0).standard_normal((1, 1, 3, 3)), (3, 3), np.float64, False),
        ((np.outer(g, g) + 1e-3 * np.eye(7))[None, None], (7, 7), np.float32, False),
        (np.where(np.eye(3, dtype=bool), np.nan, 1.0)[None, None], (3, 3), np.float64, False),
        (np.zeros((1, 1, 3, 3)), (3, 3), np.float64, True),
    ]:
        c = w.shape[0]
        plan = _plan(c, kernel, dtype)
        assert separable.mark(plan, w.astype(dtype)).separable is want, (kernel, dtype)
    # two channels per group, or a single tap dim: never eligible
    from numbaconv.shapes import make_conv_plan

    assert not separable.eligible(make_conv_plan((1, 2, 9, 9), (2, 2, 3, 3), None, dtype=np.float64))
    assert not separable.eligible(_plan(1, (5,)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "kernel,kw",
    [
        ((5, 3), dict(padding=2)),
        ((3, 3), dict(stride=2, padding=1, padding_mode="reflect")),
        ((4, 6), dict(stride=(1, 3), dilation=(2, 1), padding=((1, 2), (3, 0)))),
        ((3, 2, 4), dict(padding=(1, 0, 2), dilation=(1, 2, 1), padding_mode="circular")),
        ((7, 7), dict(padding="same", padding_mode="replicate")),
    ],
    ids=str,
)
def test_separable_method_matches_the_reference(kernel, kw, dtype):
    rng = np.random.default_rng(7)
    c = 3
    nd = len(kernel)
    w = np.ones((c, 1) + kernel)
    for d in range(nd):
        w = w * rng.standard_normal((c, 1) + tuple(n if e == d else 1 for e, n in enumerate(kernel)))
    x = rng.standard_normal((2, c) + (11, 12, 10)[:nd]).astype(dtype)
    b = rng.standard_normal(c).astype(dtype)
    w = w.astype(dtype)
    x0 = x.copy()
    got = nc.conv(x, w, b, groups=c, method="separable", **kw)
    np.testing.assert_array_equal(x, x0)
    ref = nc.conv(
        x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), groups=c, method="direct", **kw
    )
    scale = nc.conv(
        np.abs(x).astype(np.float64), np.abs(w).astype(np.float64), groups=c, method="direct", **kw
    )
    bound = 8 * np.finfo(dtype).eps * np.sqrt(np.prod(kernel)) * (np.abs(scale).max() + np.abs(b).max())
    assert got.dtype == np.dtype(dtype)
    assert np.abs(got - ref).max() <= bound


def test_separable_nonfinite_inputs_give_the_direct_pattern():
    rng = np.random.default_rng(8)
    g = np.outer([1.0, -2.0, 0.0, 1.0], [0.5, 0.0, 1.0])[None, None]
    for _ in range(20):
        x = rng.standard_normal((1, 1, 12, 13))
        idx = rng.integers(0, 12, (4, 2))
        for (i, j), v in zip(idx, (np.inf, -np.inf, np.nan, np.inf)):
            x[0, 0, i, j] = v
        got = nc.conv2d(x, g, padding=2, method="separable")
        want = nc.conv2d(x, g, padding=2, method="direct")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))


def test_separable_is_a_dispatcher_candidate_and_explain_says_so():
    g = _gaussian(31, 5)
    w = np.outer(g, g)[None, None].astype(np.float32)
    x = np.zeros((1, 1, 1024, 1024), np.float32)
    e = nc.explain("conv", x, w, padding=15)
    assert "separable" in e.choice.estimates and e.choice.method == "separable"
    assert "separable" in str(e)
    r = nc.explain(
        "conv", x, np.random.default_rng(0).standard_normal(w.shape).astype(np.float32), padding=15
    )
    assert "not rank one" in r.choice.unsupported["separable"]
    shapes_only = nc.explain("conv", x.shape, w.shape, padding=15)
    assert "separable" in shapes_only.choice.unsupported  # no values: no factors


def test_filter_auto_prefers_direct_sums_unless_a_transform_pays():
    plan = make_filter_plan((1, 1, 1, 5), (1, 1, 1, 3), ((0, 0), (2, 2)), 1, ("zeros", "zeros"), np.float64)
    assert filters.choose_method(plan) not in ("fft", "winograd")
    big = make_filter_plan(
        (1, 1, 512, 512), (1, 1, 65, 65), ((32, 32), (32, 32)), 1, ("zeros",) * 2, np.float64
    )
    assert filters.choose_method(big) == "fft"  # estimated many times faster than a direct sum


def test_signal_fft_family_broadcasts_length_one_axes_and_warns_on_nan():
    a, b = np.arange(5.0)[None, :], np.arange(3.0)[:, None]
    for mode in ("full", "same", "valid"):
        for fn in ("fftconvolve", "oaconvolve"):
            want = getattr(ss, fn)(a, b, mode=mode)
            got = getattr(ns, fn)(a, b, mode=mode)
            assert got.shape == want.shape and got.dtype == want.dtype
            np.testing.assert_allclose(got, want, atol=1e-12)
    assert ns.oaconvolve([4967], [3920]).dtype == np.int64
    x = np.ones(64)
    x[3] = np.nan
    with pytest.warns(RuntimeWarning, match="Use of fft convolution"):
        ns.convolve(x, np.ones(8), method="fft")
    # integer with float32 by FFT: computed in float64 as SciPy's
    i16, f32 = (
        np.arange(100, dtype=np.int16) % 2,
        np.random.default_rng(9).standard_normal(100).astype(np.float32),
    )
    got = ns.convolve(i16, f32, method="fft")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.convolve(i16.astype(np.float64), f32.astype(np.float64)), atol=2e-6)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])  # int8, uint16: test_microkernel
@pytest.mark.parametrize(
    "wshape, kw",
    [
        ((9, 2, 3, 3), dict(padding=1, groups=3)),  # pixel blocks
        ((6, 1, 3, 3), dict(padding=1, groups=6, padding_mode="reflect")),  # band blocks, 4 rows
        ((6, 1, 7, 5), dict(padding=(3, 2), groups=6, padding_mode="circular")),  # band blocks, 6 rows
        ((4, 6, 3, 2), dict(stride=(2, 3), dilation=(1, 2), padding=2, padding_mode="replicate")),
        ((6, 6, 1, 1), dict()),
    ],
)
def test_integer_inputs_read_as_they_are(dtype, wshape, kw):
    """8/16-bit integer inputs go to the direct path's tiles unconverted (no
    float copy of the input): the result is the float input's, bit for bit,
    for every method that takes them and the methods that do not."""
    rng = np.random.default_rng(11)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, (2, 6, 13, 37)).astype(dtype)
    w = rng.standard_normal(wshape).astype(np.float32)
    plan = make_plan("conv", x, w, None, **kw)
    assert api._input_dtype(dispatch.row("conv", "direct", "cpu"), plan, x) == dtype  # read unconverted
    assert api._input_dtype(dispatch.row("conv", "gemm", "cpu"), plan, x) == np.float32
    for method in ("direct", "auto", "gemm"):
        got = nc.conv2d(x, w, method=method, **kw)
        ref = nc.conv2d(x.astype(np.float32), w, method=method, **kw)
        assert got.dtype == np.float32 and np.array_equal(got, ref), method
    x2 = x[0, 0]
    w2 = np.outer([1.0, 2.0, 1.0], [1.0, 0.0, -1.0, 2.0]).astype(np.float32)
    for method in ("separable", "direct"):
        got = nnd.correlate(x2, w2, output=np.float32, method=method)
        assert np.array_equal(got, nnd.correlate(x2.astype(np.float32), w2, method=method)), method
    assert np.array_equal(nnd.correlate(x2, w2), snd.correlate(x2, w2.astype(np.float64)))


# --- the fused separable kernel (numbaconv.cpu.sepfused) ----------------------


@pytest.mark.parametrize("mode", ["reflect", "mirror", "nearest", "wrap", "constant"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.float32, np.float64])
def test_fused_separable_filter_matches_scipy_with_integer_outputs(mode, dtype):
    """Rank-one kernels over H and W run as one fused kernel (integer outputs
    stored by the kernel, truncated and wrapped as SciPy stores a double)."""
    rng = np.random.default_rng(21)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    shape = (37, 45)
    x = rng.integers(info.min, int(info.max) + 1, shape) if info else rng.standard_normal(shape) * 100
    x = x.astype(dtype)
    w = np.outer([1.0, 3.0, 2.0, -1.0, 0.5], [2.0, 1.0, 0.0, 1.5, -0.5, 1.0, 0.25])
    plan = make_filter_plan((1, 1, 1) + shape, (1, 1, 1) + w.shape, ((0, 0), (2, 2), (3, 3)), 1,
                            ("zeros", "symmetric", "symmetric"), np.float64)  # fmt: skip
    from numbaconv.cpu import sepfused

    assert sepfused.fits(separable.mark(plan, w.reshape((1, 1, 1) + w.shape)))
    x0 = x.copy()
    for origin in (0, (-1, 2)):
        got = nnd.correlate(x, w, mode=mode, cval=3.5, origin=origin, method="separable")
        ref = snd.correlate(x, w, mode=mode, cval=3.5, origin=origin)
        assert got.dtype == ref.dtype
        if info is None:
            assert_close(got, ref, 64 * np.finfo(dtype).eps * float(np.abs(x).max()) * np.abs(w).sum())
        else:  # float32 sums: an exact-integer value may truncate to the other side
            assert np.abs(got.astype(np.int64) - ref.astype(np.int64)).max() <= 1, origin
            assert (got != ref).mean() < 0.01
        out = np.empty(shape, np.int32)
        got = nnd.correlate(x, w, mode=mode, output=out, method="separable")
        assert got is out
        ref = snd.correlate(x, w, mode=mode, output=np.int32)
        assert np.abs(got.astype(np.int64) - ref).max() <= 1
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "circular", "replicate"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
@pytest.mark.parametrize(
    "kernel, dilation", [((5, 4), (2, 3)), ((2, 3), (1, 1)), ((7, 2), (1, 2)), ((3, 9), (1, 1))]
)
@pytest.mark.parametrize("tile", [None, 8])
def test_fused_blocks_of_rows_give_the_float_inputs_result(mode, dtype, kernel, dilation, tile, monkeypatch):
    """8/16-bit inputs are converted a row at a time into the strip's buffer;
    blocks of 4, 2 or 1 output rows (by the column factor's length and
    dilation) read it, whatever the strip's and the plane's tails, in tiles
    of columns (here also of 8: edge runs folded inside a tile, tiles
    narrower than the kernel): the result is the float input's, bit for bit,
    and the float64 direct path's within float32's bound."""
    from numbaconv.cpu import sepfused

    if tile:
        monkeypatch.setattr(sepfused, "_TILE_COLS", tile)
    sepfused._geometry.cache_clear()

    rng = np.random.default_rng(23)
    c = 2
    w = rng.standard_normal((c, 1, kernel[0], 1)) * rng.standard_normal((c, 1, 1, kernel[1]))
    w = w.astype(np.float32)
    info = np.iinfo(dtype)
    x = rng.integers(info.min, int(info.max) + 1, (2, c, 71, 37)).astype(dtype)
    kw = dict(groups=c, padding=(5, 4), dilation=dilation, padding_mode=mode)
    plan = separable.mark(make_plan("conv", x.astype(np.float32), w, None, **kw), w[:, :, None])
    assert sepfused.fits(plan)
    assert sepfused.block_rows(plan) == (1 if dilation[0] > 1 else 4 if kernel[0] >= 3 else 2)
    got = nc.conv2d(x, w, method="separable", **kw)
    assert np.array_equal(got, nc.conv2d(x.astype(np.float32), w, method="separable", **kw))
    assert_close(got, nc.conv2d(x.astype(np.float64), w.astype(np.float64), method="direct", **kw),
                 64 * np.finfo(np.float32).eps * float(np.abs(w).sum()) * info.max)  # fmt: skip
    tiles = (len(sepfused._geometry(plan, sepfused.spec_for(np.float32))[1]) - 7) // 4
    assert tiles == (1 if tile is None else -(-plan.out_size[2] // 8)), tiles
    sepfused._geometry.cache_clear()


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64])
@pytest.mark.parametrize("width", [37, 300])
def test_fused_integer_outputs_are_the_float_results_truncated(dtype, width):
    """Integer outputs (stored by the micro-kernel, truncated through int32,
    where the input's dtype bounds the sums; else through the float row):
    the float32 result truncated toward zero and wrapped, bit for bit,
    negative sums included."""
    rng = np.random.default_rng(41)
    x = rng.integers(0, 256, (45, width)).astype(np.uint8)
    w = np.outer([1.0, -3.0, 2.0, 0.5, 1.0], [2.0, -1.0, 0.25, 1.5, -0.5, 1.0, 3.0])
    got = nnd.correlate(x, w, output=dtype, method="separable")
    f = nnd.correlate(x, w, output=np.float32, method="separable")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, np.trunc(f).astype(np.int64).astype(dtype))
    assert (f < 0).any() and (np.abs(f) > 128).any()  # the wrap is exercised


def test_narrow_sums_bound_the_outputs_by_the_input_dtype():
    """The integer store converts through int32 unchecked only where no
    output can leave its range."""
    from numbaconv.cpu import sepfused

    wv, wh, b = np.ones(7, np.float32), np.ones(7, np.float32), np.zeros(1, np.float32)
    assert sepfused.narrow_sums(np.uint8, wv, wh, b)
    assert sepfused.narrow_sums(np.int16, wv, wh, b)
    assert not sepfused.narrow_sums(np.int16, wv * 1000, wh * 40, b)  # 32768 * 7000 * 280: 6.4e10
    assert not sepfused.narrow_sums(np.float32, wv, wh, b)
    assert not sepfused.narrow_sums(np.uint8, wv, wh, b + 2.0**31)
    assert not sepfused.narrow_sums(np.uint8, wv * np.float32(np.nan), wh, b)


def test_fused_integer_store_wraps_values_beyond_int32_as_int64():
    """A row with a value outside int32's range is stored through int64 (the
    vector conversion through int32 would give INT32_MIN)."""
    x = np.zeros((6, 40), np.float64)
    x[2, 5] = 3.0e9 + 7
    x[4, 30] = -5.0e9 - 3
    w = np.outer([0.0, 1.0, 0.0], [0.0, 1.0, 0.0])
    for dtype in (np.int32, np.uint8, np.int16):
        got = nnd.correlate(x, w, output=dtype, method="separable")
        # as the other stores (cpu.convert.truncate_into): truncated to int64,
        # then wrapped (SciPy's C cast of such a double is undefined behaviour)
        ref = np.trunc(snd.correlate(x, w)).astype(np.int64).astype(dtype)
        np.testing.assert_array_equal(got, ref, err_msg=str(dtype))
        np.testing.assert_array_equal(got, nnd.correlate(x, w, output=dtype, method="direct"))


@pytest.mark.parametrize(
    "kw",
    [
        dict(padding=(3, 2), dilation=(2, 3), padding_mode="circular"),
        dict(padding=((9, 1), (0, 14)), padding_mode="zeros"),  # whole rows and columns of padding
        dict(padding=(4, 6), padding_mode="reflect"),
    ],
    ids=str,
)
def test_fused_separable_conv_with_dilation_bias_channels_and_planes(kw):
    """The conv API's separable method on the fused kernel: groups, bias,
    dilation, padding larger than the kernel reach, 3-D inputs with one tap
    along D (each plane filtered), against the direct method in float64."""
    from numbaconv.cpu import sepfused

    rng = np.random.default_rng(22)
    c = 3
    w = rng.standard_normal((c, 1, 1, 5, 1)) * rng.standard_normal((c, 1, 1, 1, 4))
    b = rng.standard_normal(c)
    x = rng.standard_normal((2, c, 3, 11, 17))
    kw3 = dict(kw, padding=(0,) + tuple(kw["padding"]), dilation=(1,) + tuple(kw.get("dilation", (1, 1))))
    if isinstance(kw["padding"][0], tuple):
        kw3["padding"] = ((0, 0),) + tuple(kw["padding"])
    plan = make_plan("conv", x, w, b, groups=c, **kw3)
    assert sepfused.fits(separable.mark(plan, w))
    for dtype in (np.float64, np.float32):
        got = nc.conv3d(
            x.astype(dtype), w.astype(dtype), b.astype(dtype), groups=c, method="separable", **kw3
        )
        ref = nc.conv3d(x, w, b, groups=c, method="direct", **kw3)
        assert got.dtype == dtype
        assert_close(got, ref, 16 * np.finfo(dtype).eps * 20 * (np.abs(x).max() * np.abs(w).max() * 20 + 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "xshape, wshape, kw",
    [
        ((2, 3, 4100), (3, 1, 5), dict(padding=2, groups=3, bias=True)),  # depthwise conv1d
        ((1, 1, 4200), (1, 1, 63), dict(padding=(31,), padding_mode="reflect")),  # a long 1-D filter
        (
            (1, 2, 3, 4120),
            (2, 1, 1, 9),
            dict(padding=(1, 4), dilation=(1, 3), groups=2, padding_mode="circular"),
        ),
        ((1, 2, 2, 3, 4100), (2, 1, 1, 1, 4), dict(padding=(0, 2, 3), groups=2, padding_mode="replicate")),
    ],
    ids=str,
)
def test_row_filters_run_on_the_fused_kernel(dtype, xshape, wshape, kw):
    """The direct method runs a kernel of one row along W with one channel
    per group (1-D filters, depthwise conv1d) on the fused kernel's row
    pass: against the reference and PyTorch, padding rows along H, modes,
    dilation, bias, rows of several column tiles (4096 outputs or more; a
    shorter row stays on the direct path's own kernels)."""
    from numbaconv.cpu import sepfused

    from .conftest import assert_close_to_both

    rng = np.random.default_rng(31)
    x = rng.standard_normal(xshape).astype(dtype)
    w = rng.standard_normal(wshape).astype(dtype)
    b = rng.standard_normal(wshape[0]).astype(dtype) if kw.pop("bias", False) else None
    nd = len(wshape) - 2
    fn = {1: nc.conv1d, 2: nc.conv2d, 3: nc.conv3d}[nd]
    plan = make_plan("conv", x, w, b, **kw)
    assert sepfused.row_filter(plan)
    assert not sepfused.row_filter(make_plan("conv", x[..., :600], w, b, **kw))
    x0 = x.copy()
    got = fn(x, w, b, method="direct", **kw)
    np.testing.assert_array_equal(x, x0)
    pad = kw.get("padding", 0)
    pad = (pad,) * nd if isinstance(pad, int) else pad
    pads = [(p, p) for p in pad]
    dil = list(kw.get("dilation", (1,) * nd))
    mode, groups = kw.get("padding_mode", "zeros"), kw.get("groups", 1)
    b64 = None if b is None else b.astype(np.float64)
    ref = conv_reference(x.astype(np.float64), w.astype(np.float64), b64, [1] * nd, pads, dil, groups, mode)
    tol = tolerance(
        dtype, wshape[-1], x, w, b, stride=[1] * nd, pads=pads, dilation=dil, groups=groups, mode=mode
    )
    assert_close_to_both(got, ref, tol, (x, w, b, [1] * nd, pads, dil, groups, mode))


def test_row_filter_inf_weights_meet_zero_padding_as_pytorch():
    """Zero padding times an infinite tap is NaN (PyTorch's sum: the padding
    is a zero in the sum), elsewhere the infinite term."""
    x = np.ones((1, 1, 4200), np.float32)
    w = np.array([[[np.inf, 1.0, 2.0]]], np.float32)
    got = nc.conv1d(x, w, padding=1, method="direct")
    assert np.isnan(got[0, 0, 0])  # the first output's tap 0 reads the padding
    assert np.isposinf(got[0, 0, 1:]).all()
