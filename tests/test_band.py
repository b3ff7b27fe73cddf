"""Band blocks of the direct path (numbaconv/cpu/igemm.py, ``uses_band``):
one output channel per group (depthwise, single-channel filters), H stride 1,
three or more kernel rows, computed by microkernel.fma_band in blocks of rows
that share each loaded input row (4 rows for kernels of 3 or 4 rows, 6 for
longer ones). The common grid's kernels are too short to
reach them, so these cases are their own: every padding mode, W stride and
dilation, H dilation (rows dh apart), 3-D, several input channels, channel
chunks, bias, at 4, 8 and 16 lanes and with 16 registers, against the NumPy
reference and PyTorch (float64)."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config
from numbaconv.cpu import dwcl, igemm
from numbaconv.shapes import make_conv_plan

from .conftest import assert_close, assert_close_to_both, random_array, tolerance
from .reference import conv_reference

FUNCS = {2: nc.conv2d, 3: nc.conv3d}

# (input shape, weight shape, stride, padding (lo, hi) per dim, dilation, groups, mode)
CASES = {
    "dw5x5": ((2, 4, 13, 17), (4, 1, 5, 5), (1, 1), [(2, 2), (2, 2)], (1, 1), 4, "zeros"),
    "dw7x7-dil2x1-reflect": ((1, 3, 20, 11), (3, 1, 7, 7), (1, 1), [(6, 6), (3, 3)], (2, 1), 3, "reflect"),
    "c3to1-6x5-sw2-circular": ((2, 3, 12, 14), (1, 3, 6, 5), (1, 2), [(2, 3), (1, 0)], (1, 1), 1, "circular"),
    "dw9x9-tall": ((1, 2, 40, 37), (2, 1, 9, 9), (1, 1), [(4, 4), (4, 4)], (1, 1), 2, "zeros"),
    "dw5x3-dil2x3-replicate": (
        (2, 2, 21, 30),
        (2, 1, 5, 3),
        (1, 3),
        [(4, 1), (0, 5)],
        (2, 3),
        2,
        "replicate",
    ),
    "dw-narrow": ((1, 2, 19, 3), (2, 1, 5, 2), (1, 1), [(0, 0), (1, 1)], (1, 1), 2, "zeros"),
    "dw3x3-short": ((2, 3, 13, 35), (3, 1, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1), 3, "zeros"),
    "dw3x3-dil2-reflect": ((1, 2, 17, 21), (2, 1, 3, 3), (1, 1), [(2, 2), (2, 2)], (2, 2), 2, "reflect"),
    "c2to1-4x3-sw2-circular": ((2, 2, 11, 19), (1, 2, 4, 3), (1, 2), [(2, 1), (1, 1)], (1, 1), 1, "circular"),
    "3d-dw2x5x3": (
        (2, 2, 4, 12, 10),
        (2, 1, 2, 5, 3),
        (2, 1, 1),
        [(1, 0), (2, 2), (1, 1)],
        (1, 1, 2),
        2,
        "replicate",
    ),
}

VARIANTS = {
    "host": {},
    "lanes4": {"simd_lanes": 4},
    "lanes8-16regs": {"simd_lanes": 8, "simd_block": (6, 2)},
    "lanes16": {"simd_lanes": 16},
}


@pytest.fixture(params=list(VARIANTS), ids=list(VARIANTS))
def variant(request, monkeypatch):
    for name, value in VARIANTS[request.param].items():
        monkeypatch.setattr(config, name, value)
    # at 4 lanes the narrow depthwise cases would take the lanes-over-channels
    # path (numbaconv/cpu/dwcl.py, tests/test_dwcl.py): keep them here
    monkeypatch.setattr(dwcl, "MAX_WIDTH", 0)
    monkeypatch.setattr(dwcl, "WIDE_PLANES", 1 << 40)
    return request.param


def _run(case, dtype, rng):
    xs, ws, stride, pads, dil, groups, mode = case
    nd = len(xs) - 2
    x = random_array(rng, xs, dtype)
    w = random_array(rng, ws, dtype)
    b = random_array(rng, (ws[0],), dtype)
    plan = make_conv_plan(
        xs, ws, (ws[0],), stride, [tuple(p) for p in pads], dil, groups, padding_mode=mode, dtype=dtype
    )
    assert igemm.uses_band(plan) and igemm.fits(plan)  # the case reaches the band blocks
    got = FUNCS[nd](
        x, w, b, stride, [tuple(p) for p in pads], dil, groups, padding_mode=mode, method="direct"
    )
    params = dict(stride=list(stride), pads=pads, dilation=list(dil), groups=groups, mode=mode)
    ref = conv_reference(x, w, b, **params)
    tol = tolerance(dtype, ws[1] * int(np.prod(ws[2:])), x, w, b, **params)
    return got, ref, tol, (x, w, b, stride, pads, dil, groups, mode)


@pytest.mark.parametrize("name", list(CASES))
def test_band_float64_vs_reference_and_torch(name, variant):
    got, ref, tol, args = _run(CASES[name], np.float64, np.random.default_rng(0))
    assert got.dtype == np.float64
    assert_close_to_both(got, ref, tol, args)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES)[::2])
def test_band_dtypes(name, dtype):
    got, ref, tol, _ = _run(CASES[name], dtype, np.random.default_rng(1))
    assert got.dtype == np.dtype(dtype)
    assert_close(got, ref, tol)


def test_band_channel_chunks_accumulate():
    """Many input channels into one output channel, more than a tile holds:
    they come in chunks, and the later chunks add into the output."""
    case = ((1, 400, 20, 21), (1, 400, 5, 5), (1, 1), [(2, 2), (2, 2)], (1, 1), 1, "zeros")
    plan = make_conv_plan(case[0], case[1], (1,), 1, [(2, 2), (2, 2)], 1, 1, dtype=np.float64)
    geo = igemm.Geometry(plan, 8, 32, 2)
    assert geo.cc < geo.cg  # more than one chunk
    got, ref, tol, _ = _run(case, np.float64, np.random.default_rng(2))
    assert_close(got, ref, tol)


def test_band_only_where_it_pays():
    """Band blocks need H stride 1, one output channel per group, at least
    3 kernel rows and enough output rows; other shapes keep the row blocks.
    Blocks of 4 rows for 3 or 4 kernel rows, 6 for more (fma_band needs
    kh >= rows - 1)."""

    def plan(ws, stride=1, groups=1):
        return make_conv_plan((1, 4, 16, 16), ws, None, stride, 0, 1, groups, dtype=np.float32)

    assert igemm.uses_band(plan((4, 1, 5, 5), groups=4))
    assert igemm.uses_band(plan((4, 1, 3, 3), groups=4))
    assert not igemm.uses_band(plan((4, 1, 2, 5), groups=4))  # too few kernel rows
    assert [igemm.band_rows(k) for k in range(1, 8)] == [0, 0, 4, 4, 6, 6, 6]
    for k in range(3, 12):
        assert k >= igemm.band_rows(k) - 1
    assert not igemm.uses_band(plan((4, 1, 5, 5), stride=(2, 1), groups=4))  # H stride
    assert not igemm.uses_band(plan((8, 2, 5, 5), groups=2))  # four output channels per group
    # 14 rows in blocks of 6 rows 2 apart: 24 computed, more than 1.5x
    assert not igemm.uses_band(make_conv_plan((1, 2, 16, 16), (2, 1, 5, 5), None, 1, 3, 2, 2))


@pytest.mark.parametrize(
    "ws, pads, layout",
    [
        ((37, 1, 5, 5), [(2, 2), (2, 2)], "pixels"),  # band blocks (depthwise 5x5)
        ((74, 2, 3, 3), [(1, 1), (1, 1)], "pixels"),  # row blocks (2 in, 2 out per group)
        ((148, 1, 1, 3), [(0, 0), (1, 1)], "channels"),  # channels-last, 4 out per group
    ],
    ids=["band", "rows", "channels-last"],
)
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_groups_share_a_task(ws, pads, layout, mode, monkeypatch):
    """Many small groups: a task takes several in turn, reusing its tile (the
    last task's chunk shorter), in each kind of task; with zero padding the
    later fills leave the tile's zero rows and columns as they are, with
    another mode they copy them again."""
    monkeypatch.setattr(config, "simd_lanes", 4)
    monkeypatch.setattr(config, "direct_layout", "auto" if layout == "pixels" else "channels")
    groups = 37
    xs = (3, ws[1] * groups, 9, 11)
    plan = make_conv_plan(xs, ws, (ws[0],), 1, pads, 1, groups, padding_mode=mode, dtype=np.float64)
    geo = igemm.geometry(plan)[0]
    assert geo.gpt > 1 and groups % geo.gpt != 0
    assert geo.channels_last == (layout == "channels") and (geo.band_rows > 0) == (ws[2] == 5)
    rng = np.random.default_rng(5)
    x, w, b = (random_array(rng, s, np.float64) for s in (xs, ws, (ws[0],)))
    got = nc.conv2d(x, w, b, 1, pads, 1, groups, padding_mode=mode, method="direct")
    params = dict(stride=[1, 1], pads=pads, dilation=[1, 1], groups=groups, mode=mode)
    ref = conv_reference(x, w, b, **params)
    assert_close(got, ref, tolerance(np.float64, ws[1] * ws[2] * ws[3], x, w, b, **params))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tall_row_blocks_on_small_planes(dtype, variant):
    """Small planes with enough output channels per group take tall row
    blocks (TALL_ROWS channels x fewer pixels) where those pad less; the
    last block's channels and pixels are partial; against the reference."""
    xs, ws, pads = (2, 6, 3, 3), (2 * 28, 3, 3, 3), [(1, 1), (1, 1)]
    plan = make_conv_plan(xs, ws, (ws[0],), 1, pads, 1, 2, dtype=dtype)
    geo = igemm.geometry(plan)[0]
    assert geo.block == (igemm.TALL_ROWS if variant != "lanes8-16regs" else 4)
    rng = np.random.default_rng(9)
    x, w, b = (random_array(rng, s, dtype) for s in (xs, ws, (ws[0],)))
    got = nc.conv2d(x, w, b, 1, pads, 1, 2, method="direct")
    params = dict(stride=[1, 1], pads=pads, dilation=[1, 1], groups=2, mode="zeros")
    ref = conv_reference(x, w, b, **params)
    assert_close(got, ref, tolerance(dtype, 27, x, w, b, **params))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("hw", [(31, 37), (9, 19), (50, 8)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_band_tail_blocks_move_back(hw, dtype, variant):
    """The last block of a row (and of a band's rows) that would pass its
    end moves back to end there, storing some values of the block before it
    again: planes whose widths and heights are not multiples of a block,
    split into several bands (one sample, two channels: bands are the
    tasks), equal the reference everywhere, the overlapped columns and rows
    included; a bias checks that no value is stored with it twice."""
    h, w = hw
    xs, ws, pads = (1, 2, h, w), (2, 1, 7, 5), [(3, 3), (2, 2)]
    plan = make_conv_plan(xs, ws, (2,), 1, pads, 1, 2, dtype=dtype)
    geo = igemm.geometry(plan)[0]
    assert igemm.uses_band(plan) and geo.band_rows == 6
    assert geo.nbands > 1 or h < 10  # several bands: the move stays inside each
    rng = np.random.default_rng(11)
    x, wt, b = (random_array(rng, s, dtype) for s in (xs, ws, (2,)))
    b += 100  # a bias added twice would show
    got = nc.conv2d(x, wt, b, 1, pads, 1, 2, method="direct")
    params = dict(stride=[1, 1], pads=pads, dilation=[1, 1], groups=2, mode="zeros")
    ref = conv_reference(x, wt, b, **params)
    assert_close(got, ref, tolerance(dtype, 35, x, wt, b, **params))


@pytest.mark.parametrize(
    "name", ["dw5x5", "dw7x7-dil2x1-reflect", "3d-dw2x5x3", "dw3x3-short", "c2to1-4x3-sw2-circular"]
)
def test_band_prefetch_changes_no_value(name, monkeypatch):
    """Band tasks bring the next fill's input rows into the caches while
    their blocks compute (llvm.prefetch, a hint): the same values with and
    without, the prefetches on in the kernels' arguments where band blocks
    run."""
    results = []
    for on in (False, True):
        monkeypatch.setattr(igemm, "PREFETCH", on)
        igemm.clear_caches()
        got, ref, tol, _ = _run(CASES[name], np.float64, np.random.default_rng(3))
        assert_close(got, ref, tol)
        results.append(got)
    xs, ws, stride, pads, dil, groups, mode = CASES[name]
    plan = make_conv_plan(xs, ws, None, stride, [tuple(p) for p in pads], dil, groups, padding_mode=mode)
    assert igemm.geometry(plan)[0].tail()[-1] == 1
    np.testing.assert_array_equal(results[0], results[1])
    igemm.clear_caches()


def test_band_prefetch_with_channel_chunks(monkeypatch):
    """Channel chunks: the next fill is the next chunk of the same group
    (the next group's first: test_groups_share_a_task); values as without
    prefetches."""
    case = ((1, 800, 20, 21), (2, 400, 5, 5), (1, 1), [(2, 2), (2, 2)], (1, 1), 2, "zeros")
    plan = make_conv_plan(case[0], case[1], (2,), 1, [(2, 2), (2, 2)], 1, 2, dtype=np.float64)
    igemm.clear_caches()
    geo = igemm.geometry(plan)[0]
    assert geo.band_rows and geo.cc < geo.cg
    results = []
    for on in (False, True):
        monkeypatch.setattr(igemm, "PREFETCH", on)
        igemm.clear_caches()
        got, ref, tol, _ = _run(case, np.float64, np.random.default_rng(4))
        assert_close(got, ref, tol)
        results.append(got)
    np.testing.assert_array_equal(results[0], results[1])
    igemm.clear_caches()
