"""The dispatcher's cost model: estimated seconds per method.

Each method's time is modelled as a sum of operation counts times
per-machine constants (seconds per unit), in the spirit of SciPy's
``choose_conv_method``: ``features(op, method, plan)`` gives the counts,
``constants()`` the seconds per unit. The constants shipped in
``SHIPPED`` were fitted on the development machine (2 vCPUs of an Intel
Xeon, Emerald Rapids) by ``numbaconv calibrate``; running it on another
machine refits them there and stores them in the user cache directory
(``config.cache_dir``), used from then on by every process on that machine.

Estimates are for a call in steady state: compiled kernels, and for the FFT
path the kernel spectrum cached (repeated calls with the same weights).
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
import warnings

import numba
import numpy as np

from . import config

_GEMM_FEATURES = (
    "call", "outputs", "lowered", "gemm_flops", "gemm_flops_short", "gemm_flops_thin", "gemm_calls",
)  # fmt: skip

# feature names per (op, method); each is a count per call
FEATURES: dict[tuple[str, str], tuple[str, ...]] = {
    ("conv", "direct"): (
        "call",
        "outputs",
        "flops_rows",
        "flops_rows_strided",
        "row_passes",
        "flops_cl",
        "cl_runs",
    ),
    ("conv", "gemm"): _GEMM_FEATURES,
    ("conv", "fft"): ("call", "fft_point_logs", "cmacs", "transforms", "points"),
    ("conv_transpose", "scatter"): ("call", "outputs", "flops"),
    ("conv_transpose", "gather"): ("call", "outputs", "flops", "flops_thin", "cl_runs"),
    ("conv_transpose", "gemm"): _GEMM_FEATURES,
    ("conv_transpose", "fft"): ("call", "outputs", "fft_point_logs", "cmacs", "transforms", "points"),
}

# Seconds per unit of each feature, fitted on the development machine (2 vCPUs
# of an Intel Xeon, Emerald Rapids, float32) over CALIBRATION_CASES, each
# case's time the fastest of three `calibrate` runs: relative rms error per
# method 7-27% (see docs/dispatch.md); regenerate with `numbaconv calibrate
# --ship` after changing a kernel.
SHIPPED: dict[str, dict[str, float]] = {
    "conv/direct": {
        "call": 0.000104,
        "outputs": 0,
        "flops_rows": 2.87e-11,
        "flops_rows_strided": 7.67e-11,
        "row_passes": 0,
        "flops_cl": 7.44e-12,
        "cl_runs": 2.41e-09,
    },
    "conv/gemm": {
        "call": 0.0002,
        "outputs": 0,
        "lowered": 6.06e-10,
        "gemm_flops": 5.64e-12,
        "gemm_flops_short": 2.48e-12,
        "gemm_flops_thin": 6.44e-12,
        "gemm_calls": 2.33e-05,
    },
    "conv/fft": {
        "call": 0.000204,
        "fft_point_logs": 8.73e-11,
        "cmacs": 3.22e-10,
        "transforms": 2.35e-06,
        "points": 0,
    },
    "conv_transpose/scatter": {
        "call": 0.000148,
        "outputs": 1.07e-09,
        "flops": 7.12e-11,
    },
    "conv_transpose/gather": {
        "call": 0.000208,
        "outputs": 2.6e-09,
        "flops": 9.44e-12,
        "flops_thin": 6.97e-11,
        "cl_runs": 0,
    },
    "conv_transpose/gemm": {
        "call": 0.000267,
        "outputs": 5.25e-10,
        "lowered": 1.09e-09,
        "gemm_flops": 5.86e-12,
        "gemm_flops_short": 9.32e-12,
        "gemm_flops_thin": 1.53e-11,
        "gemm_calls": 1.13e-05,
    },
    "conv_transpose/fft": {
        "call": 0.000209,
        "outputs": 3.59e-09,
        "fft_point_logs": 1.37e-11,
        "cmacs": 2.47e-10,
        "transforms": 3.06e-06,
        "points": 0,
    },
}

# GPU rows: a roofline per method (seconds per FLOP, per byte moved, per
# call), NOT fitted: no GPU was lent to the development machines. The rates
# are rough figures for an H100 running these simple kernels (FP32 ~60
# TFLOP/s peak, HBM ~3 TB/s; a naive direct kernel reaches a few percent of
# the peak, the 16x16 shared-memory GEMM ~10%, atomics cost ~3x a plain
# store); bench/gpu_bench.py measures them where a GPU exists.
GPU_FEATURES = ("call", "flops", "bytes")
SHIPPED_GPU: dict[str, dict[str, float]] = {
    "conv/direct": {"call": 2e-5, "flops": 1 / 2e12, "bytes": 1 / 1e12},
    "conv/gemm": {"call": 6e-5, "flops": 1 / 6e12, "bytes": 1 / 1e12},
    "conv/fft": {"call": 2e-4, "flops": 1 / 2e13, "bytes": 1 / 5e11},
    "conv_transpose/scatter": {"call": 3e-5, "flops": 1 / 7e11, "bytes": 1 / 1e12},
    "conv_transpose/gather": {"call": 3e-5, "flops": 1 / 2e12, "bytes": 1 / 1e12},
    "conv_transpose/gemm": {"call": 6e-5, "flops": 1 / 6e12, "bytes": 1 / 1e12},
    "conv_transpose/fft": {"call": 2e-4, "flops": 1 / 2e13, "bytes": 1 / 5e11},
}


def gpu_features(op: str, method: str, plan) -> dict[str, float]:
    """FLOPs and bytes moved by one GPU call (the FFT path: transform work)."""
    item = plan.dtype.itemsize
    ins = plan.batch * plan.c_in * _prod(plan.in_size)
    outs = plan.batch * plan.c_out * _prod(plan.out_size)
    wts = plan.c_out * (plan.c_in // plan.groups) * _prod(plan.kernel)
    moved = (ins + outs + wts) * item
    flops = float(plan.flops)
    if method == "gemm":  # the patch matrix is written and read once more
        moved += 2 * plan.batch * _prod(plan.out_size) * plan.c_in * _prod(plan.kernel) * item
    if method == "fft":
        lens = [plan.in_size[i] + sum(plan.padding[i]) for i in range(3)]
        m = _prod(lens)
        signals = plan.batch * (plan.c_in + plan.c_out) + wts // max(1, _prod(plan.kernel))
        flops = (
            5.0 * signals * m * max(1.0, float(np.log2(max(m, 2))))
            + 8.0 * plan.batch * plan.c_out * (plan.c_in // plan.groups) * m
        )
        moved += 4 * signals * m * item
    return {"call": 1.0, "flops": flops, "bytes": float(moved)}


_THIN = 16  # a GEMM with a dimension below this runs far below the BLAS peak
_SHORT_K = 96  # and one with a reduction shorter than this below it


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def features(op: str, method: str, plan) -> dict[str, float]:
    """Operation counts of one call of ``method`` on ``plan`` (see FEATURES)."""
    taps = _prod(plan.kernel)
    cg = plan.c_in // plan.groups
    og = plan.c_out // plan.groups
    outputs = plan.batch * plan.c_out * _prod(plan.out_size)
    flops = float(plan.flops)
    f: dict[str, float] = {"call": 1.0, "outputs": float(outputs)}
    kd, kh, kw = plan.kernel
    if method == "direct":
        # the row kernel runs over each output row once per (channel, kd, kh)
        # input row and per 8 taps of the row; the channels-last kernel does a
        # dot product of cg * kw contiguous values per (output, kd, kh)
        rows = cg < config.direct_channels_last_min
        strided = plan.stride[2] > 1
        f["flops_rows"] = flops if rows and not strided else 0.0
        f["flops_rows_strided"] = flops if rows and strided else 0.0
        f["row_passes"] = float(outputs * cg * kd * kh * -(-kw // 8)) if rows else 0.0
        f["flops_cl"] = 0.0 if rows else flops
        f["cl_runs"] = 0.0 if rows else float(outputs * kd * kh)
    elif method == "gemm":
        if op == "conv":
            pointwise = taps == 1 and plan.stride == (1, 1, 1) and not any(sum(p) for p in plan.padding)
            positions = plan.batch * _prod(plan.out_size)
            f["lowered"] = 0.0 if pointwise else float(positions * plan.c_in * taps)
            m, k = og, cg * taps
        else:  # the patch matrix is (Og * taps) x positions of the input, then col2im
            positions = plan.batch * _prod(plan.in_size)
            f["lowered"] = float(positions * plan.c_out * taps)
            m, k = og * taps, cg
        # GEMM FLOPs by how close to the BLAS peak they run: a dimension below
        # 16 ("thin"), a reduction K below 96 ("short"), else full speed
        thin = min(m, k) < _THIN
        short = not thin and k < _SHORT_K
        f["gemm_flops"] = flops if not (thin or short) else 0.0
        f["gemm_flops_short"] = flops if short else 0.0
        f["gemm_flops_thin"] = flops if thin else 0.0
        f["gemm_calls"] = float(plan.groups * max(1, plan.batch))
    elif method == "fft":
        from .cpu import fft

        f.update(fft.cost_features(plan))
        if op == "conv":
            del f["outputs"]
    elif method == "scatter":
        f["flops"] = flops
    elif method == "gather":
        thin = cg < config.direct_channels_last_min
        f["flops"] = 0.0 if thin else flops
        f["flops_thin"] = flops if thin else 0.0
        f["cl_runs"] = float(outputs * kd * kh)
    else:  # pragma: no cover - the table and FEATURES are kept in step (tested)
        raise KeyError(f"no cost features for {op}/{method}")
    if method != "fft":  # (the FFT counts are scaled already)
        scale = plan.dtype.itemsize / 4  # float64 and complex run ~2x, ~4x the float32 time
        f = {k: (v if k in ("call", "gemm_calls") else v * scale) for k, v in f.items()}
    return {name: f.get(name, 0.0) for name in FEATURES[op, method]}


def fingerprint() -> dict:
    """What the constants depend on: the CPU, its core count and the thread count."""
    from .cli import _cpu_name

    return {
        "cpu": _cpu_name(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
    }


def calibration_path() -> str:
    return os.path.join(config.cache_dir, "calibration.json")


_LOCK = threading.Lock()
_LOADED: dict = {}


def constants() -> dict[str, dict[str, float]]:
    """The constants in use: this machine's calibration if ``numbaconv
    calibrate`` stored one for it (same fingerprint), else the shipped ones."""
    path = calibration_path()
    with _LOCK:
        cached = _LOADED.get(path)
        if cached is not None:
            return cached
        table = {k: dict(v) for k, v in SHIPPED.items()}
        if os.path.exists(path):
            try:
                with open(path) as fh:
                    data = json.load(fh)
                if data.get("fingerprint") == fingerprint():
                    for key, consts in data["constants"].items():
                        if key in table:
                            table[key].update({k: float(v) for k, v in consts.items() if k in table[key]})
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                warnings.warn(
                    f"numbaconv: ignoring the unreadable calibration file {path} ({exc}); "
                    "run `numbaconv calibrate` to write a new one",
                    RuntimeWarning,
                    stacklevel=3,
                )
        _LOADED[path] = table
        return table


def forget_loaded() -> None:
    """Drop the loaded constants (after a calibration, or in tests)."""
    with _LOCK:
        _LOADED.clear()


def estimate(op: str, method: str, plan, device: str = "cpu") -> float:
    """Estimated seconds of one call of ``method`` on ``plan`` (on ``device``)."""
    if device == "cuda":
        g = SHIPPED_GPU[f"{op}/{method}"]
        return float(sum(g[k] * v for k, v in gpu_features(op, method, plan).items()))
    consts = constants()[f"{op}/{method}"]
    return float(sum(consts.get(k, 0.0) * v for k, v in features(op, method, plan).items()))


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


# Calibration cases: (op, input shape, weight shape, params), float32. A spread
# of channel counts, kernel sizes, strides, groups and dims so that each
# method's features vary independently; small enough that `numbaconv
# calibrate` takes a minute or two (plus compilation on first use).
CALIBRATION_CASES: tuple = (
    ("conv", (8, 64, 28, 28), (64, 64, 3, 3), dict(padding=1)),
    ("conv", (4, 3, 112, 112), (32, 3, 7, 7), dict(stride=2, padding=3)),
    ("conv", (8, 128, 28, 28), (32, 128, 1, 1), dict()),
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
)


# Idle time before each timed block: OpenBLAS's worker threads spin for up to
# ~0.2 s after a multi-threaded GEMM, and a prange kernel that meets them on
# these 2 cores ran up to 20x slower (an FFT conv took 20 ms instead of 1 ms
# 0.05-0.1 s after a matmul; see docs/performance.md)
REST_S = 0.25


def _block_best(fn, calls: int = 3, rest: float = REST_S) -> float:
    time.sleep(rest)
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(cases=CALIBRATION_CASES, progress=None, max_call_s: float = 2.0) -> dict:
    """Time every supported method on ``cases``, fit each method's constants
    and return ``{"fingerprint", "constants", "fit"}`` (``fit`` has each
    method's relative rms error and sample count). Methods slower than
    ``max_call_s`` per call on a case are timed once."""
    from . import api
    from .dispatch import rows_for

    rng = np.random.default_rng(0)
    samples: dict[str, list] = {}
    for i, (op, xs, ws, kw) in enumerate(cases):
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        fn = api.conv if op == "conv" else api.conv_transpose
        plan = _plan_of(op, xs, ws, kw)
        for r in rows_for(op):
            if r.supports(plan) is not None:
                continue
            call = lambda r=r, fn=fn, x=x, w=w, kw=kw: fn(x, w, method=r.name, **kw)  # noqa: E731
            t0 = time.perf_counter()
            call()  # compile and warm up
            first = time.perf_counter() - t0
            t = first if first > max_call_s else min(_block_best(call), _block_best(call))
            samples.setdefault(f"{op}/{r.name}", []).append((features(op, r.name, plan), t))
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


def _plan_of(op, xs, ws, kw):
    from .shapes import make_conv_plan, make_conv_transpose_plan

    make = make_conv_plan if op == "conv" else make_conv_transpose_plan
    return make(xs, ws, None, dtype=np.float32, **kw)


def save_calibration(result: dict, path: str | None = None) -> str:
    """Write a :func:`calibrate` result where :func:`constants` looks for it."""
    path = path or calibration_path()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + f".{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    forget_loaded()
    return path


def shipped_literal(result: dict) -> str:
    """A calibration's constants as the Python source of :data:`SHIPPED`."""
    lines = ["SHIPPED: dict[str, dict[str, float]] = {"]
    for key, consts in result["constants"].items():
        lines.append(f'    "{key}": {{')
        lines.extend(f'        "{name}": {value:.3g},' for name, value in consts.items())
        lines.append("    },")
    lines.append("}")
    return "\n".join(lines)
