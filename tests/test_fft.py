"""method="fft": tiles (overlap-save), memory within the budget, the kernel-spectrum
cache, and fft == direct as a property (its grid against the reference and PyTorch
is in test_methods.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import numbaconv as nc
from numbaconv import config, shapes
from numbaconv.cpu import fft

from .cases import fft_tolerance
from .conftest import assert_close, random_array
from .reference import conv_reference


@pytest.mark.parametrize("mode", shapes.PADDING_MODES)
def test_many_tiles_equal_one_tile(mode, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 4, 40, 50))
    w = rng.standard_normal((6, 2, 5, 4))
    b = rng.standard_normal(6)
    kw = dict(stride=(2, 3), padding=((3, 1), 2), dilation=(2, 1), groups=2, padding_mode=mode)
    plan = shapes.make_conv_plan(x.shape, w.shape, b.shape, **kw)
    need = [fft._valid_len(plan, i) for i in range(3)]
    whole = [need[i] + fft._span(plan, i) - 1 for i in range(3)]
    with monkeypatch.context() as m:  # one tile covering everything
        m.setattr(fft, "_tile_plan", lambda p: (need, whole))
        one = nc.conv2d(x, w, b, method="fft", **kw)
    np.testing.assert_allclose(nc.conv2d(x, w, b, method="fft", **kw), one, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(config, "workspace_bytes", 200_000)
    tiles, lens = fft._tile_plan(fft.correlation(plan))
    count = int(np.prod([-(-need[i] // tiles[i]) for i in range(3)]))
    assert count >= 4, (tiles, need)
    assert fft.tile_bytes(fft.correlation(plan), lens) <= 200_000
    np.testing.assert_allclose(nc.conv2d(x, w, b, method="fft", **kw), one, rtol=1e-12, atol=1e-12)
    ref = conv_reference(x, w, b, [2, 3], [(3, 1), (2, 2)], [2, 1], 2, mode)
    assert_close(one, ref, fft_tolerance(np.float64, x, w, b, 4 * 46 * 54))


def test_budget_below_one_tile_runs_with_a_warning_and_auto_stays_inside(monkeypatch):
    """A forced FFT whose smallest tile exceeds the budget still runs, and says
    so; auto takes a method within the budget when it is not 10x slower."""
    x = np.ones((1, 2, 30, 30))
    w = np.ones((2, 2, 9, 9))
    monkeypatch.setattr(config, "workspace_bytes", 1000)
    with pytest.warns(RuntimeWarning, match="more than config.workspace_bytes=1000"):
        np.testing.assert_allclose(nc.conv2d(x, w, method="fft"), 162.0, rtol=1e-12)
    choice = nc.choose_method("conv", x, w)
    assert choice.method != "fft" and "fft" in choice.over_budget
    np.testing.assert_allclose(nc.conv2d(x, w), 162.0)  # auto: no warning (filterwarnings=error)


def test_auto_never_takes_a_path_estimated_10x_slower_to_keep_the_budget(monkeypatch):
    """A large kernel whose smallest FFT tile exceeds the budget: the direct
    path is estimated far slower, so auto (conv and the signal API) runs the
    FFT over the budget and says why, instead of a direct sum ~450x slower."""
    from numbaconv import dispatch
    from numbaconv import signal as ns

    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((300, 300)), rng.standard_normal((200, 200))
    monkeypatch.setattr(config, "workspace_bytes", 2**20)
    assert ns.choose_conv_method(a, b) == "fft"
    with pytest.warns(RuntimeWarning, match="method=.fft. needs"):
        y = ns.convolve(a, b, mode="same")
    import scipy.signal as ss

    ref = ss.fftconvolve(a, b, mode="same")
    assert_close(y, ref, fft_tolerance(np.float64, a, b, None, 4 * 500 * 500))
    plan = shapes.make_plan("conv", (1, 1, 300, 300), (1, 1, 200, 200), padding=100, dtype=np.float64)
    choice = dispatch.choose("conv", plan)
    assert choice.method == "fft" and "estimated >= 10x slower" in choice.reason
    assert choice.estimates["direct"] >= 10 * choice.estimates["fft"]


def test_long_signal_stays_within_the_budget():
    """A 4M-sample signal with a 1001-tap filter: the FFT length comes from the
    kernel size and the budget, not the signal; extra memory within the budget."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 1, 4_000_000)).astype(np.float32)
    w = rng.standard_normal((1, 1, 1001)).astype(np.float32)
    nc.conv1d(x[..., :5000], w, method="fft")
    with config.override(workspace_bytes=8 * 2**20):
        plan = shapes.make_conv_plan(x.shape, w.shape, None, dtype=np.float32)
        tiles, lens = fft._tile_plan(fft.correlation(plan))
        assert lens[2] < 4_000_000 // 4
        tracemalloc.start()
        try:
            y = nc.conv1d(x, w, method="fft")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak - y.nbytes <= 8 * 2**20 + 2**20
    seg = slice(2_000_000, 2_000_050)
    ref = conv_reference(x[..., 2_000_000 : 2_000_050 + 1000].astype(np.float64), w)
    assert_close(y[..., seg], ref, fft_tolerance(np.float32, x[..., :20000], w, None, 2 * lens[2]))


@given(
    nd=st.integers(1, 3),
    size=st.integers(4, 9),
    k=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    pad=st.integers(0, 3),
    groups=st.sampled_from([1, 2]),
    mode=st.sampled_from(shapes.PADDING_MODES),
    seed=st.integers(0, 2**16),
)
def test_fft_equals_direct(nd, size, k, stride, dilation, pad, groups, mode, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2 * groups) + (size,) * nd)
    w = rng.standard_normal((2 * groups, 2) + (k,) * nd)
    try:
        shapes.make_conv_plan(x.shape, w.shape, None, stride, pad, dilation, groups, padding_mode=mode)
    except ValueError:
        assume(False)  # combinations PyTorch's rules reject (tested in test_errors)
    a = nc.conv(x, w, None, stride, pad, dilation, groups, padding_mode=mode, method="fft")
    d = nc.conv(x, w, None, stride, pad, dilation, groups, padding_mode=mode, method="direct")
    assert_close(a, d, fft_tolerance(np.float64, x, w, None, 4 * (size + 2 * pad) ** nd))


def test_complex_weights_are_not_conjugated():
    rng = np.random.default_rng(4)
    x = random_array(rng, (1, 2, 11), np.complex128)
    w = random_array(rng, (3, 2, 4), np.complex128)
    ref = conv_reference(x, w, pads=[(1, 2)])
    assert_close(
        nc.conv1d(x, w, padding=((1, 2),), method="fft"), ref, fft_tolerance(np.complex128, x, w, None, 64)
    )


def test_transposed_fft_within_the_budget_and_matches_scatter():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 16, 40, 40)).astype(np.float32)
    w = rng.standard_normal((16, 8, 4, 4)).astype(np.float32)
    kw = dict(stride=2, padding=1)
    ref = nc.conv_transpose2d(x, w, method="scatter", **kw)
    nc.conv_transpose2d(x[:, :, :4, :4], w, method="fft", **kw)
    budget = 2**20
    with config.override(workspace_bytes=budget):
        plan = shapes.make_conv_transpose_plan(x.shape, w.shape, None, dtype=np.float32, **kw)
        assert fft.supports(plan) is None and fft.workspace_bytes(plan) <= budget
        tracemalloc.start()
        try:
            y = nc.conv_transpose2d(x, w, method="fft", **kw)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak - y.nbytes <= budget + 2**18
    assert_close(y, ref, fft_tolerance(np.float32, x, w, None, 4 * 80 * 80))


def test_kernel_spectrum_cache_follows_the_weights(monkeypatch):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 2, 40, 40))
    w = rng.standard_normal((3, 2, 9, 9))
    fft._SPECTRA.clear()
    a = nc.conv2d(x, w, padding=4, method="fft")
    assert len(fft._SPECTRA) == 1
    np.testing.assert_array_equal(nc.conv2d(x, w, padding=4, method="fft"), a)  # a hit: same bits
    assert len(fft._SPECTRA) == 1
    w[0, 0, 4, 4] += 1.0  # the weights change in place: a new key, a new spectrum
    b = nc.conv2d(x, w, padding=4, method="fft")
    assert len(fft._SPECTRA) == 2
    ref = conv_reference(x, w, pads=[(4, 4)] * 2)
    assert_close(b, ref, fft_tolerance(np.float64, x, w, None, 4 * 48 * 48))
    monkeypatch.setattr(config, "fft_kernel_cache_bytes", 0)  # off
    fft._SPECTRA.clear()
    nc.conv2d(x, w, padding=4, method="fft")
    assert len(fft._SPECTRA) == 0


def test_fast_lengths():
    for n in list(range(1, 300)) + [1025, 2049, 9224, 66560, 70001]:
        m = fft._fast_len(n)
        assert m >= n
        if n > 16:
            odd = m >> ((m & -m).bit_length() - 1)  # m without its factors 2
            assert odd in fft._ODD and m // odd >= 16, (n, m)
            assert m < 2 * n  # never far above
        else:
            assert m == sfft_next_fast_len(n)


def sfft_next_fast_len(n):
    import scipy.fft

    return scipy.fft.next_fast_len(n, real=True)


@pytest.mark.parametrize("per", [1, 2, 3])
@pytest.mark.parametrize("nd", [1, 2])
def test_batches_of_tiles_equal_one_batch(per, nd, monkeypatch):
    """Tiles transformed a few per batch (and 1-D signals grouped per call
    with a ragged last group) give the same values as all tiles at once."""
    rng = np.random.default_rng(7)
    size = (301,) if nd == 1 else (37, 41)
    x = rng.standard_normal((3, 3) + size)
    w = rng.standard_normal((5, 3) + ((33,) if nd == 1 else (7, 6)))
    b = rng.standard_normal(5)
    kw = dict(stride=2, padding=3, padding_mode="reflect")
    f = nc.conv1d if nd == 1 else nc.conv2d
    plan = shapes.make_conv_plan(x.shape, w.shape, b.shape, **kw)
    need = [fft._valid_len(plan, i) for i in range(3)]
    small = [min(need[i], 8) for i in range(3)]
    lens = [fft._fast_len(small[i] + fft._span(plan, i) - 1) for i in range(3)]
    monkeypatch.setattr(fft, "_tile_plan", lambda p: (tuple(small), tuple(lens)))
    whole = f(x, w, b, method="fft", **kw)
    monkeypatch.setattr(fft, "_tiles_per_batch", lambda p, lens, total: per)
    np.testing.assert_allclose(f(x, w, b, method="fft", **kw), whole, rtol=1e-12, atol=1e-12)
    ref = f(x, w, b, method="direct", **kw)
    assert_close(whole, ref, fft_tolerance(np.float64, x, w, b, 4 * int(np.prod(lens))))
