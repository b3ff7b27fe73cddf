"""The direct path's channels-last blocks (numbaconv/cpu/igemm.py): lanes
over output channels, the input copied channels-last, blocks of any output
pixels (``fma_taps`` with a row table: no junk columns between the rows of
a plane), several samples' planes per task where one plane fills the
blocks badly, stored by transposes (a unit W stride) or one value at a time
(the transposed op's phases). Which layout "auto" takes, and the results
against the NumPy reference and PyTorch (float64) for every padding mode,
stride, dilation, groups, 1-D to 3-D, bias, both float dtypes, at 4, 8 and
16 lanes."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config
from numbaconv.cpu import igemm
from numbaconv.shapes import make_conv_plan

from .cases import transpose_tolerance
from .conftest import assert_close, assert_close_to_both, random_array, tolerance, torch, torch_conv_transpose
from .reference import conv_reference, conv_transpose_reference

FUNCS = {1: nc.conv1d, 2: nc.conv2d, 3: nc.conv3d}

# (input shape, weight shape, stride, padding (lo, hi) per dim, dilation, groups, mode)
CASES = {
    "7x7-planes": ((3, 24, 7, 7), (40, 24, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1), 1, "zeros"),
    "s2-reflect": ((2, 16, 11, 9), (20, 16, 3, 3), (2, 2), [(1, 1), (1, 1)], (1, 1), 1, "reflect"),
    "groups-dil-circular": ((2, 36, 8, 10), (34, 18, 3, 2), (1, 1), [(2, 2), (1, 2)], (2, 3), 2, "circular"),
    "asym-replicate": ((5, 20, 6, 5), (17, 20, 2, 4), (1, 2), [(0, 1), (3, 2)], (1, 1), 1, "replicate"),
    "1d": ((4, 18, 9), (33, 18, 5), (1,), [(2, 2)], (1,), 1, "reflect"),
    "3d": ((2, 16, 3, 5, 4), (19, 16, 2, 3, 3), (1, 1, 2), [(1, 0), (1, 1), (1, 1)], (1, 1, 1), 1, "zeros"),
}
LANES = {"lanes4": 4, "lanes8": 8, "lanes16": 16}


@pytest.fixture(params=list(LANES), ids=list(LANES))
def lanes(request, monkeypatch):
    monkeypatch.setattr(config, "simd_lanes", LANES[request.param])
    monkeypatch.setattr(config, "direct_layout", "channels")
    return LANES[request.param]


def _plan(case, dtype, bias=True):
    xs, ws, stride, pads, dil, groups, mode = case
    bshape = (ws[0],) if bias else None
    return make_conv_plan(
        xs, ws, bshape, stride, [tuple(p) for p in pads], dil, groups, padding_mode=mode, dtype=dtype
    )


def _run(case, dtype, rng, bias=True):
    xs, ws, stride, pads, dil, groups, mode = case
    x, w = random_array(rng, xs, dtype), random_array(rng, ws, dtype)
    b = random_array(rng, (ws[0],), dtype) if bias else None
    pads = [tuple(p) for p in pads]
    assert igemm.geometry(_plan(case, dtype, bias))[0].channels_last  # the case reaches this layout
    got = FUNCS[len(xs) - 2](x, w, b, stride, pads, dil, groups, padding_mode=mode, method="direct")
    params = dict(stride=list(stride), pads=pads, dilation=list(dil), groups=groups, mode=mode)
    ref = conv_reference(x, w, b, **params)
    tol = tolerance(dtype, xs[1] // groups * int(np.prod(ws[2:])), x, w, b, **params)
    return got, ref, tol, (x, w, b, stride, pads, dil, groups, mode)


@pytest.mark.parametrize("name", list(CASES))
def test_channels_last_float64_vs_reference_and_torch(name, lanes):
    got, ref, tol, args = _run(CASES[name], np.float64, np.random.default_rng(0))
    assert got.dtype == np.float64
    assert_close_to_both(got, ref, tol, args)


@pytest.mark.parametrize("name", list(CASES))
def test_channels_last_float32_no_bias(name, lanes):
    got, ref, tol, _ = _run(CASES[name], np.float32, np.random.default_rng(1), bias=False)
    assert got.dtype == np.float32
    assert_close(got, ref, tol)


def test_several_samples_a_task_and_a_short_last_task(lanes):
    """7x7 planes fill blocks of 6 pixels to 91%: two or more samples share
    a task's tile and blocks; 5 samples leave the last task short."""
    case = ((5, 32, 7, 7), (72, 32, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1), 1, "zeros")
    geo = igemm.geometry(_plan(case, np.float32))[0]
    assert geo.nob > 1 and geo.nbands == 1  # whole planes a task (the o-blocks give the tasks)
    assert geo.px * -(-49 // geo.px) > 1.03 * 49  # one plane fills the blocks badly
    assert geo.ipt > 1 and 5 % geo.ipt != 0
    got, ref, tol, args = _run(case, np.float32, np.random.default_rng(2))
    assert_close_to_both(got, ref, tol, args)


BAND_CASES = {
    "s2-28": ((1, 24, 28, 28), (136, 24, 3, 3), (2, 2), [(1, 1), (1, 1)], (1, 1), 1, "zeros"),
    "5x5-reflect": ((1, 20, 15, 16), (136, 20, 5, 5), (1, 1), [(2, 2), (2, 2)], (1, 1), 1, "reflect"),
    "dil-groups-circ": ((1, 24, 16, 14), (272, 12, 3, 3), (1, 1), [(2, 2), (2, 2)], (2, 2), 2, "circular"),
    "asym-replicate": ((1, 16, 20, 9), (136, 16, 4, 2), (1, 1), [(0, 3), (1, 0)], (1, 1), 1, "replicate"),
}


@pytest.mark.parametrize("name", list(BAND_CASES))
def test_bands_of_few_planes(name, lanes):
    """Few planes (batch 1-2) of 14+ rows: channels-last tasks take bands of
    output rows, each with its chunk of output channel blocks; every band
    edge, halo and padding mode against the references; the geometry
    without bands gives the same values."""
    case = BAND_CASES[name]
    geo = igemm.geometry(_plan(case, np.float64))[0]
    assert geo.channels_last and geo.nob > 1 and geo.nbands > 1
    got, ref, tol, args = _run(case, np.float64, np.random.default_rng(3))
    assert_close_to_both(got, ref, tol, args)
    try:
        igemm.CL_BANDS = False
        igemm.clear_caches()
        assert igemm.geometry(_plan(case, np.float64))[0].nbands == 1
        whole = _run(case, np.float64, np.random.default_rng(3))[0]
    finally:
        igemm.CL_BANDS = True
        igemm.clear_caches()
    np.testing.assert_allclose(got, whole, rtol=1e-12, atol=1e-12 * np.abs(whole).max())


def test_pixel_table_is_every_output_pixel_once():
    """The row table holds each of a task's output pixels' tile offsets once
    (samples a tile part apart), then zeros (the last block's junk rows)."""
    with config.override(simd_lanes=16, direct_layout="channels"):
        plan = _plan(
            ((4, 32, 7, 9), (16, 32, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1), 1, "zeros"), np.float32
        )
        geo, (tabs, *_), _ = igemm.geometry(plan)
    pix = tabs[len(geo.taps) :]
    n = geo.ipt * geo.band * 9
    assert len(pix) == geo.ppad >= n and not pix[n:].any()
    assert len(np.unique(pix[:n])) == n and pix[:n].max() < geo.tile - geo.ps
    img, rest = np.divmod(np.arange(n), geo.band * 9)
    want = img * geo.cs * geo.ps + (rest // 9 * geo.wq + rest % 9) * geo.ps  # no junk columns
    assert geo.wq == 11 and (pix[:n] == want).all()


def _layout(xs, ws, lanes=16, **kw):
    with config.override(simd_lanes=lanes):
        plan = make_conv_plan(xs, ws, None, dtype=np.float32, ndim=len(xs) - 2, **kw)
        return igemm.geometry(plan)[0].channels_last


def test_auto_takes_channels_last_where_pixel_blocks_are_mostly_padding():
    assert _layout((8, 512, 7, 7), (512, 512, 3, 3), padding=1)  # 49 of 64 pixels, 2 junk columns in 9
    assert _layout((8, 256, 14, 14), (256, 256, 3, 3), padding=1)
    assert _layout((8, 128, 28, 28), (128, 128, 3, 3), padding=1)
    assert not _layout((8, 64, 56, 56), (64, 64, 3, 3), padding=1)  # both nearly full
    assert not _layout((8, 8, 7, 7), (8, 8, 3, 3), padding=1)  # fewer output channels than lanes
    assert (
        _layout((8, 8, 7, 7), (8, 8, 3, 3), lanes=4, padding=1) is False
    )  # 8 input channels: k loops too short
    assert not _layout((8, 3, 224, 224), (64, 3, 7, 7), stride=2, padding=3)  # a stem: 3 input channels
    assert not _layout((8, 64, 7, 7), (64, 1, 3, 3), padding=1, groups=64)  # depthwise
    with config.override(direct_layout="pixels"):
        assert not _layout((8, 512, 7, 7), (512, 512, 3, 3), padding=1)


@pytest.mark.parametrize("stride", [2, 3])
def test_transposed_phases_store_one_value_at_a_time(stride, monkeypatch):
    """A transposed conv's phases write every stride-th output column: the
    channels-last blocks store them one by one (auto takes this layout on
    these small planes), with output_padding and the bias."""
    rng = np.random.default_rng(3)
    x = random_array(rng, (2, 32, 6, 5), np.float64)
    w = random_array(rng, (32, 24, 4, 3), np.float64)
    b = random_array(rng, (24,), np.float64)
    kw = dict(stride=stride, padding=1, output_padding=1)
    kinds = []
    run = igemm.run_at
    monkeypatch.setattr(igemm, "run_at", lambda addr, task, *a: kinds.append(task) or run(addr, task, *a))
    with config.override(simd_lanes=8):  # sub-kernels of 2 x 1 to 2 x 2 taps: no Winograd phase
        got = nc.conv_transpose2d(x, w, b, method="gather", **kw)
    assert igemm._conv_cl_task in kinds
    params = dict(stride=[stride] * 2, pads=[(1, 1)] * 2, dilation=[1, 1], groups=1, output_padding=[1, 1])
    ref = conv_transpose_reference(x, w, b, **params)
    tol = transpose_tolerance(np.float64, x, w, b, **params)
    assert_close(got, ref, tol, "vs reference")
    if torch is not None:
        assert_close(got, torch_conv_transpose(x, w, b, *params.values()), tol, "vs torch")
