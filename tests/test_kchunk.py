"""K chunks of the pixel blocks (numbaconv/cpu/igemm.py): a pixel block sums
its input channels kc at a time over the task's o-blocks (the chunk's tile
lines stay in L1), the later chunks adding into the block's accumulators.
Forced to small and ragged chunks here, against the reference and PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config
from numbaconv.cpu import igemm
from numbaconv.shapes import make_conv_plan

from .conftest import assert_close_to_both, random_array, tolerance
from .reference import conv_reference

# (input shape, weight shape, stride, padding, dilation, groups, mode)
CASES = {
    "1x1": ((2, 23, 9, 11), (13, 23, 1, 1), (1, 1), [(0, 0), (0, 0)], (1, 1), 1, "zeros"),
    "3x3-reflect": ((2, 19, 10, 12), (11, 19, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1), 1, "reflect"),
    "s2-groups": ((1, 22, 13, 15), (14, 11, 3, 3), (2, 2), [(1, 1), (1, 1)], (1, 1), 2, "zeros"),
    "dil-circular": ((2, 9, 12, 12), (7, 9, 3, 3), (1, 1), [(2, 2), (2, 2)], (2, 2), 1, "circular"),
}


@pytest.fixture(params=[True, False], ids=["direct-stores", "copied-stores"])
def stores(request, monkeypatch):
    """The last K chunk storing each block (igemm.Geometry.direct), or the copies after them."""
    monkeypatch.setattr(igemm, "DIRECT_STORES", request.param)
    return request.param


@pytest.fixture(params=[1, 3, 7], ids=lambda b: f"l1_{b}")
def chunk(request, stores, monkeypatch):
    """Chunks of (about) ``request.param`` channels: the L1 budget scaled to it."""
    monkeypatch.setattr(config, "direct_layout", "pixels")
    monkeypatch.setattr(config, "simd_lanes", 8)
    monkeypatch.setattr(igemm, "_L1_BYTES", 0)  # read below, per case
    igemm.clear_caches()
    yield request.param
    igemm.clear_caches()


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_k_chunks_vs_reference_and_torch(name, dtype, chunk, monkeypatch):
    xs, ws, stride, pads, dil, groups, mode = CASES[name]
    plan = make_conv_plan(xs, ws, (ws[0],), stride, pads, dil, groups, padding_mode=mode, dtype=dtype)
    span = igemm.geometry(plan)[0]._block_span()
    monkeypatch.setattr(igemm, "_L1_BYTES", chunk * span * np.dtype(dtype).itemsize)
    igemm.clear_caches()
    geo = igemm.geometry(plan)[0]
    cg = xs[1] // groups
    assert not geo.channels_last and not geo.band_rows
    assert geo.kc == chunk < cg  # the case is chunked (ragged where kc does not divide cg)
    assert geo.direct == (igemm.DIRECT_STORES and geo.wq >= 8)
    rng = np.random.default_rng(chunk)
    x, w, b = random_array(rng, xs, dtype), random_array(rng, ws, dtype), random_array(rng, (ws[0],), dtype)
    got = nc.conv2d(x, w, b, stride, pads, dil, groups, padding_mode=mode, method="direct")
    params = dict(stride=list(stride), pads=pads, dilation=list(dil), groups=groups, mode=mode)
    ref = conv_reference(x, w, b, **params)
    tol = tolerance(dtype, cg * int(np.prod(ws[2:])), x, w, b, **params)
    assert_close_to_both(got, ref, tol, (x, w, b, stride, pads, dil, groups, mode))


def test_k_chunk_fits_the_l1_budget(monkeypatch):
    """kc channels of a block's tile lines fit _L1_BYTES (at least one
    channel), and a 1x1 block reads one run of px values a channel."""
    monkeypatch.setattr(config, "direct_layout", "pixels")
    plan = make_conv_plan((8, 256, 56, 56), (64, 256, 1, 1), None, dtype=np.float32)
    geo = igemm.geometry(plan)[0]
    span = geo._block_span()
    assert geo.px <= span <= geo.px + 32
    assert geo.kc * span * 4 <= igemm._L1_BYTES < (geo.kc + 1) * span * 4
