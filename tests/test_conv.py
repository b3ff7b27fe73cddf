"""conv1d/2d/3d/conv through the direct path: its two kernels (rows, channels-last),
layouts, out=, NaN/Inf, workspace chunks, the row kernel's special paths. The
grid of every method is in test_methods.py."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config

from .cases import CONV_FUNCS, CONV_GRID, explicit_pads, run_conv_case
from .conftest import assert_close, random_array, tolerance, torch, torch_conv
from .reference import conv_reference

FUNCS = CONV_FUNCS


def test_no_bias(direct_kernel):
    c = CONV_GRID[3]
    got, ref, tol, _ = run_conv_case(c, np.float64, np.random.default_rng(3), bias=False)
    assert_close(got, ref, tol)


def test_generic_conv_dispatches_on_weight_ndim():
    rng = np.random.default_rng(4)
    for nd in (1, 2, 3):
        x = rng.standard_normal((2, 3) + (6,) * nd)
        w = rng.standard_normal((4, 3) + (3,) * nd)
        np.testing.assert_array_equal(nc.conv(x, w, padding=1), FUNCS[nd](x, w, padding=1))


def test_empty_batch_and_size_one_dims(direct_kernel):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((0, 3, 5, 5))
    w = rng.standard_normal((4, 3, 3, 3))
    y = nc.conv2d(x, w, padding=1)
    assert y.shape == (0, 4, 5, 5)
    # size-1 spatial dims, kernel 1, one channel
    x = rng.standard_normal((1, 1, 1, 1))
    w = rng.standard_normal((1, 1, 1, 1))
    np.testing.assert_allclose(nc.conv2d(x, w), x * w[0, 0, 0, 0])
    x = rng.standard_normal((2, 3, 1, 7))
    w = rng.standard_normal((5, 3, 1, 3))
    ref = conv_reference(x, w, pads=[(0, 0), (1, 1)])
    assert_close(nc.conv2d(x, w, padding=(0, 1)), ref, 1e-12)


def test_depthwise_multiplier_and_large_dilation(direct_kernel):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 20))
    w = rng.standard_normal((6, 1, 3))  # depth multiplier 2
    ref = conv_reference(x, w, stride=[2], pads=[(4, 4)], dilation=[4], groups=3)
    assert_close(nc.conv1d(x, w, stride=2, padding=4, dilation=4, groups=3), ref, 1e-12)


def test_mixed_dtypes_promote_as_numpy():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 2, 6)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3))  # float64
    y = nc.conv1d(x, w)
    assert y.dtype == np.float64
    assert_close(y, conv_reference(x, w), 1e-12)
    wc = (w + 1j).astype(np.complex64)
    assert nc.conv1d(x, wc).dtype == np.complex64
    xi = np.arange(12, dtype=np.int16).reshape(1, 2, 6)
    y = nc.conv1d(xi, w.astype(np.float32))
    assert y.dtype == np.float32
    assert_close(y, conv_reference(xi, w.astype(np.float32)), 1e-4)


def _layouts(x):
    """The same values in awkward memory layouts."""
    yield "fortran", np.asfortranarray(x)
    yield "noncontig", np.repeat(x, 2, axis=-1)[..., ::2]
    neg = np.ascontiguousarray(x[..., ::-1])[..., ::-1]
    yield "negative-stride", neg
    ro = x.copy()
    ro.flags.writeable = False
    yield "read-only", ro
    yield "big-endian", x.astype(x.dtype.newbyteorder(">"))


def test_memory_layouts_and_inputs_untouched(direct_kernel):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 8, 6, 7))
    w = rng.standard_normal((4, 8, 3, 3))
    b = rng.standard_normal(4)
    ref = nc.conv2d(x, w, b, padding=1, padding_mode="reflect")
    for name, xv in _layouts(x):
        for wname, wv in _layouts(w):
            before_x, before_w = xv.copy(), wv.copy()
            got = nc.conv2d(xv, wv, b, padding=1, padding_mode="reflect")
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13, err_msg=f"{name}/{wname}")
            np.testing.assert_array_equal(xv, before_x)
            np.testing.assert_array_equal(wv, before_w)


def test_out_argument(direct_kernel):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 8))
    w = rng.standard_normal((5, 3, 3))
    ref = nc.conv1d(x, w, padding=1)
    out = np.full((2, 5, 8), np.nan)
    res = nc.conv1d(x, w, padding=1, out=out)
    assert res is out
    np.testing.assert_array_equal(out, ref)
    # a non-contiguous out is filled through a temporary
    big = np.full((2, 5, 16), np.nan)
    view = big[..., ::2]
    res = nc.conv1d(x, w, padding=1, out=view)
    assert res is view
    np.testing.assert_array_equal(view, ref)
    assert np.isnan(big[..., 1::2]).all()


def test_nan_and_inf_propagate(direct_kernel):
    x = np.zeros((1, 16, 8, 8))
    x[0, 3, 4, 4] = np.nan
    x[0, 5, 1, 1] = np.inf
    w = np.ones((2, 16, 3, 3))
    y = nc.conv2d(x, w, padding=1)
    assert np.isnan(y[0, :, 3:6, 3:6]).all()
    assert np.isinf(y[0, :, 0, 0]).all()
    assert np.isfinite(y[0, :, 7, 7]).all()


def test_channels_last_workspace_chunks(monkeypatch):
    """A budget smaller than the batch makes the complex channels-last kernel chunk it."""
    from numbaconv.cpu import direct

    rng = np.random.default_rng(10)
    x = rng.standard_normal((5, 16, 6, 6)) + 1j * rng.standard_normal((5, 16, 6, 6))
    w = rng.standard_normal((8, 16, 3, 3)) - 0.5j
    ref = conv_reference(x, w, pads=[(1, 1)] * 2)
    plan = nc.shapes.make_conv_plan(x.shape, w.shape, None, padding=1, dtype=np.complex128)
    per_sample = 16 * 36 * 16
    monkeypatch.setattr(config, "workspace_bytes", 2 * per_sample)
    assert direct.uses_channels_last(plan) and direct.workspace_bytes(plan) == 2 * per_sample
    assert_close(nc.conv2d(x, w, padding=1), ref, 1e-12)
    # below one sample the row kernel runs instead (no workspace)
    monkeypatch.setattr(config, "workspace_bytes", per_sample - 1)
    assert not direct.uses_channels_last(plan) and direct.workspace_bytes(plan) == 0
    assert_close(nc.conv2d(x, w, padding=1), ref, 1e-12)


def test_wide_row_is_split_across_tasks(direct_kernel):
    """A single long 1-D row is split into width segments (parallel)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 1, 5000))
    w = rng.standard_normal((2, 1, 31))
    ref = conv_reference(x, w, pads=[(15, 15)], mode="circular")
    got = nc.conv1d(x, w, padding=15, padding_mode="circular")
    assert_close(got, ref, tolerance(np.float64, 31, x, w, None, pads=[(15, 15)], mode="circular"))


def test_deterministic(direct_kernel):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 16, 3, 3)).astype(np.float32)
    a = nc.conv2d(x, w, padding="same")
    b = nc.conv2d(x, w, padding="same")
    np.testing.assert_array_equal(a, b)


def _row_path_cases():
    """Cases for the row kernel's specialised paths: depthwise 3x3 (flat plane
    pass, row pass, edge columns), the nine-tap pass for 3x3 with several
    channels per group, and taps in triples (k = 3, 5, 7) plus single taps.
    Combinations that PyTorch's rules reject are left out here (test_errors)."""
    cases = []
    for size in [(9, 11), (5, 4)]:
        for groups, cin, cout in [(4, 4, 4), (3, 3, 6), (1, 3, 2), (2, 4, 2)]:
            for k in [(3, 3), (1, 3, 3), (3, 5), (2, 7)]:
                for stride, dilation, padding, mode in [
                    (1, 1, 1, "zeros"),
                    (1, 2, "same", "reflect"),
                    (1, 1, ((2, 0), (0, 2)), "replicate"),
                    (2, 1, 1, "circular"),
                    (1, 1, 0, "zeros"),
                    (1, 2, ((1, 3), (2, 2)), "circular"),
                ]:
                    nd = len(k)
                    full = ((3,) + size) if nd == 3 else size
                    if nd == 3 and isinstance(padding, tuple):
                        padding = ((0, 1),) + padding
                    pads = explicit_pads(padding, nd, full, k, (stride,) * nd, (dilation,) * nd)
                    ok = all(
                        not (mode == "reflect" and max(lo, hi) >= n)
                        and not (mode == "circular" and max(lo, hi) > n)
                        and dilation * (kk - 1) + 1 <= n + lo + hi
                        for n, (lo, hi), kk in zip(full, pads, k)
                    )
                    if ok:
                        cases.append((full, groups, cin, cout, k, stride, dilation, padding, pads, mode))
    return cases


@pytest.mark.parametrize("case", _row_path_cases(), ids=str)
def test_row_kernel_paths_vs_reference_and_torch(case):
    full, groups, cin, cout, k, stride, dilation, padding, pads, mode = case
    nd = len(k)
    rng = np.random.default_rng(13)
    x = random_array(rng, (2, cin) + full, np.float64)
    w = random_array(rng, (cout, cin // groups) + k, np.float64)
    b = random_array(rng, (cout,), np.float64)
    params = dict(stride=[stride] * nd, pads=pads, dilation=[dilation] * nd, groups=groups, mode=mode)
    fn = FUNCS[nd]
    K = cin // groups * int(np.prod(k))
    ref = conv_reference(x, w, b, **params)
    with config.override(direct_layout="pixels"):  # lanes over output pixels
        got = fn(x, w, b, stride, padding, dilation, groups, padding_mode=mode, method="direct")
        x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
        got32 = fn(x32, w32, b32, stride, padding, dilation, groups, padding_mode=mode)
    assert_close(got, ref, tolerance(np.float64, K, x, w, b, **params), "vs reference")
    if torch is not None:
        tref = torch_conv(x, w, b, params["stride"], pads, params["dilation"], groups, mode)
        assert_close(got, tref, tolerance(np.float64, K, x, w, b, **params), "vs torch")
    assert_close(got32, ref, tolerance(np.float32, K, x, w, b, **params), "float32")


def test_long_signal_long_filter_needs_no_big_tables():
    """Index tables of (positions x taps) would be 3.3 GB here; the compact tap
    maps keep the extra memory of the direct path tiny."""
    import tracemalloc

    rng = np.random.default_rng(14)
    x = rng.standard_normal((1, 1, 200_000))
    w = rng.standard_normal((1, 1, 2049))
    nc.conv1d(x[..., :4096], w, padding="same", method="direct")  # load the kernel first
    tracemalloc.start()
    try:
        y = nc.conv1d(x, w, padding="same", padding_mode="reflect", method="direct")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - y.nbytes < 8 * 2**20
    seg = slice(100_000, 100_016)
    ref = conv_reference(x[..., 100_000 - 1024 : 100_016 + 1024], w)
    assert_close(y[..., seg], ref, tolerance(np.float64, 2049, x[..., :4096], w, None))


def test_huge_finite_weights_are_not_taken_for_nan():
    """Weights whose sum overflows are still finite: no output becomes NaN
    because of the padding (the fast sum check falls back to the exact one)."""
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.full((2, 2, 3, 3), 3e38, np.float32)
    y = nc.conv2d(x, w, padding=1, method="direct")
    assert not np.isnan(y).any() and np.isinf(y).all()
