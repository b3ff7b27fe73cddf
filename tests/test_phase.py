"""The transposed op's phase split (cpu/gather.py on the implicit-GEMM path):
the phases tile the output exactly, each phase's sub-conv matches the
reference at the edges the split creates (strides above the kernel, dilations
sharing a factor with the stride, paddings past the kernel's span: negative
sub-conv padding), igemm writes a strided view and nothing else, and the
packed sub-kernels follow an edited weight."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import shapes
from numbaconv.cpu import gather, igemm

from .cases import transpose_tolerance
from .conftest import assert_close, random_array
from .reference import conv_reference, conv_transpose_reference

FUNCS = {1: nc.conv_transpose1d, 2: nc.conv_transpose2d, 3: nc.conv_transpose3d}


@pytest.mark.parametrize(
    "stride, kernel, dilation, lo, size",
    [
        (2, 3, 1, 1, 13),
        (4, 2, 1, 0, 17),  # phases no tap reaches
        (4, 3, 2, 1, 20),  # gcd(stride, dilation) = 2
        (6, 4, 3, 2, 25),
        (2, 2, 2, 0, 9),  # every tap in the even phase
        (3, 5, 1, 7, 11),  # padding past the kernel's span
        (1, 4, 3, 2, 10),
        (5, 1, 1, 0, 3),  # fewer outputs than the stride
    ],
)
def test_phases_tile_the_region_once_with_the_right_taps(stride, kernel, dilation, lo, size):
    plan = shapes.make_plan(
        "conv_transpose", (1, 2, 6), (2, 3, kernel), None, dtype=np.float32, stride=stride, dilation=dilation
    )
    region = ((0, 0, lo), (1, 1, size))
    seen = np.zeros(size, dtype=np.int64)
    for start, sub, taps in gather.phase_plans(plan, 1, *region):
        outputs = np.arange(start[2], size, stride)
        seen[outputs] += 1
        # the taps are exactly those with k * dilation = o + lo (mod stride), last first
        want = [k for k in range(kernel - 1, -1, -1) if (k * dilation - (start[2] + lo)) % stride == 0]
        assert want and list(taps[2]) == want
        assert sub.stride == (1, 1, 1) and sub.out_size[2] == len(outputs)
        # sub-conv output j, tap m reads input j - pad + m * dil: the input the
        # transposed op pairs with that output and tap
        pad, dil = sub.padding[2][0], sub.dilation[2]
        for j, o in enumerate(outputs):
            for m, k in enumerate(taps[2]):
                assert (j - pad + m * dil) * stride + k * dilation == o + lo
    # every other output is one no tap reaches, and untapped() says there are such
    reached = {o for o in range(size) if any((o + lo - k * dilation) % stride == 0 for k in range(kernel))}
    np.testing.assert_array_equal(seen, [int(o in reached) for o in range(size)])
    assert gather.untapped(plan, *region) == (len(reached) < size)


EDGES = [
    dict(stride=4, kernel=2, dilation=1, padding=0, output_padding=0),
    dict(stride=4, kernel=3, dilation=2, padding=1, output_padding=1),
    dict(stride=2, kernel=2, dilation=2, padding=0, output_padding=1),
    dict(stride=3, kernel=5, dilation=1, padding=5, output_padding=2),
    dict(stride=2, kernel=4, dilation=3, padding=4, output_padding=0),
    dict(stride=1, kernel=3, dilation=2, padding=2, output_padding=0),
]


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("edge", range(len(EDGES)))
def test_phase_split_edges_match_the_reference(nd, dtype, edge):
    e = EDGES[edge]
    rng = np.random.default_rng(10 * nd + edge)
    sizes = {1: (9,), 2: (5, 6), 3: (3, 4, 3)}[nd]
    cin, cout, groups = (6, 14, 2) if edge % 2 else (5, 7, 1)  # several register blocks, groups
    x = random_array(rng, (2, cin) + sizes, dtype)
    w = random_array(rng, (cin, cout // groups) + (e["kernel"],) * nd, dtype)
    b = random_array(rng, (cout,), dtype)
    s, d, p, op = e["stride"], e["dilation"], e["padding"], e["output_padding"]
    params = dict(
        stride=[s] * nd, pads=[(p, p)] * nd, dilation=[d] * nd, groups=groups, output_padding=[op] * nd
    )
    got = FUNCS[nd](x, w, b, s, p, op, groups, d, method="gather")
    ref = conv_transpose_reference(x, w, b, **params)
    assert got.dtype == dtype and got.shape == ref.shape
    assert_close(got, ref, transpose_tolerance(dtype, x, w, b, **params))


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_phase_split_under_the_fold_is_the_adjoint_of_conv(mode, dtype):
    # the non-zero modes: phases of the extended output, folded back; checked
    # by <conv(x, w), y> == <x, conv_transpose(y, w)> with the same mode
    rng = np.random.default_rng(5)
    w = random_array(rng, (6, 4, 3, 3), np.float64)
    y = random_array(rng, (2, 6, 5, 6), np.float64)
    kw = dict(stride=(2, 3), padding=(1, 2), dilation=(1, 2))
    xt = nc.conv_transpose(
        y.astype(dtype),
        w.astype(dtype),
        None,
        output_padding=(1, 0),
        padding_mode=mode,
        method="gather",
        **kw,
    )
    assert xt.dtype == dtype
    x = rng.standard_normal(xt.shape)
    cy = nc.conv2d(x, w, None, padding_mode=mode, method="direct", **kw)
    assert cy.shape == y.shape
    lhs, rhs = float(np.sum(cy * y)), float(np.sum(x * xt))
    scale = float(np.sum(np.abs(cy * y)) + np.sum(np.abs(x * xt)))
    assert abs(lhs - rhs) <= (1e-5 if dtype == np.float32 else 1e-12) * scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "ws, groups, wstep",
    [((11, 5, 3, 2), 1, 3), ((5, 1, 5, 5), 5, 3), ((5, 1, 5, 5), 5, 1)],
    ids=["rows", "band-strided", "band-unit"],
)
def test_igemm_writes_a_strided_view_and_nothing_else(ws, groups, wstep, dtype):
    """Row blocks and band blocks (through a scratch block where the view's
    W stride is not 1, with masked stores straight into it where it is)."""
    rng = np.random.default_rng(2)
    x = random_array(rng, (2, 5, 13, 9), dtype)
    w = random_array(rng, ws, dtype)
    b = random_array(rng, (ws[0],), dtype)
    pad = ws[2] // 2
    plan = shapes.make_plan("conv", x.shape, w.shape, b.shape, dtype=dtype, padding=pad, groups=groups)
    assert igemm.geometry(plan)[0].band_rows == (6 if ws[2] == 5 else 0)
    oh, ow = plan.out_size[1:]
    base = np.full((2, ws[0], 1, 3 * oh + 1, wstep * ow + 2), 7.0, dtype=dtype)
    cols = slice(2, None, 3) if wstep == 3 else slice(1, 1 + ow)
    view = base[:, :, :, 1::3, cols]
    assert view.shape[2:] == plan.out_size
    igemm.run(x.reshape(plan.input_shape5), w.reshape(plan.weight_shape5), b, plan, view, base=base)
    ref = conv_reference(x, w, b, stride=[1, 1], pads=[(pad, pad)] * 2, dilation=[1, 1], groups=groups)
    np.testing.assert_allclose(view[:, :, 0], ref, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-4)
    rest = np.ones(base.shape, dtype=bool)
    rest[:, :, :, 1::3, cols] = False
    assert np.all(base[rest] == 7.0)


@pytest.mark.parametrize("method", ["gather", "gemm"])
def test_an_edited_weight_is_not_served_from_the_packed_phases(method):
    """The packed phases (gather) and the transposed weight matrices (gemm)
    are kept per weight: an array edited in place is packed again."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 8, 6, 6)).astype(np.float32)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    kw = dict(stride=2, padding=1, output_padding=1, method=method)
    first = nc.conv_transpose2d(x, w, **kw)
    w[3, 2, 1, 0] += 5.0  # in place: the same array object
    second = nc.conv_transpose2d(x, w, **kw)
    ref = conv_transpose_reference(
        x, w, None, stride=[2, 2], pads=[(1, 1)] * 2, dilation=[1, 1], output_padding=[1, 1]
    )
    assert_close(
        second,
        ref,
        transpose_tolerance(
            np.float32, x, w, None, stride=[2, 2], pads=[(1, 1)] * 2, dilation=[1, 1], output_padding=[1, 1]
        ),
    )
    assert not np.allclose(first, second)


def test_gather_is_phased_for_real_dtypes_and_not_for_complex():
    for dtype, phased in ((np.float32, True), (np.float64, True), (np.complex64, False)):
        plan = shapes.make_plan("conv_transpose", (2, 8, 6, 6), (8, 4, 3, 3), None, dtype=dtype, stride=2)
        assert gather._phased(plan) is phased


@pytest.mark.parametrize("stride, kernel", list(itertools.product([1, 2, 3], [1, 2, 3])))
def test_phase_count_is_bounded_by_kernel_stride_and_size(stride, kernel):
    plan = shapes.make_plan(
        "conv_transpose", (1, 1, 4, 4), (1, 1, kernel, kernel), None, dtype=np.float32, stride=stride
    )
    phases = gather.phase_plans(plan, 1, plan.padding_lo, plan.out_size)
    assert len(phases) == min(stride, kernel) ** 2
    assert gather.untapped(plan, plan.padding_lo, plan.out_size) == (kernel < stride)


def test_a_huge_stride_splits_into_few_phases():
    # stride 1000 with a 2-tap kernel: 2 x 2 phases, not 1000 x 1000; the rest is bias
    x = np.ones((1, 1, 3, 3))
    w = np.ones((1, 1, 2, 2))
    plan = shapes.make_plan("conv_transpose", x.shape, w.shape, (1,), dtype=np.float64, stride=1000)
    assert len(gather.phase_plans(plan, 1, plan.padding_lo, plan.out_size)) == 4
    got = nc.conv_transpose2d(x, w, np.array([0.5]), stride=1000, method="gather")
    assert got.shape == (1, 1, 2002, 2002)
    assert np.count_nonzero(got == 1.5) == 36 and np.count_nonzero(got == 0.5) == 2002**2 - 36


@pytest.mark.parametrize(
    "start, step", [((0, 0, 0), (1, 1, 1)), ((0, 1, 2), (1, 2, 3)), ((1, 0, 1), (2, 3, 2))]
)
def test_phase_desc_is_the_views_offset_and_strides(start, step):
    base = np.zeros((2, 3, 4, 7, 9), dtype=np.float64)
    view = base[(slice(None), slice(None)) + tuple(slice(a, None, s) for a, s in zip(start, step))]
    assert igemm.phase_desc(base.shape, start, step) == igemm.target_desc(base, view)


def test_a_plan_keeps_its_hash_but_does_not_pickle_it():
    import pickle

    plan = shapes.make_plan("conv_transpose", (2, 8, 6, 6), (8, 4, 3, 3), None, dtype=np.float32, stride=2)
    h = hash(plan)
    assert hash(plan) == h and "_hash" in plan.__dict__
    copy = pickle.loads(pickle.dumps(plan))
    assert "_hash" not in copy.__dict__  # str hashes differ between processes
    assert copy == plan and hash(copy) == h and {plan: 1}[copy] == 1
    other = gather.phase_plans(plan, 2, plan.padding_lo, plan.out_size)[0][1]
    assert other != plan and hash(other) != h


@pytest.mark.parametrize(
    "xs, ws, kw",
    [
        ((2, 8, 9, 10), (8, 4, 2, 2), dict(stride=2)),
        ((1, 6, 7, 9), (6, 4, 3, 3), dict(stride=2, padding=1, output_padding=1)),
        ((1, 4, 4, 5, 6), (4, 2, 2, 2, 2), dict(stride=2)),
    ],
)
def test_w_major_order_same_result(monkeypatch, xs, ws, kw):
    """The stride-2 phases run W-major (gather._w_major: phases differing
    only along W not side by side on two cores); the order changes which
    thread writes what, never a value: bit-equal to the product order, and
    to the reference within the test bound."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    fn = FUNCS[len(xs) - 2]
    got = fn(x, w, method="gather", **kw)
    plan = shapes.make_plan("conv_transpose", x, w, **kw)
    phases = gather.phase_plans(plan, plan.batch, plan.padding_lo, plan.out_size)
    starts = [p[0] for p in gather._w_major(phases)]
    assert starts == sorted(starts, key=lambda s: (s[2], s[1], s[0])) and len(starts) == len(phases)
    monkeypatch.setattr(gather, "W_MAJOR", False)
    gather._w_major.cache_clear()
    try:
        np.testing.assert_array_equal(fn(x, w, method="gather", **kw), got)
    finally:
        gather._w_major.cache_clear()
    nd = len(xs) - 2
    p, op = kw.get("padding", 0), kw.get("output_padding", 0)
    params = dict(stride=[2] * nd, pads=[(p, p)] * nd, output_padding=[op] * nd)
    want = conv_transpose_reference(x.astype(np.float64), w.astype(np.float64), None, **params)
    assert_close(got, want, transpose_tolerance(np.float32, x, w, None, **params))
