"""The dispatcher's cost model: data and :func:`estimate`.

A method's estimated time is a sum of operation counts times per-machine
constants (seconds per unit), in the spirit of SciPy's ``choose_conv_method``.
The counts live with each method (its module's ``cost_features(plan)``, a
dict with fixed names); the constants live here, one set per table row
(``"op/method"``), in :data:`SHIPPED` (CPU, fitted on the development machine
by ``numbaconv calibrate``) and :data:`SHIPPED_GPU` (a roofline, not fitted).
``numbaconv calibrate`` (:mod:`numbaconv.calibrate`) refits every CPU row on
another machine and stores the result in the user cache directory
(``config.cache_dir``), used from then on by every process on that machine:
:func:`constants` returns that set when its fingerprint matches this machine.

Estimates are for a call in steady state: compiled kernels, and for the FFT
path the kernel spectrum cached (repeated calls with the same weights). The
FFT path also picks its tile sizes with the ``conv/fft`` constants, so a
calibration refits that choice too.
"""

from __future__ import annotations

import os
import threading
import warnings

from . import config, rates
from .files import read_json
from .machine import fingerprint

# Seconds per unit of each feature, fitted on the development machine (2 vCPUs
# of an AMD EPYC, Zen 4 `znver4`, float32) over calibrate.CASES with
# calibrate.calibrate() run twice, the mean shipped (2026-12-05,
# twenty-third session, after kept calls took ~35 us off every call and
# the GEMM path's small pieces stopped waiting for its thread pool; with
# seven batch-1 cases on small planes added and the GEMM path's lowered
# rows as a feature: auto took the GEMM path at 2x the direct path's time
# on a 3x3 layer on 7x7 planes, whose 7-wide rows the lowering copied at
# ~16 ns a row; the two fits agreed within 1-30% on the main features.
# Before: twenty-first session, after Winograd's transforms got faster).
# On other machines they are scaled by the probed rates (numbaconv.rates). Regenerate after changing a kernel.
SHIPPED: dict[str, dict[str, float]] = {
    "conv/direct": {
        "call": 8.61e-05,
        "outputs": 0,
        "inputs": 0,
        "tile": 1.47e-10,
        "flops_px": 4.31e-12,
        "flops_px_1tap": 5.66e-12,
        "flops_cl": 4.97e-12,
        "block_values": 0,
    },
    "conv/gemm": {
        "call": 5.05e-05,
        "outputs": 2.1e-10,
        "lowered": 2.7e-10,
        "lowered_rows": 1.47e-08,
        "gemm_flops": 5.33e-12,
        "gemm_flops_short": 7.17e-12,
        "gemm_flops_thin": 5.93e-12,
        "gemm_calls": 0,
    },
    "conv/fft": {
        "call": 0.000333,
        "fft_point_logs": 8.48e-11,
        "cmacs": 2.69e-10,
        "transforms": 2.34e-06,
        "points": 0,
    },
    "conv/winograd": {
        "call": 6.35e-05,
        "point_flops": 3.32e-12,
        "block_values": 5.6e-10,
        "transformed": 0,
        "gathered": 7.62e-12,
        "outputs": 0,
    },
    "conv_transpose/scatter": {
        "call": 0.000122,
        "outputs": 1.52e-09,
        "flops": 7.81e-11,
    },
    "conv_transpose/gather": {
        "call": 4.04e-05,
        "phases": 1.33e-05,
        "winograd_s": 1.23,
        "outputs": 0,
        "inputs": 0,
        "tile": 2.12e-12,
        "flops_px": 6.69e-12,
        "flops_px_1tap": 5.99e-12,
        "flops_cl": 5.71e-12,
        "block_values": 3.29e-10,
    },
    "conv_transpose/gemm": {
        "call": 9.32e-05,
        "outputs": 9.37e-11,
        "lowered": 1.31e-09,
        "lowered_rows": 7.68e-09,
        "gemm_flops": 6.34e-12,
        "gemm_flops_short": 1.05e-11,
        "gemm_flops_thin": 2.56e-12,
        "gemm_calls": 1.28e-05,
    },
    "conv_transpose/fft": {
        "call": 0.000445,
        "outputs": 1.44e-09,
        "fft_point_logs": 1.01e-11,
        "cmacs": 2.85e-10,
        "transforms": 1.55e-06,
        "points": 0,
    },
}

# GPU rows: a roofline per method (seconds per FLOP, per byte moved, per
# call), NOT fitted: no GPU was lent to the development machines. The rates
# are rough figures for an H100 running these simple kernels (FP32 ~60
# TFLOP/s peak, HBM ~3 TB/s; a naive direct kernel reaches a few percent of
# the peak, the 16x16 shared-memory GEMM ~10%, atomics cost ~3x a plain
# store); bench/gpu_bench.py measures them where a GPU exists.
SHIPPED_GPU: dict[str, dict[str, float]] = {
    "conv/direct": {"call": 2e-5, "flops": 1 / 2e12, "bytes": 1 / 1e12},
    "conv/gemm": {"call": 6e-5, "flops": 1 / 6e12, "bytes": 1 / 1e12},
    "conv/fft": {"call": 2e-4, "flops": 1 / 2e13, "bytes": 1 / 5e11},
    "conv/winograd": {"call": 8e-5, "flops": 1 / 2e12, "bytes": 1 / 1e12},
    "conv_transpose/scatter": {"call": 3e-5, "flops": 1 / 7e11, "bytes": 1 / 1e12},
    "conv_transpose/gather": {"call": 3e-5, "flops": 1 / 2e12, "bytes": 1 / 1e12},
    "conv_transpose/gemm": {"call": 6e-5, "flops": 1 / 6e12, "bytes": 1 / 1e12},
    "conv_transpose/fft": {"call": 2e-4, "flops": 1 / 2e13, "bytes": 1 / 5e11},
}


def per_dtype(features: dict[str, float], plan, fixed=("call",)) -> dict[str, float]:
    """Scale counts measured in float32 units by the item size (float64 and
    complex run ~2x, ~4x the float32 time), except the ``fixed`` per-call ones."""
    scale = plan.dtype.itemsize / 4
    return {k: (v if k in fixed else v * scale) for k, v in features.items()}


MAX_CALIBRATION_BYTES = 4 * 2**20  # a calibration is ~100 KiB; a larger file is not one


def calibration_path() -> str:
    return os.path.join(config.cache_dir, "calibration.json")


_LOCK = threading.Lock()
_LOADED: dict = {}  # cache_dir -> the constants (read each call: no path join or lock when kept)


def constants() -> dict[str, dict[str, float]]:
    """The CPU constants in use: this machine's calibration if ``numbaconv
    calibrate`` stored one for it (same fingerprint), else the shipped ones
    in this machine's units (:func:`numbaconv.rates.scales`: each feature's
    constant times the development machine's rate over this one's, for its
    kind of work)."""
    where = config.cache_dir
    table = _LOADED.get(where)
    if table is not None:
        return table
    path = calibration_path()
    with _LOCK:
        cached = _LOADED.get(where)
        if cached is not None:
            return cached
        table = {k: dict(v) for k, v in SHIPPED.items()}
        calibrated: set = set()
        if os.path.exists(path):
            try:
                data = read_json(path, MAX_CALIBRATION_BYTES)
                if not isinstance(data, dict) or not isinstance(data.get("constants"), dict):
                    raise ValueError("not a numbaconv calibration")
                if data.get("fingerprint") == fingerprint():  # else another machine's: not used
                    for key, consts in data["constants"].items():
                        if key in table:
                            table[key].update({k: float(v) for k, v in consts.items() if k in table[key]})
                            calibrated.add(key)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
                warnings.warn(
                    f"numbaconv: ignoring the unreadable calibration file {path} ({exc}); "
                    "run `numbaconv calibrate` to write a new one",
                    RuntimeWarning,
                    stacklevel=3,
                )
        if len(calibrated) < len(table):  # the shipped rows in this machine's units
            scale = rates.scales()
            for key, consts in table.items():
                if key not in calibrated:
                    for name in consts:
                        consts[name] *= scale[rates.UNIT_OF[name]]
        _LOADED[where] = table
        return table


def source() -> str:
    """Which constants :func:`constants` uses here, in words (``numbaconv info``)."""
    path = calibration_path()
    try:
        data = read_json(path, MAX_CALIBRATION_BYTES) if os.path.exists(path) else None
    except (OSError, ValueError):
        data = None
    if isinstance(data, dict) and data.get("fingerprint") == fingerprint():
        return f"this machine's calibration ({path})"
    scale = rates.scales()
    if all(v == 1.0 for v in scale.values()):
        return "shipped (fitted on this CPU type)"
    shown = ", ".join(f"{u} x{v:.2f}" for u, v in scale.items())
    return f"shipped, scaled to this machine's measured rates ({shown}); `numbaconv calibrate` fits its own"


def forget_loaded() -> None:
    """Drop the loaded constants (after a calibration, or in tests)."""
    with _LOCK:
        _LOADED.clear()
        _FORGOTTEN[0] += 1


_FORGOTTEN = [0]  # forget_loaded() calls so far: part of api's kept-call key


def row_constants(key: str, device: str = "cpu") -> dict[str, float]:
    """The constants of one table row (``"op/method"``) on ``device``."""
    return SHIPPED_GPU[key] if device == "cuda" else constants()[key]


def estimate(key: str, features: dict[str, float], device: str = "cpu") -> float:
    """Estimated seconds of one call: ``features`` (a row's ``cost_features``)
    times the row's constants. A feature without a constant is an error: the
    row's module and its constants must be kept in step (tested)."""
    consts = row_constants(key, device)
    return float(sum(consts[k] * v for k, v in features.items()))
