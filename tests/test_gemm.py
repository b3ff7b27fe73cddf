"""method="gemm": im2col + GEMM (conv) and GEMM + col2im (transposed), chunked
within config.workspace_bytes (its grid against the reference is in test_methods.py)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config, shapes
from numbaconv.cpu import gemm

from .cases import run_saying_if_over_budget
from .conftest import assert_close, random_array, tolerance
from .reference import conv_reference, conv_transpose_reference


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_pointwise_conv_is_a_plain_gemm(groups):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 8, 5, 7))
    w = rng.standard_normal((12, 8 // groups, 1, 1))
    b = rng.standard_normal(12)
    plan = shapes.make_conv_plan(x.shape, w.shape, b.shape, groups=groups)
    assert gemm.workspace_bytes(plan) == 0  # no lowering at all
    ref = conv_reference(x, w, b, groups=groups)
    assert_close(nc.conv2d(x, w, b, groups=groups, method="gemm"), ref, 1e-12)


def _chunk_cases():
    rng = np.random.default_rng(4)
    conv = (rng.standard_normal((3, 6, 7, 9)), rng.standard_normal((4, 3, 3, 2)))
    tconv = (rng.standard_normal((3, 6, 4, 5)), rng.standard_normal((6, 2, 3, 2)))
    kw = dict(stride=(2, 1), padding=((1, 2), 1), dilation=(1, 2), groups=2)
    cplan = shapes.make_conv_plan(conv[0].shape, conv[1].shape, None, padding_mode="reflect", **kw)
    tplan = shapes.make_conv_transpose_plan(tconv[0].shape, tconv[1].shape, None, **kw)
    cplan_t = shapes.make_conv_transpose_plan(
        tconv[0].shape, tconv[1].shape, None, padding_mode="circular", **kw
    )
    return [
        ("conv", cplan, lambda: nc.conv2d(*conv, padding_mode="reflect", method="gemm", **kw)),
        ("conv_transpose", tplan, lambda: nc.conv_transpose2d(*tconv, method="gemm", **kw)),
        (
            "conv_transpose-circular",
            cplan_t,
            lambda: nc.conv_transpose2d(*tconv, padding_mode="circular", method="gemm", **kw),
        ),
    ]


@pytest.mark.parametrize("name, plan, call", _chunk_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_many_small_chunks_equal_one_chunk(name, plan, call, monkeypatch):
    one = call()
    assert gemm.chunk_rows(plan) == gemm._total_rows(plan)  # the default budget: one chunk
    for rows in (1, 2, 3, 5):
        monkeypatch.setattr(config, "workspace_bytes", rows * gemm._row_bytes(plan))
        assert gemm.chunk_rows(plan) == rows < gemm._total_rows(plan)
        y = run_saying_if_over_budget(plan.op, "gemm", plan, call)  # the circular mode's fold on top
        np.testing.assert_allclose(y, one, rtol=1e-12, atol=1e-12, err_msg=f"{name}, {rows} rows per chunk")


@pytest.mark.parametrize("dtype", [np.float64, np.complex128, np.float32])
@pytest.mark.parametrize("with_bias", [True, False])
def test_samples_written_in_place_in_chunks(dtype, with_bias, monkeypatch):
    """Output planes of >= 256 positions: each sample's GEMM writes its output
    in place (bias as a row of ones), whole samples per chunk; every chunking
    and the row-chunked fallback (a sample over the budget) agree with the
    reference."""
    rng = np.random.default_rng(11)
    x = random_array(rng, (3, 4, 17, 19), dtype)
    w = random_array(rng, (6, 2, 3, 3), dtype)
    b = random_array(rng, (6,), dtype) if with_bias else None
    kw = dict(padding=((1, 2), 1), dilation=(1, 2), groups=2)
    plan = shapes.make_conv_plan(
        x.shape, w.shape, None if b is None else b.shape, padding_mode="reflect", dtype=dtype, **kw
    )
    assert int(np.prod(plan.out_size)) >= gemm._IN_PLACE_POSITIONS
    assert gemm.sample_chunk(plan) == 3  # the default budget: one chunk
    ref = conv_reference(x, w, b, pads=[(1, 2), (1, 1)], dilation=[1, 2], groups=2, mode="reflect")
    tol = tolerance(dtype, 18, x, w, b, pads=[(1, 2), (1, 1)], dilation=[1, 2], groups=2, mode="reflect")
    per_sample = (2 * 9 + 1) * int(np.prod(plan.out_size)) * np.dtype(dtype).itemsize
    for samples in (2, 1, 0):
        monkeypatch.setattr(config, "workspace_bytes", max(samples * per_sample, gemm._row_bytes(plan)))
        assert gemm.sample_chunk(plan) == samples
        assert gemm.workspace_bytes(plan) <= config.workspace_bytes
        x_before = x.copy()
        y = nc.conv2d(x, w, b, padding_mode="reflect", method="gemm", **kw)
        np.testing.assert_array_equal(x, x_before)
        assert y.dtype == dtype
        assert_close(y, ref, tol, f"{samples} samples per chunk")


def test_budget_below_one_row_is_refused_and_auto_falls_back(monkeypatch):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 6, 6))
    w = rng.standard_normal((4, 8, 3, 3))
    ref = conv_reference(x, w, pads=[(1, 1)] * 2)
    plan = shapes.make_conv_plan(x.shape, w.shape, None, padding=1)
    monkeypatch.setattr(config, "workspace_bytes", gemm._row_bytes(plan) - 1)
    assert gemm.chunk_rows(plan) == 0 and "workspace_bytes" in gemm.supports(plan)
    with pytest.raises(nc.UnsupportedMethodError, match="patch matrix of one output row"):
        nc.conv2d(x, w, padding=1, method="gemm")
    assert_close(nc.conv2d(x, w, padding=1), ref, 1e-12)  # auto takes direct
    monkeypatch.setattr(config, "workspace_bytes", gemm._row_bytes(plan))
    assert gemm.chunk_rows(plan) == 1
    assert_close(nc.conv2d(x, w, padding=1, method="gemm"), ref, 1e-12)


def test_patch_matrix_of_gibibytes_runs_within_the_budget():
    """The full patch matrix here would be 3.1 GiB; the call stays within
    config.workspace_bytes of extra memory (tracemalloc sees NumPy's buffers)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 32, 1024, 1024), dtype=np.float32)
    w = rng.standard_normal((16, 32, 5, 5), dtype=np.float32)
    plan = shapes.make_conv_plan(x.shape, w.shape, None, padding=2, dtype=np.float32)
    full = plan.c_in * 25 * 1024 * 1024 * 4
    assert full > 3 * 2**30
    nc.conv2d(x[:, :, :16, :16], w, padding=2, method="gemm")  # load the kernels first
    tracemalloc.start()
    try:
        y = nc.conv2d(x, w, padding=2, method="gemm")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    extra = peak - y.nbytes
    assert extra <= config.workspace_bytes + 2**20, (extra, config.workspace_bytes)
    assert gemm.workspace_bytes(plan) <= config.workspace_bytes
    # spot-check a few output rows against the reference
    rows = slice(500, 504)
    ref = conv_reference(x[:, :, 498:506].astype(np.float64), w, pads=[(0, 0), (2, 2)])
    tol = tolerance(np.float32, 800, x[:, :, 498:506], w, None, pads=[(0, 0), (2, 2)])
    assert_close(y[:, :, rows], ref, tol)


def test_transposed_gemm_within_the_budget():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 16, 64, 64), dtype=np.float32)
    w = rng.standard_normal((16, 8, 4, 4), dtype=np.float32)
    kw = dict(stride=2, padding=1)
    nc.conv_transpose2d(x[:, :, :4, :4], w, method="gemm", **kw)
    with config.override(workspace_bytes=2**20):
        plan = shapes.make_conv_transpose_plan(x.shape, w.shape, None, dtype=np.float32, **kw)
        assert 0 < gemm.workspace_bytes(plan) <= 2**20
        tracemalloc.start()
        try:
            y = nc.conv_transpose2d(x, w, method="gemm", **kw)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak - y.nbytes <= 2**20 + 2**18
    ref = conv_transpose_reference(x[:1, :, :6, :6], w, stride=[2, 2], pads=[(1, 1)] * 2)
    # the top-left corner only depends on the first input rows/columns
    tol = 64 * np.finfo(np.float32).eps * float(np.abs(ref).max())
    assert_close(y[:1, :, :9, :9], ref[:, :, :9, :9], tol)


def test_complex_and_float32_gemm():
    rng = np.random.default_rng(8)
    for dtype in (np.complex64, np.float32):
        x = random_array(rng, (2, 4, 6, 5), dtype)
        w = random_array(rng, (4, 3, 3, 3), dtype)
        ref = conv_transpose_reference(x, w, stride=[2, 2])
        tol = 16 * np.finfo(dtype).eps * np.sqrt(36) * float(np.abs(ref).max() + 1)
        assert_close(nc.conv_transpose2d(x, w, stride=2, method="gemm"), ref, tol)


def test_split_run_small_work_runs_in_the_caller(monkeypatch):
    """runtime.split_run hands pieces to its threads only where the work
    pays for the hand-over (runtime.SPLIT_MIN_WORK elements): below it one
    piece in the calling thread, above it one piece a thread; without a
    ``work`` hint it splits as before."""
    import threading

    from numbaconv import runtime

    monkeypatch.setattr(runtime, "num_threads", lambda: 2)
    for work, pieces in ((None, 2), (runtime.SPLIT_MIN_WORK - 1, 1), (runtime.SPLIT_MIN_WORK, 2)):
        done = []

        def piece(tag, a, b, done=done):
            done.append((tag, a, b, threading.get_ident()))

        runtime.split_run(piece, 10, "k", work=work)
        assert sorted(d[:3] for d in done) == ([("k", 0, 10)] if pieces == 1 else [("k", 0, 5), ("k", 5, 10)])
        if pieces == 1:
            assert done[0][3] == threading.get_ident()


@pytest.mark.parametrize(
    "xs, ws, params",
    [
        ((1, 5, 7, 7), (6, 5, 3, 3), dict(padding=1)),  # small: every piece in the caller
        ((2, 16, 40, 40), (8, 16, 3, 3), dict(padding=(2, 1), stride=(1, 2))),  # split
    ],
)
def test_gemm_small_and_split_work_agree(xs, ws, params):
    rng = np.random.default_rng(11)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    got = nc.conv2d(x, w, method="gemm", **params)
    ref = nc.conv2d(x, w, method="direct", **params)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_cost_features_count_lowered_rows():
    """The lowering copies one output row (conv) or input row (col2im) at a
    time, with a set-up each: its rows are a feature of their own."""
    f32 = np.dtype(np.float32)  # the counts are in float32 units
    plan = shapes.make_conv_plan((2, 4, 7, 9), (6, 4, 3, 3), None, 1, 1, 1, 1, dtype=f32)
    f = gemm.cost_features(plan)
    assert f["lowered"] == 2 * 7 * 9 * 4 * 9
    assert f["lowered_rows"] == 2 * 7 * 4 * 9  # (sample, output row) x (channel, tap)
    t = shapes.make_plan("conv_transpose", (2, 4, 5, 6), (4, 3, 2, 2), stride=2, dtype=f32)
    ft = gemm.cost_features(t)
    assert ft["lowered"] == 2 * 5 * 6 * 3 * 4 and ft["lowered_rows"] == 2 * 5 * 3 * 4
    pointwise = shapes.make_conv_plan((2, 4, 7, 9), (6, 4, 1, 1), None, 1, 0, 1, 1, dtype=f32)
    assert gemm.cost_features(pointwise)["lowered_rows"] == 0
