"""``numbaconv calibrate``: time every CPU row on a spread of cases, refit
each row's constants, store them for this machine (or print them as the
source of :data:`numbaconv.costs.SHIPPED` with ``--ship``).

The rows come from the method table (:data:`numbaconv.dispatch.TABLE`) and
their operation counts from each row's ``cost_features``: a new method is
calibrated without an edit here.
"""

from __future__ import annotations

import time

import numpy as np

from . import api, costs, dispatch
from .files import write_json_atomic
from .machine import block_best, fingerprint
from .shapes import make_plan

# Calibration cases: (op, input shape, weight shape, params), float32. A spread
# of channel counts, kernel sizes, strides, groups and dims so that each
# method's features vary independently; small enough that `numbaconv
# calibrate` takes a minute or two (plus compilation on first use).
CASES: tuple = (
    ("conv", (8, 64, 28, 28), (64, 64, 3, 3), dict(padding=1)),
    ("conv", (4, 3, 112, 112), (32, 3, 7, 7), dict(stride=2, padding=3)),
    ("conv", (4, 3, 160, 160), (24, 3, 3, 3), dict(stride=2, padding=1)),
    ("conv", (2, 3, 192, 192), (48, 3, 5, 5), dict(stride=2, padding=2)),
    ("conv", (8, 128, 28, 28), (32, 128, 1, 1), dict()),
    ("conv", (8, 128, 56, 56), (96, 128, 1, 1), dict()),
    ("conv", (4, 512, 28, 28), (64, 512, 1, 1), dict()),
    ("conv", (16, 64, 14, 14), (128, 64, 1, 1), dict()),
    ("conv", (4, 256, 7, 7), (256, 256, 3, 3), dict(padding=1)),
    ("conv", (4, 32, 56, 56), (32, 1, 3, 3), dict(padding=1, groups=32)),
    ("conv", (4, 16, 56, 56), (16, 1, 5, 5), dict(padding=2, groups=16)),
    ("conv", (1, 4, 128, 128), (4, 4, 21, 21), dict(padding=10)),
    ("conv", (1, 1, 256, 256), (1, 1, 9, 9), dict(padding=4)),
    ("conv", (1, 1, 512, 512), (1, 1, 3, 3), dict(padding=1)),
    ("conv", (2, 1, 32768), (1, 1, 257), dict(padding="same")),
    ("conv", (2, 8, 4096), (8, 8, 31), dict(padding=15)),
    ("conv", (1, 8, 16, 32, 32), (16, 8, 3, 3, 3), dict(padding=1)),
    ("conv", (1, 2, 24, 24, 24), (2, 2, 7, 7, 7), dict(padding=3)),
    ("conv", (8, 32, 32, 32), (64, 32, 3, 3), dict(stride=2, padding=1)),
    ("conv", (2, 16, 64, 64), (16, 16, 11, 11), dict(padding=5)),
    ("conv", (4, 8, 64, 64), (8, 8, 5, 5), dict(padding=2)),
    ("conv", (2, 4, 96, 96), (8, 2, 3, 3), dict(padding=1, groups=2)),
    ("conv", (2, 8, 16, 24, 24), (8, 8, 5, 5, 5), dict(padding=2)),
    ("conv", (4, 32, 28, 28), (32, 32, 5, 5), dict(padding=2)),
    ("conv", (1, 16, 64, 64), (16, 16, 3, 3), dict(padding=1, dilation=2)),
    ("conv", (8, 1, 8192), (4, 1, 64), dict(stride=2)),
    ("conv", (8, 128, 14, 14), (128, 128, 3, 3), dict(padding=1)),
    ("conv", (4, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ("conv", (4, 128, 28, 28), (128, 128, 3, 3), dict(padding=1)),
    ("conv", (4, 64, 1024), (64, 64, 3), dict(padding=1)),
    ("conv", (2, 32, 12, 24, 24), (32, 32, 3, 3, 3), dict(padding=1)),
    ("conv", (2, 48, 40, 40), (48, 48, 3, 3), dict(padding=1)),
    ("conv", (1, 384, 10, 10), (384, 384, 3, 3), dict(padding=1)),
    ("conv_transpose", (4, 64, 16, 16), (64, 32, 4, 4), dict(stride=2, padding=1)),
    ("conv_transpose", (4, 32, 32, 32), (32, 16, 2, 2), dict(stride=2)),
    ("conv_transpose", (2, 16, 32, 32), (16, 8, 3, 3), dict(padding=1)),
    ("conv_transpose", (2, 4, 64, 64), (4, 4, 8, 8), dict(stride=4, padding=2)),
    ("conv_transpose", (1, 32, 8, 8, 8), (32, 16, 2, 2, 2), dict(stride=2)),
    ("conv_transpose", (8, 128, 8, 8), (128, 64, 4, 4), dict(stride=2, padding=1)),
    ("conv_transpose", (2, 8, 4096), (8, 4, 16), dict(stride=4)),
    ("conv_transpose", (1, 3, 64, 64), (3, 3, 9, 9), dict(padding=4)),
    ("conv_transpose", (4, 2, 48, 48), (2, 2, 3, 3), dict(stride=2, padding=1)),
    ("conv_transpose", (8, 64, 32, 32), (64, 32, 4, 4), dict(stride=2, padding=1)),
    ("conv_transpose", (8, 32, 64, 64), (32, 16, 2, 2), dict(stride=2)),
    ("conv_transpose", (4, 128, 16, 16), (128, 64, 4, 4), dict(stride=2, padding=1)),
    ("conv_transpose", (2, 96, 16, 16), (96, 48, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ("conv_transpose", (4, 16, 64, 64), (16, 8, 3, 3), dict(padding=1)),
    ("conv_transpose", (8, 96, 32, 32), (96, 48, 4, 4), dict(stride=2, padding=1)),
    ("conv_transpose", (4, 128, 32, 32), (128, 64, 4, 4), dict(stride=2, padding=1)),
    ("conv_transpose", (4, 64, 64, 64), (64, 32, 2, 2), dict(stride=2)),
    # batch 1 on small planes (late layers of a network at inference): the
    # fixed and per-row costs (GEMM path's lowering of 7-wide rows)
    ("conv", (1, 96, 7, 7), (160, 96, 3, 3), dict(padding=1)),
    ("conv", (1, 96, 14, 14), (192, 96, 3, 3), dict(stride=2, padding=1)),
    ("conv", (1, 48, 384), (48, 48, 3), dict(padding=1)),
    ("conv", (1, 48, 28, 28), (48, 48, 3, 3), dict(padding=1)),
    ("conv", (1, 256, 7, 7), (512, 256, 1, 1), dict()),
    ("conv_transpose", (1, 48, 14, 14), (48, 24, 2, 2), dict(stride=2)),
    ("conv_transpose", (1, 96, 10, 10), (96, 48, 3, 3), dict(stride=2, padding=1, output_padding=1)),
)


def fit(samples: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Non-negative least squares of seconds on features, relative errors
    weighted equally (so that small cases count as much as large ones)."""
    from scipy.optimize import nnls

    names = list(samples[0][0])
    a = np.array([[s[0][n] for n in names] for s in samples], dtype=np.float64)
    y = np.array([s[1] for s in samples], dtype=np.float64)
    w = 1.0 / y
    # scale the columns so that NNLS sees numbers of similar size
    scale = np.maximum(np.max(np.abs(a * w[:, None]), axis=0), 1e-300)
    coef, _ = nnls(a * w[:, None] / scale, y * w)
    return {n: float(c / s) for n, c, s in zip(names, coef, scale)}


def _time_case(op, xs, ws, kw, rng, max_call_s):
    """``{row key: (features, seconds)}`` of every CPU row that supports the case."""
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    fn = api.conv if op == "conv" else api.conv_transpose
    plan = make_plan(op, xs, ws, None, dtype=np.float32, **kw)
    out = {}
    for r in dispatch.rows(op):
        if r.supports(plan) is not None:
            continue
        call = lambda r=r: fn(x, w, method=r.name, **kw)  # noqa: E731
        call()  # compile and warm up (a first call may compile a kernel for this shape)
        t0 = time.perf_counter()
        call()
        second = time.perf_counter() - t0
        t = second if second > max_call_s else min(block_best(call), block_best(call))
        out[r.price_key] = (r.cost_features(plan), t)
    return out


def calibrate(cases=CASES, progress=None, max_call_s: float = 2.0) -> dict:
    """Time every supported CPU row on ``cases``, fit each row's constants
    and return ``{"fingerprint", "constants", "fit", "samples"}`` (``fit`` has
    each row's relative rms error and sample count). Methods slower than
    ``max_call_s`` per call on a case (after a first call, which may
    compile) are timed once more."""
    rng = np.random.default_rng(0)
    samples: dict[str, list] = {}
    for i, (op, xs, ws, kw) in enumerate(cases):
        for key, sample in _time_case(op, xs, ws, kw, rng, max_call_s).items():
            samples.setdefault(key, []).append(sample)
        if progress is not None:
            progress(i + 1, len(cases))
    consts, quality = {}, {}
    for key, rows in samples.items():
        c = fit(rows)
        consts[key] = c
        pred = np.array([sum(c[k] * v for k, v in f.items()) for f, _ in rows])
        y = np.array([t for _, t in rows])
        quality[key] = {"rel_rms": float(np.sqrt(np.mean(((pred - y) / y) ** 2))), "samples": len(rows)}
    raw = {k: [[f, t] for f, t in rows] for k, rows in samples.items()}
    return {"fingerprint": fingerprint(), "constants": consts, "fit": quality, "samples": raw}


def save(result: dict, path: str | None = None) -> str:
    """Write a :func:`calibrate` result where :func:`numbaconv.costs.constants` looks for it."""
    path = path or costs.calibration_path()
    write_json_atomic(path, result, indent=1)
    costs.forget_loaded()
    return path


def shipped_literal(result: dict) -> str:
    """A calibration's constants as the Python source of :data:`numbaconv.costs.SHIPPED`."""
    lines = ["SHIPPED: dict[str, dict[str, float]] = {"]
    for key, consts in result["constants"].items():
        lines.append(f'    "{key}": {{')
        lines.extend(f'        "{name}": {value:.3g},' for name, value in consts.items())
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)
