"""Depthwise convs of narrow planes with lanes over channels
(numbaconv/cpu/dwcl.py): a channels-last tile copied by in-register
transposes, blocks of 8 output pixels x a vector of channels
(microkernel.fma_taps_vv), written back to NCHW by transposes with the bias.
Every padding mode, stride, dilation, asymmetric padding, 1-D to 3-D,
channel counts that leave a partial block, at 4, 8 and 16 lanes, float32
and float64, integer inputs, NaN/Inf, against the NumPy reference and
PyTorch (float64)."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config
from numbaconv.cpu import direct, dwcl
from numbaconv.shapes import make_conv_plan

from .conftest import assert_close, assert_close_to_both, random_array, tolerance
from .reference import conv_reference

FUNCS = {1: nc.conv1d, 2: nc.conv2d, 3: nc.conv3d}

# (input shape, weight shape, stride, padding (lo, hi) per dim, dilation, mode)
CASES = {
    "3x3": ((2, 17, 7, 7), (17, 1, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1), "zeros"),
    "5x5-s2-reflect": ((1, 33, 13, 11), (33, 1, 5, 5), (2, 2), [(2, 2), (2, 2)], (1, 1), "reflect"),
    "3x5-dil-circular-asym": ((2, 16, 9, 14), (16, 1, 3, 5), (1, 2), [(2, 1), (0, 4)], (2, 2), "circular"),
    "2x7-replicate": ((1, 20, 5, 9), (20, 1, 2, 7), (1, 1), [(1, 0), (3, 3)], (1, 1), "replicate"),
    "valid-wide-kernel": ((2, 24, 6, 18), (24, 1, 3, 9), (1, 1), [(0, 0), (0, 0)], (1, 1), "zeros"),
    "1d": ((3, 19, 11), (19, 1, 4), (1,), [(2, 1)], (1,), "reflect"),
    "s2-wide": ((1, 17, 40, 70), (17, 1, 3, 3), (2, 2), [(1, 1), (1, 1)], (1, 1), "zeros"),
    "3d": ((2, 18, 4, 6, 5), (18, 1, 2, 3, 3), (1, 2, 1), [(1, 0), (1, 1), (1, 1)], (1, 1, 1), "replicate"),
    # 3-wide rows in bands of a few rows (one sample, one channel block: the
    # tasks split the rows): a block's junk pixels spill over two rows
    "narrow-bands": ((1, 16, 40, 3), (16, 1, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1), "zeros"),
    "tall-s2-bands": ((1, 20, 45, 9), (20, 1, 3, 3), (2, 1), [(1, 1), (2, 0)], (1, 1), "reflect"),
    # wider rows, samples x channels enough (WIDE_PLANES)
    "wide-planes-reflect": ((8, 32, 6, 40), (32, 1, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1), "reflect"),
    "wide-planes-7x7-dil": ((4, 64, 9, 50), (64, 1, 7, 7), (1, 1), [(3, 3), (6, 6)], (1, 2), "zeros"),
}

LANES = {"lanes4": 4, "lanes8": 8, "lanes16": 16}


@pytest.fixture(params=list(LANES), ids=list(LANES))
def lanes(request, monkeypatch):
    monkeypatch.setattr(config, "simd_lanes", LANES[request.param])
    return LANES[request.param]


def _run(case, dtype, rng, bias=True):
    xs, ws, stride, pads, dil, mode = case
    nd = len(xs) - 2
    c = xs[1]
    x = random_array(rng, xs, dtype)
    w = random_array(rng, ws, dtype)
    b = random_array(rng, (c,), dtype) if bias else None
    pads = [tuple(p) for p in pads]
    bshape = (c,) if bias else None
    plan = make_conv_plan(xs, ws, bshape, stride, pads, dil, c, padding_mode=mode, dtype=dtype)
    assert direct._uses_dwcl(plan)  # the case reaches this path
    got = FUNCS[nd](x, w, b, stride, pads, dil, c, padding_mode=mode, method="direct")
    params = dict(stride=list(stride), pads=pads, dilation=list(dil), groups=c, mode=mode)
    ref = conv_reference(x, w, b, **params)
    tol = tolerance(dtype, int(np.prod(ws[2:])), x, w, b, **params)
    return got, ref, tol, (x, w, b, stride, pads, dil, c, mode)


@pytest.mark.parametrize("name", list(CASES))
def test_dwcl_float64_vs_reference_and_torch(name, lanes):
    got, ref, tol, args = _run(CASES[name], np.float64, np.random.default_rng(0))
    assert got.dtype == np.float64
    assert_close_to_both(got, ref, tol, args)


@pytest.mark.parametrize("name", list(CASES))
def test_dwcl_float32_no_bias(name):
    got, ref, tol, _ = _run(CASES[name], np.float32, np.random.default_rng(1), bias=False)
    assert got.dtype == np.float32
    assert_close(got, ref, tol)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_dwcl_integer_input_equals_the_float_input(dtype):
    """An 8/16-bit image is converted while the tile is copied: the same
    result as the float input, bit for bit."""
    rng = np.random.default_rng(2)
    x = rng.integers(0, 200, size=(2, 20, 7, 9)).astype(dtype)
    w = random_array(rng, (20, 1, 3, 3), np.float32)
    kw = dict(padding=1, groups=20, padding_mode="reflect", method="direct")
    np.testing.assert_array_equal(nc.conv2d(x, w, **kw), nc.conv2d(x.astype(np.float32), w, **kw))


def test_dwcl_nan_and_inf_propagate_as_in_the_reference():
    """A NaN or Inf input spreads to the outputs that read it; a NaN weight
    meets the zero padding as PyTorch's does (NaN there too)."""
    rng = np.random.default_rng(3)
    x = random_array(rng, (1, 16, 7, 7), np.float64)
    w = random_array(rng, (16, 1, 3, 3), np.float64)
    x[0, 2, 3, 3] = np.nan
    x[0, 5, 0, 6] = np.inf
    w[9, 0, 0, 0] = np.nan
    got = nc.conv2d(x, w, padding=1, groups=16, method="direct")
    ref = conv_reference(x, w, None, stride=[1, 1], pads=[(1, 1), (1, 1)], dilation=[1, 1], groups=16)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    fine = np.isfinite(ref)
    assert_close(got[fine], ref[fine], 1e-12)


def test_dwcl_only_for_narrow_depthwise_planes():
    """Depthwise with multiplier 1, at least a vector of channels and output
    rows of at most MAX_WIDTH columns or an H stride; not a depth
    multiplier, few channels, wide stride-1 rows or complex dtypes."""
    lanes = 16

    def plan(xs, ws, groups, dtype=np.float32):
        return make_conv_plan(xs, ws, None, 1, 1, 1, groups, dtype=dtype)

    assert dwcl.uses(plan((1, 32, 7, 7), (32, 1, 3, 3), 32), lanes)
    assert not dwcl.uses(plan((1, 32, 7, 7), (64, 1, 3, 3), 32), lanes)  # multiplier 2
    assert not dwcl.uses(plan((1, 8, 7, 7), (8, 1, 3, 3), 8), lanes)  # under a vector of channels
    wide = dwcl.MAX_WIDTH + 1
    assert not dwcl.uses(plan((1, 32, 7, wide), (32, 1, 3, 3), 32), lanes)
    strided = make_conv_plan((1, 32, 9, 4 * wide), (32, 1, 3, 3), None, 2, 1, 1, 32, dtype=np.float32)
    assert dwcl.uses(strided, lanes)  # an H stride: any width
    assert not direct._uses_dwcl(plan((1, 32, 7, 7), (32, 1, 3, 3), 32, np.complex64))


def test_dwcl_on_wider_rows_with_planes_enough():
    """Past MAX_WIDTH, up to WIDE_MAX_WIDTH columns: where samples x
    channels reach WIDE_PLANES, with two vectors of channels or more and a
    2-D kernel of at most WIDE_MAX_ROWS rows; otherwise the band blocks."""
    lanes = 16

    def plan(n, c, width, k=3, kd=None):
        if kd:
            return make_conv_plan((n, c, 4, 9, width), (c, 1, kd, k, k), None, 1, 1, 1, c, dtype=np.float32)
        return make_conv_plan((n, c, 9, width), (c, 1, k, k), None, 1, k // 2, 1, c, dtype=np.float32)

    width = dwcl.WIDE_MAX_WIDTH
    planes = dwcl.WIDE_PLANES
    assert dwcl.uses(plan(planes // 32, 32, width), lanes)
    assert dwcl.uses(plan(1, planes, 40, k=dwcl.WIDE_MAX_ROWS), lanes)
    assert not dwcl.uses(plan(planes // 32, 32, width + 1), lanes)  # wider
    assert not dwcl.uses(plan(planes // 64, 32, width), lanes)  # planes too few
    assert not dwcl.uses(plan(planes // 16, 16, width), lanes)  # one vector of channels
    assert not dwcl.uses(plan(1, planes, 40, k=dwcl.WIDE_MAX_ROWS + 2), lanes)  # a taller kernel
    assert not dwcl.uses(plan(planes // 32, 32, width, kd=3), lanes)  # 3-D kernel


def test_dwcl_within_the_workspace_budget_else_the_other_paths(monkeypatch):
    """Tiles beyond ``config.workspace_bytes`` (a band of one row of a very
    wide strided plane) leave the case to the other kernels, which still
    give the answer."""
    rng = np.random.default_rng(6)
    x = random_array(rng, (1, 16, 5, 400), np.float64)
    w = random_array(rng, (16, 1, 3, 3), np.float64)
    p = make_conv_plan(x.shape, w.shape, None, 2, 1, 1, 16, dtype=np.float64)
    assert direct._uses_dwcl(p)
    monkeypatch.setattr(config, "workspace_bytes", dwcl.workspace_bytes(p) - 1)
    assert not direct._uses_dwcl(p)
    got = nc.conv2d(x, w, stride=2, padding=1, groups=16, method="direct")
    ref = conv_reference(x, w, None, stride=[2, 2], pads=[(1, 1), (1, 1)], dilation=[1, 1], groups=16)
    assert_close(got, ref, 1e-12)


def test_dwcl_weights_are_kept_and_an_edited_weight_is_packed_again():
    rng = np.random.default_rng(4)
    x = random_array(rng, (1, 16, 6, 6), np.float32)
    w = random_array(rng, (16, 1, 3, 3), np.float32)
    first = nc.conv2d(x, w, padding=1, groups=16, method="direct")
    w[7, 0, 1, 1] += 3.0
    second = nc.conv2d(x, w, padding=1, groups=16, method="direct")
    ref = conv_reference(x, w, None, stride=[1, 1], pads=[(1, 1), (1, 1)], dilation=[1, 1], groups=16)
    assert_close(second, ref, 1e-5)
    assert not np.allclose(first[0, 7], second[0, 7])


def test_dwcl_bands_split_by_the_tile_budget(monkeypatch):
    """A plane whose tile would exceed the budget runs in bands of fewer
    rows (the last one shorter), each copying its own rows and halo."""
    monkeypatch.setattr(dwcl, "_TILE_BYTES", 25000)
    dwcl._geometry.cache_clear()
    try:
        xs, ws, stride, pads = (8, 16, 25, 30), (16, 1, 3, 5), (2, 2), [(1, 1), (2, 2)]
        case = (xs, ws, stride, pads, (1, 1), "reflect")
        got, ref, tol, _ = _run(case, np.float64, np.random.default_rng(5))
        plan = make_conv_plan(xs, ws, (16,), stride, pads, 1, 16, padding_mode="reflect")
        geo = dwcl.geometry(plan)[0]
        assert geo.nbands > 1 and geo.tile * 8 <= 25000 and plan.out_size[1] % geo.band > 0
        assert_close(got, ref, tol)
    finally:
        dwcl._geometry.cache_clear()


def test_dwcl_tasks_take_several_channel_blocks(lanes):
    """Many small planes: a task copies and computes several blocks of
    channels with one tile and buffer (the last chunk of blocks shorter,
    the last block partly past the channels)."""
    xs, ws, pads = (2, 333, 6, 5), (333, 1, 3, 3), [(1, 1), (1, 1)]
    plan = make_conv_plan(xs, ws, (333,), 1, pads, 1, 333, padding_mode="replicate")
    geo = dwcl.geometry(plan)[0]
    assert geo.cpt > 1 and geo.tasks == 2 * -(-geo.ncb // geo.cpt)
    got, ref, tol, args = _run(
        (xs, ws, (1, 1), pads, (1, 1), "replicate"), np.float64, np.random.default_rng(8)
    )
    assert_close_to_both(got, ref, tol, args)
