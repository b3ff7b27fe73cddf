"""Kept calls (numbaconv.api): a repeated call with the same arrays' types,
shapes and dtypes, parameters and settings skips the checks, the plan and
the dispatcher, and gives what a fresh call gives; anything that could
change the plan or the choice makes it ask again; bad arguments raise as
before."""

from __future__ import annotations

import warnings

import numba
import numpy as np
import pytest

import numbaconv as nc
from numbaconv import api, config, dispatch, firstcall, separable

from .conftest import assert_close, tolerance
from .reference import conv_reference


@pytest.fixture
def resolves(monkeypatch):
    """The plans the dispatcher was asked about (a kept call asks nothing)."""
    asked = []
    real = dispatch.resolve

    def spy(op, plan, method, device="cpu"):
        asked.append((op, plan, method))
        return real(op, plan, method, device)

    monkeypatch.setattr(dispatch, "resolve", spy)
    return asked


def _arrays(rng, xs, ws, dtype=np.float32):
    return rng.standard_normal(xs).astype(dtype), rng.standard_normal(ws).astype(dtype)


@pytest.mark.parametrize("method", ["auto", "direct", "gemm"])
def test_repeat_is_kept_and_equal(resolves, method):
    rng = np.random.default_rng(0)
    x, w = _arrays(rng, (2, 6, 11, 9), (4, 6, 3, 3))
    b = rng.standard_normal(4).astype(np.float32)
    first = nc.conv2d(x, w, b, padding=1, stride=(1, 2), method=method)
    assert len(resolves) == 1
    x2 = rng.standard_normal(x.shape).astype(np.float32)  # other values, same shapes
    again = nc.conv2d(x2, w, b, padding=1, stride=(1, 2), method=method)
    assert len(resolves) == 1  # kept: the dispatcher was not asked
    p = dict(stride=(1, 2), pads=[(1, 1), (1, 1)])
    assert_close(again, conv_reference(x2, w, b, **p), tolerance(np.float32, 6 * 9, x2, w, b, **p))
    assert again is not first and not np.shares_memory(again, first)
    api.clear_kept_calls()
    assert np.array_equal(nc.conv2d(x2, w, b, padding=1, stride=(1, 2), method=method), again)
    assert len(resolves) == 2


def test_what_keys_a_kept_call(resolves):
    """Other shapes, dtypes, parameters, settings or thread counts ask again."""
    rng = np.random.default_rng(1)
    x, w = _arrays(rng, (1, 4, 10, 10), (4, 4, 3, 3))
    calls = [
        lambda: nc.conv2d(x, w, padding=1),
        lambda: nc.conv2d(x[:, :, :9], w, padding=1),
        lambda: nc.conv2d(x.astype(np.float64), w, padding=1),
        lambda: nc.conv2d(x, w, padding=(1, 1)),
        lambda: nc.conv2d(x, w, padding=1, padding_mode="reflect"),
        lambda: nc.conv2d(x, w, w[:, 0, 0, 0], padding=1),
        lambda: nc.conv_transpose2d(x, w, padding=1),
    ]
    for i, call in enumerate(calls):
        call()
        assert len(resolves) == i + 1
        call()
        assert len(resolves) == i + 1
    n = len(resolves)
    with config.override(workspace_bytes=config.workspace_bytes + 1):
        calls[0]()
    assert len(resolves) == n + 1
    config.direct_layout = config.direct_layout  # any assignment: ask again
    calls[0]()
    assert len(resolves) == n + 2
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        calls[0]()
        assert len(resolves) == n + 3
    finally:
        numba.set_num_threads(before)


def test_arguments_still_checked():
    """A kept call's arguments are compared exactly: what a fresh call
    refuses is refused after a kept call with equal-comparing values."""
    rng = np.random.default_rng(2)
    x, w = _arrays(rng, (1, 3, 8, 8), (3, 3, 3, 3))
    nc.conv2d(x, w, stride=1, groups=1)
    nc.conv2d(x, w, stride=1, groups=1)
    with pytest.raises(TypeError, match="stride"):
        nc.conv2d(x, w, stride=True, groups=1)
    with pytest.raises(TypeError, match="groups"):
        nc.conv2d(x, w, stride=1, groups=1.0)
    with pytest.raises(ValueError, match="method"):
        nc.conv2d(x, w, method="directx")
    # list arguments are not kept, and give the same answer
    assert np.array_equal(nc.conv2d(x, w, padding=[1, 1]), nc.conv2d(x, w, padding=(1, 1)))


def test_out_checked_on_kept_calls():
    rng = np.random.default_rng(3)
    x, w = _arrays(rng, (1, 3, 8, 8), (5, 3, 3, 3))
    ref = nc.conv2d(x, w, padding=1)
    out = np.empty_like(ref)
    assert nc.conv2d(x, w, padding=1, out=out) is out
    assert np.array_equal(out, ref)
    with pytest.raises(ValueError, match="shape"):
        nc.conv2d(x, w, padding=1, out=np.empty((1, 5, 8, 7), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        nc.conv2d(x, w, padding=1, out=np.empty(ref.shape, np.float64))
    ro = np.empty_like(ref)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nc.conv2d(x, w, padding=1, out=ro)
    big = np.zeros((1, 5, 8, 8), np.float32)
    xs = big[:, :3]
    with pytest.raises(ValueError, match="overlaps input"):
        nc.conv2d(xs, w, padding=1, out=big)


def test_rank_one_and_full_weights_of_one_shape():
    """Depthwise kernels of one shape, rank one or not: each call runs the
    plan its weight gives (``separable`` marked or not), in any order."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 3, 40, 40)).astype(np.float32)
    col, row = rng.standard_normal((3, 7, 1)), rng.standard_normal((3, 1, 7))
    rank_one = (col * row)[:, None].astype(np.float32)
    full = rng.standard_normal((3, 1, 7, 7)).astype(np.float32)
    plan = nc.shapes.make_plan("conv", x.shape, full.shape, padding=3, groups=3)
    assert separable.eligible(plan) and separable.rank_one(plan, rank_one)
    assert not separable.rank_one(plan, full)
    for w in (rank_one, full, full, rank_one, rank_one, full):
        got = nc.conv2d(x, w, padding=3, groups=3)
        p = dict(pads=[(3, 3), (3, 3)], groups=3)
        assert_close(got, conv_reference(x, w, None, **p), tolerance(np.float32, 49, x, w, None, **p))


def test_weight_edited_in_place_between_kept_calls():
    rng = np.random.default_rng(5)
    x, w = _arrays(rng, (2, 8, 12, 12), (8, 8, 3, 3))
    nc.conv2d(x, w, padding=1)
    w[3, 2, 1, 1] += 5.0
    got = nc.conv2d(x, w, padding=1)
    p = dict(pads=[(1, 1), (1, 1)])
    assert_close(got, conv_reference(x, w, None, **p), tolerance(np.float32, 72, x, w, None, **p))


def test_first_call_after_forget_is_not_skipped(monkeypatch):
    """firstcall.forget() (its methods are to be prepared again) ends the
    kept calls: the next auto call is answered by NumPy again."""
    rng = np.random.default_rng(6)
    x, w = _arrays(rng, (1, 4, 16, 16), (4, 4, 3, 3))
    monkeypatch.setattr(config, "compile_in_background", True)
    answered = []
    real = firstcall.run

    def spy(*args, **kwargs):
        answered.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(firstcall, "run", spy)
    try:
        for _ in range(3):
            firstcall.forget()
            nc.conv2d(x, w, padding=1)
            firstcall.wait()
            n = len(answered)
            assert n >= 1
            nc.conv2d(x, w, padding=1)  # the method runs, and the call is kept
            nc.conv2d(x, w, padding=1)
            assert len(answered) == n
            answered.clear()
    finally:
        firstcall.wait()


def test_over_budget_warning_on_kept_calls():
    rng = np.random.default_rng(7)
    x, w = _arrays(rng, (1, 8, 32, 32), (8, 8, 5, 5))
    with config.override(workspace_bytes=100):
        for _ in range(3):
            with pytest.warns(RuntimeWarning, match="more than config.workspace_bytes=100"):
                nc.conv2d(x, w, padding=2, method="fft")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nc.conv2d(x, w, padding=2, method="fft")
        nc.conv2d(x, w, padding=2, method="fft")


def test_kept_calls_are_bounded():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((2, 2, 1, 1)).astype(np.float32)
    for n in range(api._KEPT_MAX + 20):
        nc.conv2d(np.ones((1, 2, 1, n + 1), np.float32), w)
    assert 0 < len(api._KEPT) <= api._KEPT_MAX


def test_unhashable_override_is_not_kept():
    rng = np.random.default_rng(9)
    x, w = _arrays(rng, (1, 2, 6, 6), (2, 2, 3, 3))
    with config.override(cuda_block_2d=[16, 16]):  # a list: the settings cannot key a call
        a = nc.conv2d(x, w, padding=1)
        b = nc.conv2d(x, w, padding=1)
    assert np.array_equal(a, b) and not api._KEPT
