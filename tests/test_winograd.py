"""Winograd convolution (numbaconv/cpu/winograd.py): the transform matrices
exactly, accuracy within the direct path's bound at realistic reduction
lengths, tiles and channel chunks with ragged edges, every padding form and
mode, dilation by interleaved grids, groups, lanes 4/8/16, non-finite
values as PyTorch gives them, and what it does not support (and why)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numba import njit

import numbaconv as nc
from numbaconv import config, dispatch, shapes
from numbaconv.cpu import microkernel as mk
from numbaconv.cpu import winograd as wg
from numbaconv.cpu.winotile import Tile, tile_in, tile_in_rows, tile_out

from .conftest import assert_close, tolerance, torch, torch_conv
from .reference import conv_reference

FUNCS = {1: nc.conv1d, 2: nc.conv2d, 3: nc.conv3d}


@pytest.mark.parametrize("m, r", [(m, r) for m in range(1, 7) for r in range(1, 6) if m + r - 2 <= 11])
def test_matrices_compute_the_correlation(m, r):
    """A^T ((G g) * (B^T d)) = sum_k g[k] d[i + k] for every F(m, r) the
    module can make; B^T has integer entries (the scale is in G)."""
    at, g, bt = wg.matrices(m, r)
    alpha = m + r - 1
    assert at.shape == (m, alpha) and g.shape == (alpha, r) and bt.shape == (alpha, alpha)
    np.testing.assert_array_equal(bt, np.round(bt))
    rng = np.random.default_rng(m * 10 + r)
    for _ in range(3):
        gk, d = rng.standard_normal(r), rng.standard_normal(alpha)
        want = np.array([gk @ d[i : i + r] for i in range(m)])
        got = at @ ((g @ gk) * (bt @ d))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * (1 + np.abs(d).sum() * np.abs(gk).sum()))


def test_tile_sizes_follow_dims_and_channels():
    def m(nd, cig, k):
        return wg.tile_sizes(shapes.make_plan("conv", (1, cig) + (9,) * nd, (2, cig) + (k,) * nd, None))

    assert m(1, 1, 3) == (1, 1, 4) and m(1, 1, 4) == (1, 1, 3)
    assert m(2, 8, 3) == (1, 4, 4) and m(2, 4, 3) == (1, 2, 2) and m(2, 64, 1) == (1, 1, 1)
    assert m(3, 16, 3) == (4, 4, 4) and m(3, 4, 3) == (3, 3, 3) and m(3, 2, 5) == (2, 2, 2)


def test_f43_is_lavins():
    """F(4, 3) on the points 0, +-1, +-2 is the classic B^T of Lavin & Gray."""
    bt = wg.matrices(4, 3)[2]
    lavin = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
             [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]  # fmt: skip
    # the same rows up to sign
    for row, want in zip(bt, np.array(lavin, dtype=float)):
        assert np.array_equal(row, want) or np.array_equal(row, -want)


def _case(rng, nd, n, cin, cout, groups, size, k, dtype, **kw):
    x = rng.standard_normal((n, cin) + size).astype(dtype)
    w = rng.standard_normal((cout, cin // groups) + k).astype(dtype)
    b = rng.standard_normal(cout).astype(dtype)
    return x, w, b


def _check(x, w, b, dtype, padding=0, dilation=1, groups=1, mode="zeros", method="winograd"):
    nd = w.ndim - 2
    got = FUNCS[nd](x, w, b, 1, padding, dilation, groups, padding_mode=mode, method=method)
    plan = shapes.make_plan(
        "conv", x, w, b, padding=padding, dilation=dilation, groups=groups, padding_mode=mode
    )
    pads = [plan.padding[i] for i in range(3 - nd, 3)]
    params = dict(stride=[1] * nd, pads=pads, dilation=[dilation] * nd, groups=groups, mode=mode)
    ref = conv_reference(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **params)
    K = w.shape[1] * int(np.prod(w.shape[2:]))
    tol = tolerance(dtype, K, x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **params)
    assert got.dtype == np.dtype(dtype)
    assert_close(got, ref, tol, "vs reference")
    if torch is not None and dtype == np.float64:
        assert_close(got, torch_conv(x, w, b, [1] * nd, pads, [dilation] * nd, groups, mode), tol, "vs torch")
    return got


ACCURACY = [
    (1, (64,), (3,)), (1, (64,), (5,)), (1, (32,), (2,)), (1, (32,), (4,)), (1, (1,), (5,)),
    (2, (64,), (3, 3)), (2, (16,), (5, 5)), (2, (16,), (2, 2)), (2, (16,), (4, 4)), (2, (32,), (3, 1)),
    (2, (8,), (3, 3)), (2, (4,), (3, 3)), (2, (1,), (5, 5)), (2, (2,), (2, 2)),
    (3, (16,), (3, 3, 3)), (3, (8,), (5, 3, 2)), (3, (4,), (3, 3, 3)), (3, (1,), (2, 3, 2)),
    (3, (2,), (3, 3, 3)),
]  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd, cin, k", ACCURACY, ids=lambda v: str(v))
def test_accuracy_within_the_direct_bound(nd, cin, k, dtype):
    """The tile sizes (wg.tile_sizes: by kernel extent, transformed dims and
    channels per group) keep the error inside the bound the direct path is
    tested with (8 eps sqrt(K) max(|x| (*) |w|)), from 1 channel per group to
    the reduction lengths of real layers, for normal and all-positive data,
    over several draws."""
    rng = np.random.default_rng(7)
    size = {1: (150,), 2: (21, 19), 3: (9, 10, 11)}[nd]
    for positive in (False, True, False, True):
        x, w, b = _case(rng, nd, 2, cin[0], 8, 1, size, k, dtype)
        if positive:
            x, w = np.abs(x), np.abs(w)
        _check(x, w, b, dtype, padding="same")


KERNELS = {1: (3,), 2: (3, 2), 3: (2, 3, 3)}
SIZES = {1: (17,), 2: (11, 13), 3: (7, 6, 9)}


def _padding(nd, padding):
    return tuple((2, 0) if i % 2 else (0, 1) for i in range(nd)) if padding == "asym" else padding


def _valid(nd, ncg, dilation, padding, mode):
    """Cases whose padding the mode can take (reflect narrower than the input...)."""
    n, cin, cout, groups = ncg
    try:
        shapes.make_conv_plan(
            (n, cin) + SIZES[nd], (cout, cin // groups) + KERNELS[nd], None, 1, _padding(nd, padding),
            dilation, groups, padding_mode=mode,
        )  # fmt: skip
    except ValueError:
        return False
    return True


GRID = [
    c
    for c in itertools.product(
        [1, 2, 3],  # dims
        [(1, 5, 7, 1), (3, 12, 13, 1), (2, 6, 9, 3), (1, 70, 6, 2)],  # N, C_in, C_out, groups
        [1, 2, 3],  # dilation
        [0, "same", "asym"],
        ["zeros", "reflect", "replicate", "circular"],
    )
    if _valid(*c)
]


@pytest.mark.parametrize("nd, ncg, dilation, padding, mode", GRID[::3])
def test_ragged_tiles_channels_groups_padding_and_dilation(nd, ncg, dilation, padding, mode):
    """Outputs that do not fill their tiles, tiles that do not fill a block
    of lanes (over the batch), output channels that do not fill a register
    block, input channels across chunks (a small chunk forced) and
    transform groups, every padding form and mode, dilation 2 and 3."""
    n, cin, cout, groups = ncg
    k = {1: (3,), 2: (3, 2), 3: (2, 3, 3)}[nd]
    size = {1: (17,), 2: (11, 13), 3: (7, 6, 9)}[nd]
    if padding == "asym":
        padding = tuple((2, 0) if i % 2 else (0, 1) for i in range(nd))
    rng = np.random.default_rng(hash((nd, ncg, dilation, str(padding), mode)) % 2**32)
    x, w, b = _case(rng, nd, n, cin, cout, groups, size, k, np.float64)
    if mode != "zeros" and padding == "same" and dilation * 2 >= min(size):
        padding = 1
    try:
        shapes.make_plan(
            "conv", x, w, b, padding=padding, dilation=dilation, padding_mode=mode, groups=groups
        )
    except ValueError:
        return  # a padding the mode cannot take (e.g. reflect wider than the input): the API says so
    _check(x, w, b, np.float64, padding, dilation, groups, mode)
    wg._geometry.cache_clear()
    wg._maps.cache_clear()
    old = wg._CHUNK_BYTES
    try:
        wg._CHUNK_BYTES = 1  # one channel per chunk: every GEMM after the first accumulates
        _check(
            x.astype(np.float32),
            w.astype(np.float32),
            b.astype(np.float32),
            np.float32,
            padding,
            dilation,
            groups,
            mode,
        )
    finally:
        wg._CHUNK_BYTES = old
        wg._geometry.cache_clear()
        wg._maps.cache_clear()


@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_lane_count(lanes, dtype, monkeypatch):
    """AVX2- and NEON-sized vectors (blocks of 4 x lanes tiles) on any host."""
    monkeypatch.setattr(config, "simd_lanes", lanes)
    rng = np.random.default_rng(lanes)
    x, w, b = _case(rng, 2, 3, 10, 15, 1, (13, 10), (3, 3), dtype)
    _check(x, w, b, dtype, padding=1)


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_output_channel_chunks_where_tile_blocks_are_fewer_than_threads(threads, monkeypatch):
    """Small planes (batch 1, 7x7) make fewer tile blocks than threads: the
    output channels then split into chunks of o-blocks, one task each (a
    ragged last chunk; groups; both dtypes; a non-finite input still sends
    the call to the direct path from whichever chunk's task finds it)."""
    monkeypatch.setattr(wg, "_threads", lambda: threads)
    wg._geometry.cache_clear()
    wg._maps.cache_clear()
    try:
        rng = np.random.default_rng(threads)
        chunked = []
        for dtype in (np.float32, np.float64):
            for nd, groups, cout in ((2, 1, 40), (2, 2, 26), (1, 1, 20), (3, 1, 13)):
                size = {1: (12,), 2: (7, 7), 3: (5, 6, 7)}[nd]
                x, w, b = _case(rng, nd, 1, 8 * groups, cout, groups, size, (3,) * nd, dtype)
                plan = shapes.make_plan("conv", x, w, b, padding=1, groups=groups)
                geo = wg.geometry(plan)
                base = groups * geo.nblk
                want = min(geo.nob, -(-threads // base)) if base < threads else 1
                assert geo.obc == -(-geo.nob // want)  # o-blocks a chunk, the chunks balanced
                assert geo.ocs == -(-geo.nob // geo.obc)
                assert geo.tasks == base * geo.ocs
                assert (geo.ocs - 1) * geo.obc < geo.nob <= geo.ocs * geo.obc
                chunked.append(geo.ocs)
                _check(x, w, b, dtype, padding=1, groups=groups)
        assert max(chunked) == 1 if threads == 1 else max(chunked) > 1
        x, w, b = _case(rng, 2, 1, 8, 40, 1, (7, 7), (3, 3), np.float32)
        x[0, 3, 6, 6] = np.nan
        got = nc.conv2d(x, w, b, padding=1, method="winograd")
        want = nc.conv2d(x, w, b, padding=1, method="direct")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        assert np.isfinite(got).sum() > got.size // 2
    finally:
        wg._geometry.cache_clear()
        wg._maps.cache_clear()


def test_nonfinite_values_give_pytorchs_answer():
    """The transforms would spread an Inf or NaN over its tile; the call is
    then the direct path's, whose NaN/Inf pattern is PyTorch's."""
    rng = np.random.default_rng(9)
    for dtype in (np.float32, np.float64):
        x, w, b = _case(rng, 2, 2, 6, 5, 1, (12, 14), (3, 3), dtype)
        x[0, 1, 5, 6] = np.inf
        x[1, 3, 0, 0] = np.nan
        got = nc.conv2d(x, w, b, padding=1, method="winograd")
        want = nc.conv2d(x, w, b, padding=1, method="direct")
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
        assert np.isfinite(got).sum() > got.size // 2
        if torch is not None:
            ref = torch_conv(x, w, b, (1, 1), [(1, 1), (1, 1)], (1, 1), 1, "zeros")
            np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        x2 = x.copy()
        x2[~np.isfinite(x2)] = 0
        w[2, 1, 0, 0] = np.inf
        got = nc.conv2d(x2, w, b, padding=1, method="winograd")
        np.testing.assert_array_equal(
            np.isnan(got), np.isnan(nc.conv2d(x2, w, b, padding=1, method="direct"))
        )


def test_an_edited_weight_is_not_served_stale():
    rng = np.random.default_rng(10)
    x, w, b = _case(rng, 2, 2, 8, 8, 1, (10, 10), (3, 3), np.float64)
    first = nc.conv2d(x, w, b, padding=1, method="winograd")
    w[3, 2, 1, 1] += 1.0
    second = _check(x, w, b, np.float64, padding=1)
    assert not np.allclose(first, second)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(11)
    x, w, b = _case(rng, 2, 2, 8, 8, 2, (9, 9), (3, 3), np.float32)
    copies = [a.copy() for a in (x, w, b)]
    nc.conv2d(x, w, b, padding="same", groups=2, padding_mode="reflect", method="winograd")
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize(
    "xs, ws, kw, why",
    [
        ((1, 2, 9, 9), (2, 2, 3, 3), dict(stride=2), "stride 1"),
        ((1, 2, 9, 9), (2, 2, 7, 7), dict(), "kernel extents up to 5"),
        ((1, 2, 9, 9), (2, 2, 1, 1), dict(), "1x1 kernel"),
    ],
)
def test_what_it_does_not_run_says_why(xs, ws, kw, why):
    plan = shapes.make_plan("conv", xs, ws, None, dtype=np.float32, **kw)
    assert why in wg.supports(plan)
    with pytest.raises(dispatch.UnsupportedMethodError, match=why):
        nc.conv2d(np.ones(xs, np.float32), np.ones(ws, np.float32), method="winograd", **kw)
    cplan = shapes.make_plan("conv", (1, 2, 9, 9), (2, 2, 3, 3), None, dtype=np.complex64)
    assert "float32 and float64" in wg.supports(cplan)
    tplan = shapes.make_plan("conv_transpose", (1, 2, 9, 9), (2, 2, 3, 3), None, dtype=np.float32)
    assert wg.supports(tplan) is not None


def test_arrays_past_int32_offsets_are_not_run():
    """The tiles' offsets are int32: a plan whose input or output has more
    elements is refused with the reason, and run_into (the transposed op's
    phases write into a larger target) declines without touching anything,
    so that its caller's other path answers."""
    big = shapes.make_plan("conv", (1, 1, 2**16, 2**15 + 8), (1, 1, 3, 3), None, dtype=np.float32, padding=1)
    assert "32-bit" in wg.supports(big)
    small = shapes.make_plan("conv", (1, 2, 9, 9), (2, 2, 3, 3), None, dtype=np.float32, padding=1)
    assert wg.supports(small) is None
    x5 = np.ones(small.input_shape5, np.float32)
    w5 = np.ones(small.weight_shape5, np.float32)
    huge = np.lib.stride_tricks.as_strided(
        np.zeros(1, np.float32), shape=(1, 2, 1, 2**16, 2**15 + 8), strides=(0,) * 5
    )
    assert not wg.run_into(x5, w5, None, small, huge)


@njit
def _tile_in(V, v0, vps, xf, cx, xo, x0, xps, tile, spec):
    tile_in(V, v0, vps, xf, cx, xo, x0, xps, tile, spec)


@njit
def _tile_out(of, oc, bias, oo, o0, ops, M, m0, mps, tile, spec):
    tile_out(of, oc, bias, oo, o0, ops, M, m0, mps, tile, spec)


@pytest.mark.parametrize("lanes", [4, 16])
@pytest.mark.parametrize("m, r", [((1, 4, 4), (1, 3, 3)), ((1, 1, 3), (1, 1, 4)), ((2, 3, 4), (3, 2, 5))])
def test_tile_transforms_against_numpy(m, r, lanes):
    """tile_in = gather through offsets (negative: zero) then B^T per dim;
    tile_out = A^T per dim, + bias, scatter through offsets (negative: not
    written); every other element of the outputs untouched."""
    tile, spec = Tile(m, r), mk.Spec(lanes, 32)
    alpha = tuple(a + b - 1 for a, b in zip(m, r))
    T, J = int(np.prod(alpha)), int(np.prod(m))
    bts = [wg.matrices(a, b)[2] for a, b in zip(m, r)]
    ats = [wg.matrices(a, b)[0] for a, b in zip(m, r)]
    rng = np.random.default_rng(sum(m) * 7 + lanes)
    xf = rng.standard_normal(500)
    xo = rng.integers(-1, 480, size=(T, lanes + 3), dtype=np.int32)
    vps, mps = lanes + 2, lanes + 3  # point strides: gaps between the points' lanes
    V = rng.standard_normal(T * vps + 5)
    want = V.copy()
    d = np.where(xo[:, 2 : 2 + lanes] >= 0, xf[np.maximum(xo[:, 2 : 2 + lanes], 0) + 7], 0.0)
    d = d.reshape(*alpha, lanes)
    v = np.einsum("ai,bj,ck,ijkl->abcl", *bts, d).reshape(T, lanes)
    for q in range(T):
        want[3 + q * vps : 3 + q * vps + lanes] = v[q]
    _tile_in(V, 3, vps, xf, 7, xo.ravel(), 2, lanes + 3, tile, spec)
    np.testing.assert_allclose(V, want, rtol=1e-12, atol=1e-12)
    M = rng.standard_normal(T * mps + 4)
    oo = rng.permutation(1000)[: J * (lanes + 2)].reshape(J, lanes + 2).astype(np.int32)
    oo[:, ::3] = -1
    of = rng.standard_normal(1010)
    want = of.copy()
    mv = M[2 : 2 + T * mps].reshape(T, mps)[:, :lanes].reshape(*alpha, lanes)
    y = np.einsum("ai,bj,ck,ijkl->abcl", *ats, mv)
    y = y.reshape(J, lanes) + 0.25
    sel = oo[:, 1 : 1 + lanes]
    want[sel[sel >= 0] + 5] = y[sel >= 0]
    _tile_out(of, 5, 0.25, oo.ravel(), 1, lanes + 2, M, 2, mps, tile, spec)
    np.testing.assert_allclose(of, want, rtol=1e-12, atol=1e-12)


@njit
def _tile_in_rows(V, v0, vps, xf, cx, xs, x0, xps, tile, spec):
    tile_in_rows(V, v0, vps, xf, cx, xs, x0, xps, tile, spec)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("m, r", [((1, 4, 4), (1, 3, 3)), ((1, 1, 4), (1, 1, 5)), ((2, 2, 2), (3, 3, 3))])
def test_tile_in_rows_against_numpy(m, r, lanes, dtype):
    """tile_in_rows = per row and lane a start and a mask of the positions
    read (the others zero), then B^T per dim: the same values as tile_in
    through the equivalent offsets; rows at the array's first and last
    elements (masked lanes outside it are not read), empty rows."""
    tile, spec = Tile(m, r), mk.Spec(lanes, 32)
    alpha = tuple(a + b - 1 for a, b in zip(m, r))
    T, nrows, aw = int(np.prod(alpha)), alpha[0] * alpha[1], alpha[2]
    rng = np.random.default_rng(lanes * 3 + aw)
    xf = rng.standard_normal(400).astype(dtype)
    cx = 0  # offsets from the array's start: a row can begin just before it
    starts = rng.integers(0, 400 - aw, size=(nrows, lanes))
    bits = rng.integers(0, 1 << aw, size=(nrows, lanes))
    bits[0, 0] = (1 << aw) - 1
    starts[0, 0] = 400 - aw  # the row ending at the array's last element
    starts[1 % nrows, 1] = -1  # first position before the array, masked
    bits[1 % nrows, 1] = ((1 << aw) - 1) & ~1
    bits[-1, -1] = 0  # an empty row
    xo = np.where(
        (bits[:, None, :] >> np.arange(aw)[None, :, None]) & 1,
        starts[:, None, :] + np.arange(aw)[None, :, None],
        -1,
    ).reshape(T, lanes)
    xs = np.concatenate([starts, bits]).astype(np.int32)
    want = np.zeros(T * lanes, dtype)
    got = np.zeros(T * lanes, dtype)
    _tile_in(want, 0, lanes, xf, cx, xo.astype(np.int32).ravel(), 0, lanes, tile, spec)
    _tile_in_rows(got, 0, lanes, xf, cx, xs.ravel(), 0, lanes, tile, spec)
    np.testing.assert_array_equal(got, want)
    assert np.abs(want).max() > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("m, r", [((1, 4, 4), (1, 3, 3)), ((1, 1, 3), (1, 1, 4)), ((2, 2, 2), (3, 3, 3))])
@pytest.mark.parametrize("edge", ["inside", "past the end", "a dead lane"])
def test_tile_out_rows_stored_whole(m, r, lanes, dtype, edge):
    """tile_out with each tile's outputs along W next to each other in
    memory (the usual case: its short-vector stores): every row written
    whole; rows running past the plane (their last outputs -1: masked
    stores); a lane with no outputs (past the last tile: the scatters)."""
    tile, spec = Tile(m, r), mk.Spec(lanes, 32)
    alpha = tuple(a + b - 1 for a, b in zip(m, r))
    T, J, mw = int(np.prod(alpha)), int(np.prod(m)), m[2]
    ats = [wg.matrices(a, b)[0] for a, b in zip(m, r)]
    rng = np.random.default_rng(lanes + mw)
    M = rng.standard_normal(T * lanes).astype(dtype)
    # lane l's row q starts at 1000 * q + 10 * l (rows and lanes apart)
    starts = 1000 * np.arange(J // mw)[:, None] + 10 * np.arange(lanes)[None, :]
    oo = (starts[:, None, :] + np.arange(mw)[None, :, None]).reshape(J, lanes)
    if edge == "past the end":
        oo.reshape(J // mw, mw, lanes)[:, mw - 1, 1::2] = -1
    elif edge == "a dead lane":
        oo[:, lanes - 1] = -1
    oo = oo.astype(np.int32)
    of = rng.standard_normal(1000 * (J // mw) + 10 * lanes + mw).astype(dtype)
    want = of.copy()
    y = np.einsum("ai,bj,ck,ijkl->abcl", *ats, M.astype(np.float64).reshape(*alpha, lanes)).reshape(J, lanes)
    want[oo[oo >= 0] + 3] = y[oo >= 0] + 0.5
    _tile_out(of, 3, 0.5, oo.ravel(), 0, lanes, M, 0, lanes, tile, spec)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(of, want, rtol=tol, atol=tol * 10)


def test_transposed_phases_on_winograd_need_two_taps_along_each_dim():
    """auto's gather sends a phase to Winograd only when its sub-kernel has
    2+ taps along every dim the input spans: a 3x3 stride-2 op's 2x1 and 1x2
    phases stay in the direct region (measured faster whole-op), a 4x4
    stride-2 op's 2x2 phases of 128 channels go to Winograd."""
    from numbaconv.cpu import gather
    from numbaconv.shapes import make_conv_transpose_plan

    def kinds(xs, ws, **kw):
        plan = make_conv_transpose_plan(xs, ws, None, dtype=np.float32, ndim=2, **kw)
        phases = gather.phase_plans(plan, xs[0], (0, 0, 0), (1,) + tuple(plan.out_size[1:]))
        return {p[1].kernel[1:]: gather._winograd_pays(p[1]) for p in phases}

    k3 = kinds((8, 128, 28, 28), (128, 64, 3, 3), stride=2, padding=1, output_padding=1)
    assert not k3[(2, 1)] and not k3[(1, 2)] and not k3[(1, 1)]
    assert kinds((8, 128, 32, 32), (128, 64, 4, 4), stride=2, padding=1) == {(2, 2): True}


@pytest.fixture
def winograd_phases(monkeypatch):
    """Every transposed phase Winograd can run goes to it (the cost model
    sends only large ones), counting the phases it ran."""
    from numbaconv.cpu import gather

    ran = []
    real = wg.run_into

    def counted(*args, **kw):
        ran.append(args[3])
        return real(*args, **kw)

    monkeypatch.setattr(gather, "_winograd_pays", lambda sub: wg.supports(sub) is None)
    monkeypatch.setattr(wg, "run_into", counted)
    gather._split.cache_clear()
    yield ran
    gather._split.cache_clear()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_transposed_phases_on_winograd(dtype, winograd_phases):
    """The transposed op's gather runs phases whose sub-kernel has taps to
    save on Winograd, written into the output's phase: the transposed grid
    (strides, dilations, paddings, output_padding, groups, 1-D/2-D/3-D)
    against the reference."""
    from .cases import TRANSPOSE_GRID, run_transpose_case

    rng = np.random.default_rng(12)
    for c in TRANSPOSE_GRID[:: 1 if dtype == np.float64 else 4]:
        got, ref, tol, _ = run_transpose_case(c, dtype, "gather", rng)
        assert_close(got, ref, tol, str(c))
    assert len(winograd_phases) > 20


def test_transposed_winograd_phases_with_modes_and_nonfinite_inputs(winograd_phases):
    """Non-zero padding modes (the extended output and its fold) and a
    non-finite input (Winograd declines; the implicit-GEMM path writes those
    phases: PyTorch's NaN pattern)."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 6, 9, 8))
    w = rng.standard_normal((6, 4, 4, 4))
    for mode in ("zeros", "reflect", "circular"):
        want = nc.conv_transpose2d(x, w, stride=2, padding=1, padding_mode=mode, method="scatter")
        got = nc.conv_transpose2d(x, w, stride=2, padding=1, padding_mode=mode, method="gather")
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    assert winograd_phases
    x[1, 2, 4, 4] = np.inf
    got = nc.conv_transpose2d(x, w, stride=2, padding=1, method="gather")
    want = nc.conv_transpose2d(x, w, stride=2, padding=1, method="scatter")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
    ok = np.isfinite(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-10, atol=1e-10)
