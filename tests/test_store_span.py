"""Store spans of the pixel layout (numbaconv/cpu/igemm.py, ``Geometry.span``):
a task computes ``span`` pixel blocks into its accumulators before storing
them into the output as one run of pixels per channel. Forced to several
spans here (the last one of a band partial, channel chunks adding into the
output, a transposed op's phases as targets with a W stride), against the
reference and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config
from numbaconv.cpu import igemm
from numbaconv.shapes import make_conv_plan

from .cases import transpose_tolerance
from .conftest import assert_close, assert_close_to_both, random_array, tolerance
from .reference import conv_reference, conv_transpose_reference

# (input shape, weight shape, stride, padding, dilation, groups, mode)
CASES = {
    "stem-s2": ((2, 3, 29, 31), (10, 3, 3, 3), (2, 2), [(1, 1), (1, 1)], (1, 1), 1, "zeros"),
    "5x5-reflect": ((1, 4, 17, 23), (7, 4, 5, 5), (1, 1), [(2, 2), (2, 2)], (1, 1), 1, "reflect"),
    "groups-dil": ((2, 6, 15, 19), (12, 3, 3, 3), (1, 1), [(2, 2), (2, 2)], (2, 2), 2, "circular"),
}


@pytest.fixture(params=[8, 40, 1000], ids=lambda p: f"pixels{p}")
def store_pixels(request, monkeypatch):
    monkeypatch.setattr(config, "direct_layout", "pixels")
    monkeypatch.setattr(igemm, "STORE_PIXELS", request.param)
    monkeypatch.setattr(igemm, "DIRECT_STORES", False)  # the spans' copies (tests/test_direct_stores.py)
    igemm.clear_caches()
    yield request.param
    igemm.clear_caches()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_store_spans_vs_reference_and_torch(name, dtype, store_pixels):
    xs, ws, stride, pads, dil, groups, mode = CASES[name]
    plan = make_conv_plan(xs, ws, (ws[0],), stride, pads, dil, groups, padding_mode=mode, dtype=dtype)
    geo = igemm.geometry(plan)[0]
    assert not geo.channels_last and not geo.band_rows
    # one block a store, or several (the accumulators within STORE_BYTES)
    if store_pixels <= geo.px:
        assert geo.span == 1
    else:
        assert 1 < geo.span and (geo.span - 1) * geo.px < store_pixels
    rng = np.random.default_rng(3)
    x, w, b = random_array(rng, xs, dtype), random_array(rng, ws, dtype), random_array(rng, (ws[0],), dtype)
    got = nc.conv2d(x, w, b, stride, pads, dil, groups, padding_mode=mode, method="direct")
    params = dict(stride=list(stride), pads=pads, dilation=list(dil), groups=groups, mode=mode)
    ref = conv_reference(x, w, b, **params)
    tol = tolerance(dtype, xs[1] // groups * int(np.prod(ws[2:])), x, w, b, **params)
    assert_close_to_both(got, ref, tol, (x, w, b, stride, pads, dil, groups, mode))


def test_store_spans_with_channel_chunks(store_pixels, monkeypatch):
    """More input channels than a tile holds: the later chunks add their
    spans into the output."""
    monkeypatch.setattr(igemm, "_TILE_BYTES", 4096)  # a row of 40 channels does not fit
    igemm.clear_caches()
    xs, ws, pads = (1, 40, 21, 26), (9, 40, 3, 3), [(1, 1), (1, 1)]
    plan = make_conv_plan(xs, ws, (9,), 1, pads, 1, 1, dtype=np.float64)
    geo = igemm.geometry(plan)[0]
    assert geo.cc < geo.cg and not geo.band_rows
    rng = np.random.default_rng(4)
    x, w, b = (random_array(rng, s, np.float64) for s in (xs, ws, (9,)))
    got = nc.conv2d(x, w, b, 1, pads, method="direct")
    params = dict(stride=[1, 1], pads=pads, dilation=[1, 1], groups=1, mode="zeros")
    ref = conv_reference(x, w, b, **params)
    assert_close(got, ref, tolerance(np.float64, 40 * 9, x, w, b, **params))


def test_store_spans_into_transposed_phases(store_pixels):
    """A transposed conv's phases are targets with a W stride of 2."""
    rng = np.random.default_rng(5)
    x, w, b = (random_array(rng, s, np.float64) for s in ((2, 5, 11, 13), (5, 6, 3, 3), (6,)))
    got = nc.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, method="gather")
    params = dict(stride=[2, 2], pads=[(1, 1), (1, 1)], dilation=[1, 1], groups=1, output_padding=[1, 1])
    ref = conv_transpose_reference(x, w, b, **params)
    assert_close(got, ref, transpose_tolerance(np.float64, x, w, b, **params))
