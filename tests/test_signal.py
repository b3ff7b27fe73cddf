"""numbaconv.signal against scipy.signal itself: values, dtypes, shapes, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.signal as ss

from numbaconv import signal as ns

DTYPES = [np.float64, np.float32, np.complex128, np.complex64, np.int16, np.int64, np.uint8]


def _pair(rng, s1, s2, dtype):
    def make(shape):
        a = rng.standard_normal(shape) * 20
        if np.dtype(dtype).kind == "c":
            a = a + 1j * rng.standard_normal(shape) * 20
        if np.dtype(dtype).kind == "u":
            a = np.abs(a)
        return a.astype(dtype)

    return make(s1), make(s2)


def _same_outcome(ours, theirs, rtol):
    """Both raise the same exception type, or give the same dtype, shape and values."""
    try:
        expected = theirs()
    except ValueError:
        with pytest.raises(ValueError):
            ours()
        return
    got = ours()
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if expected.dtype.kind in "iu":
        np.testing.assert_array_equal(got, expected)  # exact, wrapping like SciPy
    else:
        scale = max(float(np.max(np.abs(expected))), 1.0) if expected.size else 1.0
        np.testing.assert_allclose(got, expected, rtol=0, atol=rtol * scale)


SHAPES = [
    ((10,), (3,)),
    ((10,), (4,)),
    ((3,), (10,)),
    ((7, 8), (3, 2)),
    ((4, 9), (5, 3)),
    ((5, 6, 7), (2, 3, 4)),
    ((2, 2), (5, 5)),
]


@pytest.mark.parametrize("method", ["auto", "direct", "fft"])
@pytest.mark.parametrize("fn", ["convolve", "correlate"])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("shapes", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_convolve_correlate_match_scipy(dtype, shapes, mode, fn, method):
    rng = np.random.default_rng(0)
    a, b = _pair(rng, *shapes, dtype)
    # float results to 1000 eps of the largest output (FFT rounding is relative
    # to the norms); integer results exactly
    eps = np.finfo(np.result_type(a.dtype, np.float32)).eps if np.dtype(dtype).kind in "fc" else 0.0
    tol = max(1e3 * eps, 1e-12)
    _same_outcome(
        lambda: getattr(ns, fn)(a, b, mode, method),
        lambda: getattr(ss, fn)(a, b, mode, "direct" if np.dtype(dtype).kind in "iu" else method),
        tol,
    )


AXES_CASES = [
    ((6, 20), (1, 5), 1),
    ((6, 20), (6, 5), -1),
    ((3, 4, 20), (3, 1, 7), 2),
    ((8, 9, 10), (3, 4, 5), (0, 2)),
    ((5, 40), (5, 40), 1),
    ((2, 5), (2, 3), None),
    ((2, 5), (3, 3), 1),  # incompatible batch sizes
    ((2, 5), (2, 3), 2),  # axis out of range
]


@pytest.mark.parametrize("fn", ["fftconvolve", "oaconvolve"])
@pytest.mark.parametrize("mode", ["full", "same", "valid"])
@pytest.mark.parametrize("case", AXES_CASES, ids=str)
@pytest.mark.parametrize(
    "dtype", [np.float64, np.float32, np.complex64, np.int32], ids=lambda d: np.dtype(d).name
)
def test_fft_functions_with_axes_match_scipy(dtype, case, mode, fn):
    s1, s2, axes = case
    a, b = _pair(np.random.default_rng(1), s1, s2, dtype)
    eps = np.finfo(np.result_type(a.dtype, np.float32)).eps
    _same_outcome(
        lambda: getattr(ns, fn)(a, b, mode, axes=axes),
        lambda: getattr(ss, fn)(a, b, mode, axes=axes),
        1e3 * eps,
    )


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_axes_and_batching_for_every_method(method):
    """What SciPy lacks: axes= for the direct method, batching over the others."""
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 3, 50))
    b = rng.standard_normal((1, 3, 9))  # one filter per row of axis 1, shared over axis 0
    got = ns.convolve(a, b, "same", method, axes=2)
    expected = ss.fftconvolve(a, b, "same", axes=2)
    np.testing.assert_allclose(got, expected, atol=1e-10)
    got = ns.correlate(a, b[:, :1], "full", method, axes=-1)
    expected = np.stack([[np.correlate(r, b[0, 0], "full") for r in plane] for plane in a])
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_scalars_and_empty_inputs():
    assert ns.convolve(np.array(2.0), np.array(3.0)) == ss.convolve(np.array(2.0), np.array(3.0))
    for fn in ("fftconvolve", "oaconvolve"):
        np.testing.assert_array_equal(
            getattr(ns, fn)(np.zeros(0), np.ones(3)), getattr(ss, fn)(np.zeros(0), np.ones(3))
        )
    for s1, s2 in [((0,), (3,)), ((0, 3), (2, 2)), ((2, 3), (0, 2))]:
        with pytest.raises(ValueError):
            ss.convolve(np.zeros(s1), np.ones(s2))
        with pytest.raises(ValueError):
            ns.convolve(np.zeros(s1), np.ones(s2))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.convolve(np.ones(3), np.ones(3), "bad"), "Acceptable mode flags"),
        (lambda m: m.convolve(np.ones(3), np.ones(3), method="bad"), "Acceptable method flags"),
        (lambda m: m.correlate(np.ones(3), np.ones(3), method="bad"), "Acceptable method flags"),
        (lambda m: m.convolve(np.ones(3), np.ones((3, 3))), "same dimensionality"),
        (lambda m: m.convolve(np.ones((3, 4)), np.ones((4, 3)), "valid"), "at least as large"),
        (lambda m: m.fftconvolve(np.ones(3), np.ones(3), "bad"), "acceptable mode flags"),
        (lambda m: m.convolve(np.ones((2, 3), bool), np.ones((2, 3), bool)), "Unsupported type"),
    ],
)
def test_errors_match_scipy(call, message):
    with pytest.raises(ValueError, match=message):
        call(ss)
    with pytest.raises(ValueError, match=message):
        call(ns)


def test_bool_1d_like_scipy():
    a = np.array([True, False, True, True])
    b = np.array([True, True])
    np.testing.assert_array_equal(ns.convolve(a, b), ss.convolve(a, b))
    assert ns.convolve(a, b).dtype == ss.convolve(a, b).dtype


def test_integer_results_are_exact_and_wrap_like_scipy():
    a = np.array([100, 100, -7], np.int8)
    b = np.array([2, 2], np.int8)
    np.testing.assert_array_equal(ns.convolve(a, b), ss.convolve(a, b))  # wraps in int8
    big = np.array([2**40, 3, 2**41], np.int64)
    k = np.array([2**20, 5], np.int64)  # products beyond 2**53: SciPy's integer path
    np.testing.assert_array_equal(ns.convolve(big, k), ss.convolve(big, k, method="direct"))
    rng = np.random.default_rng(3)
    x = rng.integers(-1000, 1000, 5000)
    h = rng.integers(-1000, 1000, 300)
    np.testing.assert_array_equal(ns.convolve(x, h), ss.convolve(x, h, method="direct"))


def test_choose_conv_method():
    rng = np.random.default_rng(4)
    assert ns.choose_conv_method(rng.standard_normal(100), rng.standard_normal(5)) == "direct"
    assert ns.choose_conv_method(rng.standard_normal((512, 512)), rng.standard_normal((65, 65))) == "fft"
    assert ns.choose_conv_method(np.ones(10**5, int), np.ones(10**3, int)) == "direct"  # exactness
    method, times = ns.choose_conv_method(rng.standard_normal(2000), rng.standard_normal(300), measure=True)
    assert method in ("direct", "fft") and set(times) == {"direct", "fft"}
    assert times[method] == min(times.values())


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_direct_and_fft_agree(mode):
    rng = np.random.default_rng(5)
    for s1, s2 in itertools.product([(30,), (9, 11)], repeat=2):
        if len(s1) != len(s2):
            continue
        a = rng.standard_normal(s1)
        b = rng.standard_normal(tuple(max(1, n // 3) for n in s2))
        d = ns.convolve(a, b, mode, "direct")
        f = ns.convolve(a, b, mode, "fft")
        np.testing.assert_allclose(d, f, atol=1e-12 * np.linalg.norm(a) * np.linalg.norm(b))


def test_direct_2d_filter_reads_the_input_in_place():
    """A 2-D filter of a writeable array allocates its result and the direct
    path's tiles only: no copy of the input (a broadcast view of it is
    read-only, and the conv API copies read-only inputs)."""
    import tracemalloc

    rng = np.random.default_rng(21)
    x = rng.standard_normal((512, 512))
    k = rng.standard_normal((5, 5))
    ns.convolve(x[:64, :64], k, mode="same", method="direct")  # load the kernel first
    tracemalloc.start()
    try:
        y = ns.convolve(x, k, mode="same", method="direct")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - y.nbytes < x.nbytes // 2
    np.testing.assert_allclose(y, ss.convolve(x, k, mode="same", method="direct"), rtol=1e-12, atol=1e-12)
