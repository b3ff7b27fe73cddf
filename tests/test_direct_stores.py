"""Blocks stored by the micro-kernel (numbaconv/cpu/igemm.py,
``Geometry.direct``, ``microkernel.fma_taps_out``): where a tile holds every
input channel of a group, the last K chunk of each pixel block starts from
the bias (and the earlier chunks' sums) and stores the block straight into
the output, its vectors split at the ends of the tile's rows (junk columns
and the pixels past the band not stored), its rows past the group's output
channels dropped. Widths just above a vector, narrower planes without junk
columns (the band one run of the output), rows 4 to 6 and the tall blocks
with ragged last blocks, every padding mode, groups, stride, dilation, K
chunks and a stride-1 transposed op, at 4, 8 and 16 lanes, against the
reference and PyTorch; and the same results with the stores off."""

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
    "stem-s2": ((2, 3, 41, 37), (10, 3, 3, 3), (2, 2), [(1, 1), (1, 1)], (1, 1), 1, "zeros"),
    "7x7-s2": ((1, 3, 47, 45), (13, 3, 7, 7), (2, 2), [(3, 3), (3, 3)], (1, 1), 1, "zeros"),
    "5x5-reflect": ((2, 4, 19, 21), (5, 4, 5, 5), (1, 1), [(2, 2), (2, 2)], (1, 1), 1, "reflect"),
    "groups-dil": ((2, 6, 23, 19), (8, 3, 3, 3), (1, 1), [(2, 2), (2, 2)], (2, 2), 2, "circular"),
    "asym-replicate": ((1, 5, 20, 17), (7, 5, 3, 2), (1, 1), [(2, 0), (0, 1)], (1, 1), 1, "replicate"),
    "1-d": ((3, 4, 70), (6, 4, 5), (1,), [(2, 2)], (1,), 1, "zeros"),
    "1x1-narrow": ((2, 6, 7, 9), (5, 6, 1, 1), (1, 1), [(0, 0), (0, 0)], (1, 1), 1, "zeros"),
}
LANES = {4: (4, 32), 8: (8, 16), 16: (16, 32)}


@pytest.fixture(params=sorted(LANES), ids=lambda n: f"lanes{n}")
def lanes(request, monkeypatch):
    monkeypatch.setattr(config, "direct_layout", "pixels")
    monkeypatch.setattr(config, "simd_lanes", request.param)
    igemm.clear_caches()
    yield request.param
    igemm.clear_caches()


def _conv(x, w, b, stride, pads, dil, groups, mode):
    fn = nc.conv1d if x.ndim == 3 else nc.conv2d
    return fn(x, w, b, stride, pads, dil, groups, padding_mode=mode, method="direct")


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_direct_stores_vs_reference_and_torch(name, dtype, lanes, monkeypatch):
    xs, ws, stride, pads, dil, groups, mode = CASES[name]
    plan = make_conv_plan(xs, ws, (ws[0],), stride, pads, dil, groups, padding_mode=mode, dtype=dtype)
    geo = igemm.geometry(plan)[0]
    assert geo.direct and geo.block in (4, 5, 6, igemm.TALL_ROWS)
    assert geo.wq >= lanes or geo.wq == plan.out_size[2]  # narrow: no junk columns (one run)
    rng = np.random.default_rng(lanes)
    x, w, b = random_array(rng, xs, dtype), random_array(rng, ws, dtype), random_array(rng, (ws[0],), dtype)
    got = _conv(x, w, b, stride, pads, dil, groups, mode)
    params = dict(stride=list(stride), pads=pads, dilation=list(dil), groups=groups, mode=mode)
    ref = conv_reference(x, w, b, **params)
    tol = tolerance(dtype, xs[1] // groups * int(np.prod(ws[2:])), x, w, b, **params)
    assert_close_to_both(got, ref, tol, (x, w, b, stride, pads, dil, groups, mode))
    # without a bias, and the copying stores: the same values
    assert_close(
        _conv(x, w, None, stride, pads, dil, groups, mode), conv_reference(x, w, None, **params), tol
    )
    monkeypatch.setattr(igemm, "DIRECT_STORES", False)
    igemm.clear_caches()
    assert not igemm.geometry(plan)[0].direct
    assert_close(_conv(x, w, b, stride, pads, dil, groups, mode), got, 2 * tol)


def test_direct_stores_only_where_a_tile_holds_every_channel(monkeypatch):
    """Channel chunks (the later ones add into the output) and tile rows
    narrower than a vector keep the copying stores; K chunks within a tile
    do not (the last stores the block)."""
    monkeypatch.setattr(config, "direct_layout", "pixels")
    monkeypatch.setattr(config, "simd_lanes", 16)
    igemm.clear_caches()
    wide = make_conv_plan((1, 8, 30, 30), (12, 8, 3, 3), None, 1, [(1, 1), (1, 1)], dtype=np.float32)
    narrow = make_conv_plan((1, 8, 9, 9), (12, 8, 3, 3), None, 1, [(1, 1), (1, 1)], dtype=np.float32)
    assert igemm.geometry(wide)[0].direct and not igemm.geometry(narrow)[0].direct
    monkeypatch.setattr(igemm, "_L1_BYTES", 0)  # one channel a K chunk
    igemm.clear_caches()
    geo = igemm.geometry(wide)[0]
    assert geo.kc < geo.cg and geo.direct
    monkeypatch.setattr(igemm, "_TILE_BYTES", 4096)  # a row of 40 channels does not fit
    igemm.clear_caches()
    geo = igemm.geometry(make_conv_plan((1, 40, 21, 26), (9, 40, 3, 3), None, 1, 1, dtype=np.float64))[0]
    assert geo.cc < geo.cg and not geo.direct


@pytest.mark.parametrize("chunk", [1, 3])
def test_direct_stores_after_k_chunks(chunk, lanes, monkeypatch):
    """The earlier K chunks sum into the task's accumulators, the last one
    starts from them and stores the block (ragged: kc does not divide 7)."""
    xs, ws, pads = (2, 7, 19, 23), (11, 7, 3, 3), [(1, 1), (1, 1)]
    plan = make_conv_plan(xs, ws, (11,), 1, pads, dtype=np.float64)
    monkeypatch.setattr(igemm, "_L1_BYTES", chunk * igemm.geometry(plan)[0]._block_span() * 8)
    igemm.clear_caches()
    geo = igemm.geometry(plan)[0]
    assert geo.direct and geo.kc == chunk
    rng = np.random.default_rng(chunk)
    x, w, b = (random_array(rng, s, np.float64) for s in (xs, ws, (11,)))
    got = nc.conv2d(x, w, b, 1, pads, method="direct")
    params = dict(stride=[1, 1], pads=pads, dilation=[1, 1], groups=1, mode="zeros")
    ref = conv_reference(x, w, b, **params)
    assert_close_to_both(
        got, ref, tolerance(np.float64, 7 * 9, x, w, b, **params), (x, w, b, (1, 1), pads, (1, 1), 1, "zeros")
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_direct_stores_into_a_stride_1_transposed_op(dtype, lanes):
    """A stride-1 transposed op's one phase is the whole output (unit W stride)."""
    rng = np.random.default_rng(9)
    x, w, b = (random_array(rng, s, dtype) for s in ((2, 5, 21, 23), (5, 6, 3, 3), (6,)))
    got = nc.conv_transpose2d(x, w, b, stride=1, padding=1, method="gather")
    params = dict(stride=[1, 1], pads=[(1, 1), (1, 1)], dilation=[1, 1], groups=1, output_padding=[0, 0])
    ref = conv_transpose_reference(x, w, b, **params)
    assert_close(got, ref, transpose_tolerance(dtype, x, w, b, **params))
