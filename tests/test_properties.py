"""Hypothesis properties of conv: linearity, circular padding == tiled input."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import numbaconv as nc

from .conftest import assert_close, tolerance


@st.composite
def conv_problem(draw):
    nd = draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    k = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    size = tuple(draw(st.integers(kk, kk + 5)) for kk in k)
    stride = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((draw(st.integers(1, 2)), cin) + size)
    w = rng.standard_normal((cout, cin // groups) + k)
    return x, w, dict(stride=stride, groups=groups), rng


def _linearity_tol(x, w, kw):
    """Bound for comparing two float64 results built from |x| and |w| magnitudes."""
    return 4 * tolerance(
        np.float64, w[0].size, x, w, None, stride=[kw["stride"]] * (w.ndim - 2), groups=kw["groups"]
    )


@given(conv_problem(), st.floats(-3, 3), st.floats(-3, 3))
def test_linear_in_input(problem, a, b):
    x, w, kw, rng = problem
    x2 = rng.standard_normal(x.shape)
    lhs = nc.conv(a * x + b * x2, w, **kw)
    rhs = a * nc.conv(x, w, **kw) + b * nc.conv(x2, w, **kw)
    assert_close(lhs, rhs, _linearity_tol((abs(a) + abs(b)) * (np.abs(x) + np.abs(x2)), w, kw))


@given(conv_problem(), st.floats(-3, 3), st.floats(-3, 3))
def test_linear_in_weight(problem, a, b):
    x, w, kw, rng = problem
    w2 = rng.standard_normal(w.shape)
    lhs = nc.conv(x, a * w + b * w2, **kw)
    rhs = a * nc.conv(x, w, **kw) + b * nc.conv(x, w2, **kw)
    assert_close(lhs, rhs, _linearity_tol(x, (abs(a) + abs(b)) * (np.abs(w) + np.abs(w2)), kw))


@given(conv_problem(), st.data())
def test_circular_equals_tiled_input(problem, data):
    """padding_mode='circular' == an unpadded conv of the input tiled 3 times per dim, cropped."""
    x, w, kw, _ = problem
    nd = w.ndim - 2
    sizes = x.shape[2:]
    pads = tuple((data.draw(st.integers(0, n)), data.draw(st.integers(0, n))) for n in sizes)
    # the kernel always fits (size >= k); pads <= size are all valid for circular
    assume(all(n + lo + hi >= kk for n, (lo, hi), kk in zip(sizes, pads, w.shape[2:])))
    got = nc.conv(x, w, padding=pads, padding_mode="circular", **kw)
    tiled = np.tile(x, (1, 1) + (3,) * nd)
    crop = tuple(slice(n - lo, 2 * n + hi) for n, (lo, hi) in zip(sizes, pads))
    ref = nc.conv(tiled[(slice(None), slice(None)) + crop], w, **kw)
    assert_close(got, ref, 1e-12 * max(1.0, float(np.abs(ref).max(initial=0))))
