"""conv_transpose1d/2d/3d: every method's determinism and agreement, the adjoint
identity for every padding mode, output_size, the fold's chunks, NaN (the grid of
every method against the reference and PyTorch is in test_methods.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import numbaconv as nc
from numbaconv import common, config, dispatch, shapes

from .cases import run_saying_if_over_budget, transpose_tolerance
from .conftest import assert_close
from .reference import conv_transpose_reference

# the transposed op's CPU methods, from the dispatcher's table
METHODS = [r.name for r in dispatch.rows("conv_transpose")]
EXACT = [r.name for r in dispatch.rows("conv_transpose") if r.error == "pointwise"]


@pytest.mark.parametrize("method", METHODS)
def test_scatter_and_gather_agree_and_are_deterministic(method):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 16, 9, 10)).astype(np.float32)
    w = rng.standard_normal((16, 6, 4, 3)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    kw = dict(stride=(2, 3), padding=(1, 2), output_padding=(1, 0), groups=2, dilation=(1, 2))
    a = nc.conv_transpose2d(x, w, b, method=method, **kw)
    for _ in range(3):
        np.testing.assert_array_equal(nc.conv_transpose2d(x, w, b, method=method, **kw), a)
    other = nc.conv_transpose2d(x, w, b, method="gather" if method == "scatter" else "scatter", **kw)
    ref = conv_transpose_reference(
        x, w, b, stride=[2, 3], pads=[(1, 1), (2, 2)], dilation=[1, 2], groups=2, output_padding=[1, 0]
    )
    tol = transpose_tolerance(
        np.float32,
        x,
        w,
        b,
        stride=[2, 3],
        pads=[(1, 1), (2, 2)],
        dilation=[1, 2],
        groups=2,
        output_padding=[1, 0],
    )
    assert_close(a, ref, tol)
    assert_close(other, ref, tol)


def _adjoint_gap(y, w, mode, method, stride, padding, dilation, groups, output_padding, rng):
    """|<conv(x, w), y> - <x, conv_transpose(y, w)>| relative to the terms' magnitudes."""
    xt = nc.conv_transpose(
        y, w, None, stride, padding, output_padding, groups, dilation, padding_mode=mode, method=method
    )
    x = rng.standard_normal(xt.shape)
    cy = nc.conv(x, w, None, stride, padding, dilation, groups, padding_mode=mode)
    assert cy.shape == y.shape
    lhs = np.vdot(cy, y)
    rhs = np.vdot(x, xt)
    scale = np.vdot(np.abs(cy), np.abs(y)) + np.vdot(np.abs(x), np.abs(xt))
    return abs(lhs - rhs) / scale


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", shapes.PADDING_MODES)
@pytest.mark.parametrize(
    "nd,stride,dilation,padding,groups,op",
    [
        (1, 2, 1, 1, 1, 1),
        (1, 3, 2, ((2, 1),), 2, 0),
        (2, (2, 1), (1, 2), ((1, 2), (2, 0)), 1, (1, 0)),
        (2, 2, 2, 2, 4, 1),
        (3, (1, 2, 2), 1, (1, 0, (1, 2)), 2, (0, 1, 0)),
    ],
)
def test_adjoint_identity_every_mode(method, mode, nd, stride, dilation, padding, groups, op):
    rng = np.random.default_rng(5)
    y = rng.standard_normal((2, 4) + (5, 6, 7)[:nd])
    w = rng.standard_normal((4, 2) + (3, 2, 3)[:nd])  # C_out = 2 * groups
    gap = _adjoint_gap(y, w, mode, method, stride, padding, dilation, groups, op, rng)
    assert gap < 64 * np.finfo(np.float64).eps


@given(
    nd=st.integers(1, 3),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    lo=st.integers(0, 2),
    hi=st.integers(0, 2),
    groups=st.sampled_from([1, 2]),
    mode=st.sampled_from(shapes.PADDING_MODES),
    method=st.sampled_from(METHODS),
    seed=st.integers(0, 2**16),
)
def test_adjoint_property(nd, stride, dilation, lo, hi, groups, mode, method, seed):
    rng = np.random.default_rng(seed)
    y = rng.standard_normal((1, 2 * groups) + (4, 5, 3)[:nd])
    w = rng.standard_normal((2 * groups, 2) + (3, 2, 2)[:nd])
    padding = ((lo, hi),) * nd
    try:  # only the combinations the padding mode allows (the rest is in test_errors)
        shapes.make_conv_transpose_plan(
            y.shape, w.shape, None, stride, padding, 0, groups, dilation, padding_mode=mode
        )
    except ValueError:
        assume(False)
    gap = _adjoint_gap(y, w, mode, method, stride, padding, dilation, groups, 0, rng)
    assert gap < 64 * np.finfo(np.float64).eps


def test_round_trip_sizes_from_the_references():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((1, 1, 3, 3))
    for n in (7, 8):
        assert nc.conv2d(rng.standard_normal((1, 1, n, n)), w, stride=2).shape == (1, 1, 3, 3)
    y = rng.standard_normal((1, 1, 3, 3))
    assert nc.conv_transpose2d(y, w, stride=2).shape == (1, 1, 7, 7)
    assert nc.conv_transpose2d(y, w, stride=2, output_padding=1).shape == (1, 1, 8, 8)
    assert nc.conv_transpose2d(y, w, stride=2, output_size=(8, 8)).shape == (1, 1, 8, 8)
    assert nc.conv_transpose2d(y, w, stride=2, output_size=(1, 1, 7, 7)).shape == (1, 1, 7, 7)
    np.testing.assert_array_equal(
        nc.conv_transpose2d(y, w, stride=2, output_size=(8, 8)),
        nc.conv_transpose2d(y, w, stride=2, output_padding=1),
    )
    assert shapes.output_padding_for((1, 1, 3, 3), (1, 1, 3, 3), (8, 8), stride=2) == (1, 1)
    assert shapes.output_padding_for((3, 3), (1, 1, 3, 3), (7, 8), stride=2) == (0, 1)
    assert nc.conv_transpose2d(rng.standard_normal((1, 1, 2, 2)), w).shape == (1, 1, 4, 4)
    assert nc.conv_transpose2d(y, w, stride=2, padding=1).shape == (1, 1, 5, 5)
    assert shapes.conv_transpose_output_shape((1, 1, 3, 3), (1, 1, 3, 3), 2, 1) == (1, 1, 5, 5)
    assert shapes.conv_transpose_output_shape((2, 3), (2, 4, 3), 2, output_size=(8,)) == (4, 8)


def test_out_argument_and_inputs_untouched():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 5))
    w = rng.standard_normal((4, 3, 3))
    x0, w0 = x.copy(), w.copy()
    ref = nc.conv_transpose1d(x, w, stride=2)
    out = np.full(ref.shape, np.nan)
    assert nc.conv_transpose1d(x, w, stride=2, out=out) is out
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)
    big = np.full((2, 3, 2 * ref.shape[2]), np.nan)
    view = big[..., ::2]
    nc.conv_transpose1d(x, w, stride=2, out=view)
    np.testing.assert_array_equal(view, ref)
    with pytest.raises(ValueError, match="out has shape"):
        nc.conv_transpose1d(x, w, stride=2, out=np.empty((2, 3, 5)))


def test_memory_layouts():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 8, 5, 6))
    w = rng.standard_normal((8, 3, 3, 3))
    ref = nc.conv_transpose2d(x, w, stride=2, padding=1)
    for xv in (np.asfortranarray(x), x[..., ::-1].copy()[..., ::-1], x.astype(">f8")):
        np.testing.assert_allclose(
            nc.conv_transpose2d(xv, w, stride=2, padding=1), ref, rtol=1e-13, atol=1e-13
        )


@pytest.mark.parametrize("method", [m for m in METHODS if m != "fft"])
def test_fold_chunks_over_the_batch(method, monkeypatch):
    """A budget below the batch's extended buffer gives the same result chunk by chunk.
    (fft shares this fold code; its smallest tile needs more than this tiny budget.)"""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5, 8, 4, 5))
    w = rng.standard_normal((8, 3, 3, 3))
    kw = dict(stride=2, padding=1, padding_mode="reflect", method=method)
    whole = nc.conv_transpose2d(x, w, **kw)
    plan = shapes.make_conv_transpose_plan(x.shape, w.shape, None, 2, 1, padding_mode="reflect")
    per_sample = common.fold_workspace(plan) // 5
    monkeypatch.setattr(config, "workspace_bytes", 2 * per_sample)
    assert common.fold_workspace(plan) == 2 * per_sample
    # (gather's and gemm's own buffers come on top of the fold's: over the budget, and they say so)
    y = run_saying_if_over_budget("conv_transpose", method, plan, lambda: nc.conv_transpose2d(x, w, **kw))
    np.testing.assert_allclose(y, whole, rtol=1e-13, atol=1e-13)


def test_gather_needs_its_workspace_and_auto_falls_back(monkeypatch):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, 16, 6, 6))
    w = rng.standard_normal((16, 2, 3, 3))
    ref = conv_transpose_reference(x, w, stride=[2, 2])
    monkeypatch.setattr(config, "workspace_bytes", 100)
    with pytest.raises(nc.UnsupportedMethodError, match="workspace_bytes"):
        nc.conv_transpose2d(x, w, stride=2, method="gather")
    assert_close(nc.conv_transpose2d(x, w, stride=2), ref, 1e-12)


def test_nan_propagates():
    x = np.zeros((1, 2, 4, 4))
    x[0, 1, 2, 2] = np.nan
    w = np.ones((2, 3, 3, 3))
    for m in EXACT:
        y = nc.conv_transpose2d(x, w, stride=2, method=m)
        assert np.isnan(y[0, :, 4:7, 4:7]).all() and np.isfinite(y[0, :, :3, :3]).all()
    # an FFT spreads a NaN over its whole tile (documented): never a silent finite value
    y = nc.conv_transpose2d(x, w, stride=2, method="fft")
    assert np.isnan(y[0, :, 4:7, 4:7]).all()
