"""Shape arithmetic: worked examples from the classic references, padding forms, ConvPlan."""

from __future__ import annotations

import numpy as np
import pytest

from numbaconv import shapes
from numbaconv.shapes import conv_output_shape, conv_output_size, make_conv_plan, same_padding


@pytest.mark.parametrize(
    "size, k, s, p, expected",
    [
        (4, 3, 1, 0, 2),  # 4x4 input, 3x3 kernel, s=1, p=0 -> 2x2
        (5, 3, 2, 1, 3),  # 5x5, k=3, s=2, p=1 -> 3x3
        (6, 3, 2, 1, 3),  # 6x6, k=3, s=2, p=1 -> 3x3
        (416, 7, 1, 0, 410),
        (416, 7, 2, 0, 205),
        (417, 7, 2, 0, 206),
        (448, 9, 2, 0, 220),
        (445, 9, 2, 0, 219),
        (608, 11, 2, 0, 299),
        (13, 9, 2, 0, 3),
    ],
)
def test_worked_examples(size, k, s, p, expected):
    assert conv_output_size(size, k, s, p, p, 1) == expected
    assert conv_output_shape((1, 1, size, size), (1, 1, k, k), stride=s, padding=p) == (
        1,
        1,
        expected,
        expected,
    )


def test_dilation_and_asymmetric_padding():
    # effective kernel d*(k-1)+1 = 5; (10 + 1 + 2 - 5) // 1 + 1 = 9
    assert conv_output_size(10, 3, 1, 1, 2, 2) == 9
    assert conv_output_shape((2, 3, 10), (4, 3, 3), padding=((1, 2),), dilation=2) == (2, 4, 9)


@pytest.mark.parametrize("size", [1, 5, 6, 7, 32])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("dilation", [1, 2])
def test_same_padding_rule(size, k, stride, dilation):
    lo, hi = same_padding(size, k, stride, dilation)
    out = conv_output_size(size, k, stride, lo, hi, dilation)
    assert out == -(-size // stride)  # ceil(size / stride)
    assert hi - lo in (0, 1)  # the odd element goes on the high side
    if stride == 1:
        assert lo + hi == dilation * (k - 1)  # PyTorch's rule exactly


def test_padding_forms():
    n = 2
    norm = lambda p: shapes.normalize_padding(p, n, (8, 8), (3, 3), (1, 1), (1, 1))  # noqa: E731
    assert norm(1) == ((1, 1), (1, 1))
    assert norm((1, 2)) == ((1, 1), (2, 2))
    assert norm(((0, 1), 2)) == ((0, 1), (2, 2))
    assert norm([(0, 1), (2, 3)]) == ((0, 1), (2, 3))
    assert norm("valid") == ((0, 0), (0, 0))
    assert norm("same") == ((1, 1), (1, 1))
    assert norm(np.int64(2)) == ((2, 2), (2, 2))


def test_plan_canonical_form():
    plan = make_conv_plan((3, 10), (4, 3, 3), (4,), stride=2, padding=1, dtype=np.float32)
    assert plan.ndim == 1 and not plan.batched and plan.batch == 1
    assert plan.in_size == (1, 1, 10) and plan.kernel == (1, 1, 3) and plan.out_size == (1, 1, 5)
    assert plan.stride == (1, 1, 2) and plan.dilation == (1, 1, 1)
    assert plan.padding == ((0, 0), (0, 0), (1, 1))
    assert plan.output_shape == (4, 5)
    assert plan.output_shape5 == (1, 4, 1, 1, 5)
    assert plan.weight_shape5 == (4, 3, 1, 1, 3)
    assert plan.reduction_length == 9 and plan.flops == 2 * 4 * 5 * 9
    with pytest.raises(AttributeError):
        plan.groups = 2  # frozen


def test_tap_table_modes():
    # size 4, kernel 3, padding 2 each side, stride 1: padded positions -2..5
    t = lambda mode: shapes.tap_table(6, 3, 1, 1, 2, 4, mode)[:, 0]  # noqa: E731
    assert list(t("zeros")) == [-1, -1, 0, 1, 2, 3]
    assert list(t("replicate")) == [0, 0, 0, 1, 2, 3]
    assert list(t("circular")) == [2, 3, 0, 1, 2, 3]
    assert list(t("reflect")) == [2, 1, 0, 1, 2, 3]
    last = shapes.tap_table(6, 3, 1, 1, 2, 4, "reflect")[:, 2]  # positions 0..7-2 -> 0..5
    assert list(last) == [0, 1, 2, 3, 2, 1]


def test_same_padding_undefined_for_transposed():
    with pytest.raises(ValueError, match="padding='same' is not defined for transposed"):
        shapes.normalize_padding("same", 1, (8,), (3,), (1,), (1,), transposed=True)


def test_config_override_restores():
    from numbaconv import config

    before = config.workspace_bytes
    with config.override(workspace_bytes=1234):
        assert config.workspace_bytes == 1234
    assert config.workspace_bytes == before
    with pytest.raises(ValueError, match="unknown numbaconv.config setting"):
        with config.override(nonsense=1):
            pass


@pytest.mark.parametrize("out,k,s,d,lo,size", [(9, 3, 2, 1, 1, 5), (12, 4, 3, 2, 0, 4), (5, 2, 1, 3, 2, 6)])
def test_gather_table_inverts_the_scatter_table(out, k, s, d, lo, size):
    from numbaconv.shapes import gather_table, tap_table

    scatter = tap_table(size, k, s, d, lo, out, "zeros")  # input i, tap k -> output or -1
    gather = gather_table(out, k, s, d, lo, size)  # output o, tap k -> input or -1
    for o in range(out):
        for kk in range(k):
            hits = [i for i in range(size) if scatter[i, kk] == o]
            assert gather[o, kk] == (hits[0] if hits else -1)


def test_transposed_output_size_formula():
    from numbaconv.shapes import conv_transpose_output_size, make_conv_transpose_plan

    # (L - 1) * s - lo - hi + d * (k - 1) + output_padding + 1
    assert conv_transpose_output_size(3, 3, 2, 0, 0, 1) == 7
    assert conv_transpose_output_size(3, 3, 2, 0, 0, 1, 1) == 8
    assert conv_transpose_output_size(2, 3, 1, 0, 0, 1) == 4
    assert conv_transpose_output_size(3, 3, 2, 1, 1, 1) == 5
    assert conv_transpose_output_size(32, 4, 2, 1, 1, 1) == 64  # dcgan
    plan = make_conv_transpose_plan((8, 64, 64, 64), (64, 32, 2, 2), (32,), stride=2)
    assert plan.output_shape == (8, 32, 128, 128)
    assert plan.weight_shape5 == (64, 32, 1, 2, 2)
    plan = make_conv_transpose_plan((4, 5), (4, 3, 3), None, 2, ((1, 2),), 1, 1, 2)
    assert plan.out_size == (1, 1, (5 - 1) * 2 - 3 + 2 * 2 + 1 + 1) and plan.output_padding == (0, 0, 1)
    assert plan.output_shape == (3, 11)


@pytest.mark.parametrize("seed", range(30))
def test_compact_tap_maps_equal_the_tables(seed):
    from numbaconv.shapes import (
        PADDING_MODES,
        conv_tap_map,
        expand,
        gather_table,
        gather_tap_map,
        scatter_tap_map,
        tap_table,
    )

    rng = np.random.default_rng(seed)
    size, k, s, d = (int(v) for v in rng.integers(1, 6, 4))
    lo, hi = (int(v) for v in rng.integers(0, 4, 2))
    mode = PADDING_MODES[seed % 4]
    if mode == "reflect":
        lo, hi = min(lo, size - 1), min(hi, size - 1)
    if mode == "circular":
        lo, hi = min(lo, size), min(hi, size)
    span = d * (k - 1) + 1
    if size + lo + hi >= span:
        out = (size + lo + hi - span) // s + 1
        f, geo = conv_tap_map(size, out, k, s, d, lo, hi, mode)
        np.testing.assert_array_equal(expand(f, geo), tap_table(out, k, s, d, lo, size, mode))
    tout = (size - 1) * s - lo - hi + span + int(rng.integers(0, s))
    if tout >= 1:
        f, geo = gather_tap_map(tout, k, s, d, lo, size)
        np.testing.assert_array_equal(expand(f, geo), gather_table(tout, k, s, d, lo, size))
        f, geo = scatter_tap_map(size, tout, k, s, d, lo)
        np.testing.assert_array_equal(expand(f, geo), tap_table(size, k, s, d, lo, tout, "zeros"))


def test_plans_are_kept_per_arguments_and_bad_ones_still_raise():
    """The same arguments give the same plan object; values that compare
    equal across types (True == 1, 1.0 == 1) are still refused after the int
    was planned; unhashable arguments (lists) are planned, not kept."""
    args = ((2, 4, 9, 9), (6, 4, 3, 3), None)
    p = make_conv_plan(*args, 1, 1, dtype=np.float32, ndim=2)
    assert make_conv_plan(*args, 1, 1, dtype=np.float32, ndim=2) is p
    assert make_conv_plan(*args, 2, 1, dtype=np.float32, ndim=2) is not p
    for bad in (True, 1.0, (1, True)):
        with pytest.raises(TypeError, match="stride"):
            make_conv_plan(*args, bad, 1, dtype=np.float32, ndim=2)
    q = make_conv_plan(*args, [1, 1], [1, 1], dtype=np.float32, ndim=2)
    assert q == p and q is not p
    with pytest.raises(ValueError, match="padding"):
        make_conv_plan(*args, 1, -1, dtype=np.float32, ndim=2)
