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
# calibrate.calibrate() run twice, the mean shipped (2026-12-04,
# twenty-first session, after Winograd's transforms got 10-25% faster: the
# constants of the nineteenth session priced Winograd 2.4x above its measured
# products, so auto ran direct at up to 1.7x Winograd's time on 3x3 layers
# of 32 channels and on 1-D k3 layers; the two fits agreed within 1-25% on
# the main features). On other machines they are scaled by the probed rates
# (numbaconv.rates). Regenerate after changing a kernel.
SHIPPED: dict[str, dict[str, float]] = {
    "conv/direct": {
        "call": 9.1e-05,
        "outputs": 4.7e-11,
        "inputs": 9.64e-12,
        "tile": 1.98e-10,
        "flops_px": 4.23e-12,
        "flops_px_1tap": 5.57e-12,
        "flops_cl": 4.63e-12,
        "block_values": 1.98e-11,
    },
    "conv/gemm": {
        "call": 1.89e-05,
        "outputs": 0,
        "lowered": 4e-10,
        "gemm_flops": 7.05e-12,
        "gemm_flops_short": 7.92e-12,
        "gemm_flops_thin": 1.29e-11,
        "gemm_calls": 1.63e-05,
    },
    "conv/fft": {
        "call": 0.000352,
        "fft_point_logs": 9.08e-11,
        "cmacs": 2.26e-10,
        "transforms": 2.79e-06,
        "points": 0,
    },
    "conv/winograd": {
        "call": 0.000121,
        "point_flops": 3.14e-12,
        "block_values": 5.09e-10,
        "transformed": 0,
        "gathered": 0,
        "outputs": 0,
    },
    "conv_transpose/scatter": {
        "call": 0.000198,
        "outputs": 9.69e-10,
        "flops": 7.87e-11,
    },
    "conv_transpose/gather": {
        "call": 4.92e-05,
        "phases": 3.02e-05,
        "winograd_s": 0.631,
        "outputs": 0,
        "inputs": 0,
        "tile": 2.41e-11,
        "flops_px": 6.49e-12,
        "flops_px_1tap": 1.27e-11,
        "flops_cl": 7.56e-12,
        "block_values": 0,
    },
    "conv_transpose/gemm": {
        "call": 0.000306,
        "outputs": 5.29e-10,
        "lowered": 1.1e-09,
        "gemm_flops": 7.47e-12,
        "gemm_flops_short": 8.36e-12,
        "gemm_flops_thin": 6.55e-13,
        "gemm_calls": 0,
    },
    "conv_transpose/fft": {
        "call": 0.000429,
        "outputs": 2.35e-09,
        "fft_point_logs": 3.34e-11,
        "cmacs": 2.13e-10,
        "transforms": 1.89e-06,
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
