"""Every CPU method row of the dispatcher's table, over the shared grids
(tests/cases.py), against the NumPy reference and PyTorch (float64): conv and
conv_transpose, 1-D/2-D/3-D, stride, dilation, padding forms and modes,
groups, every dtype, unbatched, without bias. The rows come from
``dispatch.rows``: a new method is tested here without editing this file."""

from __future__ import annotations

import re

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config

from .cases import (
    CONV_GRID,
    RANK_ONE_ROWS,
    TRANSPOSE_GRID,
    conv_case_plan,
    conv_valid,
    cpu_rows,
    row_cases,
    row_id,
    run_conv_row,
    run_transpose_case,
    transpose_id,
)
from .conftest import DTYPES, assert_close, torch, torch_conv, torch_conv_transpose
from .reference import conv_reference, conv_transpose_reference

CONV_ROWS = cpu_rows("conv")
TRANSPOSE_ROWS = cpu_rows("conv_transpose")
VALID_CONV = [c for c in CONV_GRID if conv_valid(c)]


@pytest.fixture
def conv_row(request, monkeypatch):
    row, _, settings = request.param
    for name, value in settings.items():
        monkeypatch.setattr(config, name, value)
    return row


transpose_row = conv_row
_dtype_id = lambda d: np.dtype(d).name  # noqa: E731


@pytest.mark.parametrize(("case", "conv_row"), row_cases(CONV_ROWS, VALID_CONV), indirect=["conv_row"])
def test_conv_grid_float64_vs_reference_and_torch(case, conv_row):
    got, ref, tol, (x, w, b, stride, pads, dil) = run_conv_row(
        conv_row, case, np.float64, np.random.default_rng(0)
    )
    assert got.dtype == np.float64
    assert_close(got, ref, tol, "vs reference")
    if torch is not None:
        tref = torch_conv(x, w, b, stride, pads, dil, case["groups"], case["mode"])
        assert_close(got, tref, tol, "vs torch")


@pytest.mark.parametrize(
    ("case", "dtype", "conv_row"), row_cases(CONV_ROWS, VALID_CONV[::6], dtypes=DTYPES), indirect=["conv_row"]
)
def test_conv_grid_dtypes(case, dtype, conv_row):
    got, ref, tol, _ = run_conv_row(conv_row, case, dtype, np.random.default_rng(1))
    assert got.dtype == np.dtype(dtype)
    assert_close(got, ref, tol)


@pytest.mark.parametrize(
    ("case", "conv_row"), row_cases(CONV_ROWS, VALID_CONV, supported=False), indirect=["conv_row"]
)
def test_conv_grid_unsupported_cases_raise(case, conv_row):
    """A forced method that cannot run a case says why, before any work."""
    from numbaconv.dispatch import UnsupportedMethodError

    why = conv_row.supports(conv_case_plan(case, row=conv_row))
    with pytest.raises(UnsupportedMethodError, match=re.escape(why)):
        run_conv_row(conv_row, case, np.float64, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("nd", "conv_row"),
    [
        pytest.param(nd, item, id=f"{nd}-{row_id(item)}")
        for item in CONV_ROWS
        for nd in (1, 2, 3)
        if not (nd == 1 and item[0].name in RANK_ONE_ROWS)  # a 1-D kernel has nothing to separate
    ],
    indirect=["conv_row"],
)
def test_conv_unbatched_and_no_bias(nd, conv_row):
    c = next(
        c for c in VALID_CONV if c["nd"] == nd and conv_row.supports(conv_case_plan(c, row=conv_row)) is None
    )
    got, ref, tol, _ = run_conv_row(conv_row, c, np.float64, np.random.default_rng(2), batched=False)
    assert got.shape == ref.shape and got.ndim == nd + 1
    assert_close(got, ref, tol)
    got, ref, tol, _ = run_conv_row(conv_row, c, np.float64, np.random.default_rng(2), bias=False)
    assert_close(got, ref, tol)


@pytest.mark.parametrize("transpose_row", TRANSPOSE_ROWS, ids=row_id, indirect=True)
@pytest.mark.parametrize("case", TRANSPOSE_GRID, ids=transpose_id)
def test_transpose_grid_vs_reference_and_torch(case, transpose_row):
    got, ref, tol, (x, w, b, p) = run_transpose_case(
        case, np.float64, transpose_row.name, np.random.default_rng(0)
    )
    assert got.dtype == np.float64
    assert_close(got, ref, tol, "vs reference")
    if torch is not None:
        tref = torch_conv_transpose(
            x, w, b, p["stride"], p["pads"], p["dilation"], p["groups"], p["output_padding"]
        )
        assert_close(got, tref, tol, "vs torch")


@pytest.mark.parametrize("transpose_row", TRANSPOSE_ROWS, ids=row_id, indirect=True)
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("case", TRANSPOSE_GRID[::7], ids=transpose_id)
def test_transpose_grid_dtypes(case, dtype, transpose_row):
    got, ref, tol, _ = run_transpose_case(case, dtype, transpose_row.name, np.random.default_rng(1))
    assert got.dtype == np.dtype(dtype)
    assert_close(got, ref, tol)


@pytest.mark.parametrize("transpose_row", TRANSPOSE_ROWS, ids=row_id, indirect=True)
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_transpose_unbatched_and_no_bias(nd, transpose_row):
    c = next(c for c in TRANSPOSE_GRID if c["nd"] == nd and c["stride"] > 1)
    rng = np.random.default_rng(2)
    got, ref, tol, _ = run_transpose_case(c, np.float64, transpose_row.name, rng, batched=False)
    assert got.shape == ref.shape and got.ndim == nd + 1
    assert_close(got, ref, tol)
    got, ref, tol, _ = run_transpose_case(
        c, np.float64, transpose_row.name, np.random.default_rng(2), bias=False
    )
    assert_close(got, ref, tol)


@pytest.mark.parametrize("conv_row", CONV_ROWS, ids=row_id, indirect=True)
@pytest.mark.parametrize("padding", [1, 2, "same", ((2, 0), (1, 3))], ids=str)
def test_conv_nonfinite_weights_meet_zero_padding_as_in_pytorch(padding, conv_row):
    """A NaN or Inf weight multiplies the zero padding too (0 * nan and 0 * inf
    are NaN): the NaN pattern of every method is PyTorch's (an FFT spreads a
    NaN over its tile, so its pattern may be larger, never smaller)."""
    from .cases import explicit_pads

    rng = np.random.default_rng(3)
    for cin, groups in ((3, 1), (16, 1), (4, 2)):
        x = rng.standard_normal((2, cin, 7, 8))
        w = rng.standard_normal((4, cin // groups, 3, 3))
        w[1, 0, 0, 0] = np.nan
        w[3, -1, 2, 1] = np.inf
        if conv_row.name in RANK_ONE_ROWS:  # a non-finite kernel is never rank one: refused
            with pytest.raises(nc.UnsupportedMethodError, match="separable"):
                nc.conv2d(x, w, padding=padding, groups=groups, method=conv_row.name)
            continue
        got = np.isnan(nc.conv2d(x, w, padding=padding, groups=groups, method=conv_row.name))
        pads = explicit_pads(padding, 2, (7, 8), (3, 3), (1, 1), (1, 1))
        ref = conv_reference(x, w, None, [1, 1], pads, [1, 1], groups, "zeros")
        want = np.isnan(ref)
        assert want.any() and not want.all()
        if torch is not None:
            np.testing.assert_array_equal(
                np.isnan(torch_conv(x, w, None, (1, 1), pads, (1, 1), groups, "zeros")), want
            )
        if conv_row.error == "norm":
            assert got[want].all()
        else:
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("transpose_row", TRANSPOSE_ROWS, ids=row_id, indirect=True)
def test_transpose_nonfinite_weights_as_in_pytorch(transpose_row):
    """The transposed op multiplies a weight only by inputs that reach an output:
    a NaN or Inf weight gives PyTorch's NaN pattern (an FFT's may be larger)."""
    from .cases import pairs

    rng = np.random.default_rng(4)
    for cin, kw in ((3, dict(stride=2, padding=1)), (16, dict(stride=3, padding=2, dilation=2))):
        x = rng.standard_normal((2, cin, 6, 7))
        w = rng.standard_normal((cin, 4, 3, 3))
        w[0, 1, 0, 0] = np.nan
        w[-1, 2, 2, 1] = np.inf
        got = np.isnan(nc.conv_transpose2d(x, w, method=transpose_row.name, **kw))
        d = kw.get("dilation", 1)
        ref = conv_transpose_reference(x, w, None, [kw["stride"]] * 2, pairs(kw["padding"], 2), [d, d])
        want = np.isnan(ref)
        assert want.any() and not want.all()
        if torch is not None:
            t = np.isnan(
                torch_conv_transpose(
                    x, w, None, [kw["stride"]] * 2, pairs(kw["padding"], 2), [d, d], 1, [0, 0]
                )
            )
            np.testing.assert_array_equal(t, want)
        if transpose_row.error == "norm":
            assert got[want].all()
        else:
            np.testing.assert_array_equal(got, want)
