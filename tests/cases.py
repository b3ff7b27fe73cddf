"""Shared test cases: the parameter grids of conv and conv_transpose, the
runners that compute a case against the NumPy reference, the tolerances, and
the method rows under test (taken from the dispatcher's table, so a new row
is tested without editing the tests).

Tolerances (never loosened to pass):
- conv, a "pointwise" row (direct sums): ``c * eps * sqrt(K) * max|x| (*) |w|``
  (:func:`tests.conftest.tolerance`);
- conv, a "norm" row (FFT): ``c * eps * log2(M) * ||x|| * ||w||`` (:func:`fft_tolerance`);
- conv_transpose, every row: ``c * eps * sqrt(K) * max(|x| (*) |w|)``
  (:func:`transpose_tolerance`), the FFT path included.
"""

from __future__ import annotations

import itertools

import numpy as np

import numbaconv as nc
from numbaconv import dispatch

from .conftest import random_array, tolerance
from .reference import conv_reference, conv_transpose_reference, same_pads

TRANSPOSE_FUNCS = {1: nc.conv_transpose1d, 2: nc.conv_transpose2d, 3: nc.conv_transpose3d}

# Variants of a row run over the whole grid: config overrides that switch a
# method between its kernels (a row not listed runs once, with the defaults).
VARIANTS = {
    ("conv", "direct"): {
        "pixels": {"direct_layout": "pixels"},
        "channels": {"direct_layout": "channels", "simd_lanes": 4},
        "pixels8": {"direct_layout": "pixels", "simd_lanes": 8},
        "channels16": {"direct_layout": "channels", "simd_lanes": 16},
    },
}


def cpu_rows(op: str) -> list:
    """(row, variant name, config overrides) for every CPU row of ``op``."""
    out = []
    for r in dispatch.rows(op, "cpu"):
        for name, settings in VARIANTS.get((op, r.name), {"default": {}}).items():
            out.append((r, name, settings))
    return out


def row_id(item) -> str:
    r, name, _ = item
    return r.name if name == "default" else f"{r.name}-{name}"


CONV_FUNCS = {1: nc.conv1d, 2: nc.conv2d, 3: nc.conv3d}


def explicit_pads(padding, nd, sizes, kernel, stride, dilation):
    """The test's own reading of the padding argument (independent of shapes.py)."""
    if padding == "valid":
        return [(0, 0)] * nd
    if padding == "same":
        return same_pads(sizes, kernel, stride, dilation)
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    return [tuple(p) if isinstance(p, tuple) else (p, p) for p in padding]


def _conv_grid():
    """A deterministic spread of cases over every parameter (ids name them)."""
    cases = []
    rng = np.random.default_rng(1234)
    spatial = {1: (13,), 2: (7, 9), 3: (5, 6, 7)}
    kernels = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}
    for nd in (1, 2, 3):
        combos = itertools.product(
            [1, 2, 3],  # stride
            [1, 2],  # dilation
            [0, 1, "same", "valid", "asym"],  # padding
            ["zeros", "reflect", "replicate", "circular"],  # mode
            [(4, 6, 1), (4, 6, 2), (4, 4, 4), (12, 8, 4)],  # C_in, C_out, groups
        )
        combos = list(combos)
        pick = rng.choice(len(combos), size=40, replace=False)
        for i in pick:
            s, d, p, mode, (cin, cout, g) = combos[i]
            if p == "asym":
                p = tuple((1, 0) if j % 2 == 0 else (0, 2) for j in range(nd))
            cases.append(
                dict(
                    nd=nd,
                    n=2,
                    cin=cin,
                    cout=cout,
                    groups=g,
                    size=spatial[nd],
                    k=kernels[nd],
                    stride=s,
                    dilation=d,
                    padding=p,
                    mode=mode,
                )
            )
    return cases


CONV_GRID = _conv_grid()


def conv_id(c):
    return (
        f"{c['nd']}d-s{c['stride']}-d{c['dilation']}-p{c['padding']}-{c['mode']}"
        f"-c{c['cin']}x{c['cout']}g{c['groups']}"
    )


# rows that need a rank-one kernel per channel (numbaconv.separable): their
# grid runs with such weights, their plans marked as the API marks them
RANK_ONE_ROWS = ("separable",)


def rank_one_array(rng, shape, dtype):
    """A random array whose every ``[o, c]`` kernel is an outer product of 1-D factors."""
    w = np.ones(shape)
    for d in range(2, len(shape)):
        w = w * rng.standard_normal(tuple(n if e in (0, 1, d) else 1 for e, n in enumerate(shape)))
    if np.dtype(dtype).kind == "c":
        return w.astype(dtype) * (1 + 0.5j)
    return w.astype(dtype)


def run_conv_case(c, dtype, rng, bias=True, batched=True, method="direct", error="pointwise", rank_one=False):
    """Case ``c`` through ``method``: ``(got, ref, tol, (x, w, b, stride, pads, dilation))``,
    the tolerance by the method's error model (see the module doc); ``rank_one``:
    weights of rank one per channel (:data:`RANK_ONE_ROWS`)."""
    nd = c["nd"]
    x = random_array(rng, (c["n"], c["cin"]) + c["size"], dtype)
    make = rank_one_array if rank_one else random_array
    w = make(rng, (c["cout"], c["cin"] // c["groups"]) + c["k"], dtype)
    b = random_array(rng, (c["cout"],), dtype) if bias else None
    stride = (c["stride"],) * nd
    dil = (c["dilation"],) * nd
    pads = explicit_pads(c["padding"], nd, c["size"], c["k"], stride, dil)
    ref_params = dict(stride=list(stride), pads=pads, dilation=list(dil), groups=c["groups"], mode=c["mode"])
    xin = x if batched else x[0]
    got = CONV_FUNCS[nd](
        xin,
        w,
        b,
        c["stride"],
        c["padding"],
        c["dilation"],
        c["groups"],
        padding_mode=c["mode"],
        method=method,
    )
    ref = conv_reference(x, w, b, **ref_params)
    if not batched:
        ref = ref[0]
    if error == "norm":
        size = int(np.prod([n + lo + hi for n, (lo, hi) in zip(c["size"], pads)]))
        tol = fft_tolerance(dtype, x, w, b, 4 * size)
    else:
        K = c["cin"] // c["groups"] * int(np.prod(c["k"]))
        tol = tolerance(dtype, K, x, w, b, **ref_params)
    return got, ref, tol, (x, w, b, stride, pads, dil)


def conv_valid(c):
    """Cases that PyTorch's padding rules allow (reflect < size, circular <= size)."""
    pads = explicit_pads(
        c["padding"], c["nd"], c["size"], c["k"], (c["stride"],) * c["nd"], (c["dilation"],) * c["nd"]
    )
    for n, (lo, hi), k in zip(c["size"], pads, c["k"]):
        if c["mode"] == "reflect" and max(lo, hi) >= n:
            return False
        if c["dilation"] * (k - 1) + 1 > n + lo + hi:
            return False
    return True


def fft_tolerance(dtype, x, w, b, padded_size) -> float:
    """FFT rounding is relative to the norms of the inputs, not to each output:
    c * eps * log2(M) * ||x|| * ||w|| (+ |b|), M the number of FFT points."""
    eps = np.finfo(np.dtype(dtype)).eps
    norm = float(np.linalg.norm(np.ravel(x)) * np.linalg.norm(np.ravel(w)))
    bias = 0.0 if b is None else float(np.max(np.abs(b)))
    return 16 * eps * (np.log2(max(padded_size, 2)) + 1) * (norm + bias)


def pairs(padding, nd):
    if isinstance(padding, int):
        return [(padding, padding)] * nd
    if padding == "valid":
        return [(0, 0)] * nd
    return [tuple(p) if isinstance(p, tuple) else (p, p) for p in padding]


def transpose_tolerance(dtype, x, w, b, **params):
    """c * eps * sqrt(K) * max(|x| (*) |w| + |b|), K = C_in/groups * prod(k) (an upper bound)."""
    eps = np.finfo(np.dtype(dtype)).eps
    scale = conv_transpose_reference(np.abs(x), np.abs(w), None if b is None else np.abs(b), **params)
    K = x.shape[1] // params.get("groups", 1) * int(np.prod(w.shape[2:]))
    return 8 * eps * np.sqrt(K) * max(float(np.max(scale)), 1.0)


def _transpose_grid():
    cases = []
    rng = np.random.default_rng(4321)
    spatial = {1: (7,), 2: (5, 6), 3: (3, 4, 5)}
    kernels = {1: (4,), 2: (3, 2), 3: (2, 3, 2)}
    for nd in (1, 2, 3):
        combos = list(
            itertools.product(
                [1, 2, 3],  # stride
                [1, 2],  # dilation
                [0, 1, "valid", "asym"],  # padding
                [0, 1],  # output_padding (kept only where valid)
                [(4, 6, 1), (4, 6, 2), (4, 4, 4), (12, 8, 4)],  # C_in, C_out, groups
            )
        )
        for i in rng.choice(len(combos), size=30, replace=False):
            s, d, p, op, (cin, cout, g) = combos[i]
            if op >= max(s, d):
                op = 0
            if p == "asym":
                p = tuple((1, 0) if j % 2 == 0 else (0, 2) for j in range(nd))
            cases.append(
                dict(
                    nd=nd,
                    cin=cin,
                    cout=cout,
                    groups=g,
                    size=spatial[nd],
                    k=kernels[nd],
                    stride=s,
                    dilation=d,
                    padding=p,
                    output_padding=op,
                )
            )
    return cases


TRANSPOSE_GRID = _transpose_grid()


def transpose_id(c):
    return (
        f"{c['nd']}d-s{c['stride']}-d{c['dilation']}-p{c['padding']}-op{c['output_padding']}"
        f"-c{c['cin']}x{c['cout']}g{c['groups']}"
    )


def run_transpose_case(c, dtype, method, rng, batched=True, bias=True):
    nd = c["nd"]
    x = random_array(rng, (2, c["cin"]) + c["size"], dtype)
    w = random_array(rng, (c["cin"], c["cout"] // c["groups"]) + c["k"], dtype)
    b = random_array(rng, (c["cout"],), dtype) if bias else None
    params = dict(
        stride=[c["stride"]] * nd,
        pads=pairs(c["padding"], nd),
        dilation=[c["dilation"]] * nd,
        groups=c["groups"],
        output_padding=[c["output_padding"]] * nd,
    )
    got = TRANSPOSE_FUNCS[nd](
        x if batched else x[0],
        w,
        b,
        c["stride"],
        c["padding"],
        c["output_padding"],
        c["groups"],
        c["dilation"],
        method=method,
    )
    ref = conv_transpose_reference(x, w, b, **params)
    if not batched:
        ref = ref[0]
    return got, ref, transpose_tolerance(dtype, x, w, b, **params), (x, w, b, params)


def conv_case_plan(c, dtype=np.float64, row=None):
    """The plan of conv case ``c`` (for a row's ``supports``): as the API makes
    it from the weights ``row`` is run with (:data:`RANK_ONE_ROWS`)."""
    import dataclasses

    from numbaconv import separable, shapes

    nd = c["nd"]
    plan = shapes.make_conv_plan(
        (c["n"], c["cin"]) + c["size"], (c["cout"], c["cin"] // c["groups"]) + c["k"], (c["cout"],),
        c["stride"], c["padding"], c["dilation"], c["groups"], padding_mode=c["mode"], dtype=dtype, ndim=nd,
    )  # fmt: skip
    if row is not None and row.name in RANK_ONE_ROWS:
        plan = dataclasses.replace(plan, separable=separable.eligible(plan))
    return plan


def row_cases(rows, cases, supported=True, dtypes=None):
    """``(case, row item)`` pairs of ``rows`` (:func:`cpu_rows` items) and
    ``cases`` that the row supports (or, ``supported=False``, does not), as
    pytest params with ids; with ``dtypes``, ``(case, dtype, row item)``
    triples, the support checked per dtype."""
    import pytest

    out = []
    for item in rows:
        for c in cases:
            for dt in dtypes or (None,):
                plan = conv_case_plan(c, np.float64 if dt is None else dt, item[0])
                if (item[0].supports(plan) is None) != supported:
                    continue
                if dt is None:
                    out.append(pytest.param(c, item, id=f"{conv_id(c)}-{row_id(item)}"))
                else:
                    out.append(
                        pytest.param(c, dt, item, id=f"{conv_id(c)}-{np.dtype(dt).name}-{row_id(item)}")
                    )
    return out


def run_conv_row(row, c, dtype, rng, **kw):
    """A conv case through ``row`` with the tolerance of the row's error model."""
    return run_conv_case(
        c, dtype, rng, method=row.name, error=row.error, rank_one=row.name in RANK_ONE_ROWS, **kw
    )


def run_saying_if_over_budget(op: str, method: str, plan, call):
    """``call()``, expecting numbaconv's over-budget RuntimeWarning exactly when
    the method needs more than ``config.workspace_bytes`` for ``plan``."""
    import pytest

    from numbaconv import config

    if dispatch.row(op, method).workspace_bytes(plan) > config.workspace_bytes:
        with pytest.warns(RuntimeWarning, match="more than config.workspace_bytes"):
            return call()
    return call()
