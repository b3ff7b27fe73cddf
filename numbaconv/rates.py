"""This machine's speed in the units the cost model counts in, so that the
constants fitted on the development machine carry to other CPUs.

The shipped constants (:data:`numbaconv.costs.SHIPPED`) are seconds per
unit *on the development machine*. Each feature a method counts is work of
one kind (:data:`UNIT_OF`): arithmetic on numbaconv's micro-kernels (``flop``:
FLOPs, FMAs, transformed values, micro-kernel blocks' accumulator values), arithmetic in NumPy's
BLAS (``gemm``: the GEMM method's products), memory traffic (``mem``: elements read,
copied or written), FFT work (``fft``) or per-call overhead in Python
(``call``). :func:`probe` measures this machine's rate of each kind in well
under a second: the micro-kernel's float32 FMAs on operands in L1 (all
threads; one small kernel, cached on disk), NumPy's float32 GEMM on
products shaped like a convolution's patch matrices (all threads), a 32 MiB
copy, a complex FFT, and an interpreted loop. The two
arithmetic rates are kept apart because they need not move together: on an
AMD Zen 5 host the micro-kernel ran at 1.3-2x NumPy's (OpenBLAS) GEMM
rate, where on the development machine the two were within 5%. On a machine without a
calibration of its own (``numbaconv calibrate``), :func:`scales` gives each
kind's ``development rate / this rate``, and the shipped constants are
multiplied by it: a machine with twice the GEMM rate gets half the
arithmetic constants. The rates are measured once per machine (fingerprint)
and kept in ``<cache_dir>/rates.json``; the development machine's own
fingerprint uses the shipped constants as they are.
"""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings

import numpy as np

from . import config
from .files import read_json, write_json_atomic
from .machine import block_best, fingerprint

UNITS = ("flop", "gemm", "mem", "fft", "call")

# The kind of work of each cost feature (every feature of every CPU row, tested).
UNIT_OF: dict[str, str] = {
    **dict.fromkeys(
        ("flops", "flops_px", "flops_px_1tap", "flops_cl", "point_flops", "cmacs", "transformed",
         "block_values"),
        "flop",
    ),
    **dict.fromkeys(("gemm_flops", "gemm_flops_short", "gemm_flops_thin"), "gemm"),
    **dict.fromkeys(("outputs", "inputs", "tile", "lowered", "lowered_rows", "points", "gathered"), "mem"),
    "fft_point_logs": "fft",
    **dict.fromkeys(("call", "phases", "gemm_calls", "transforms"), "call"),
    "winograd_s": "none",  # seconds estimated by the (already scaled) Winograd row
}  # fmt: skip

# probe() on the development machine when the constants were fitted (2 vCPUs
# of an AMD EPYC, Zen 4; the best of three probes around the two fits of the
# twenty-first session: this host's readings moved 10-30% between probes). Until the nineteenth session
# the constants were an Intel Emerald Rapids host's, whose "flop" rate was
# taken equal to its NumPy GEMM (the probe came later) and whose "gemm" rate
# was its fitted rate of the GEMM method's products.
SHIPPED_RATES: dict[str, float] = {
    "flop": 2.32e11,
    "gemm": 2e11,
    "mem": 3.98e10,
    "fft": 1.47e09,
    "call": 4.2e07,
}

# (M, K, N) of the products the "gemm" rate is read off: C_out x C_in * taps
# x positions of a 3x3 layer at 64 channels on 56x56, of one at 256 channels
# on 14x14, and of a 1x1 layer 256 -> 512 at 28x28 (geometric mean of rates)
GEMM_SHAPES = ((64, 576, 3136), (256, 2304, 196), (512, 256, 784))
SHIPPED_FINGERPRINT = {
    "cpu": "AMD EPYC",
    "arch": "znver4",
    "machine": "x86_64",
    "cpu_count": 2,
    "numba_threads": 2,
}

MAX_SCALE = 8.0  # a probe reading further than this from the development machine is not trusted further
_MAX_FILE_BYTES = 64 * 1024


def _best(fn, calls: int) -> float:
    fn()  # warm: first-touch pages, BLAS threads started
    return block_best(fn, calls, rest=0.0)


def _loop(n: int) -> int:
    d = [0] * 8
    for i in range(n):
        d[i & 7] = i
    return d[0]


def _gemm_rate() -> float:
    """NumPy's float32 GEMM FLOPs per second on :data:`GEMM_SHAPES` (all
    threads; geometric mean over the shapes, each the best of five)."""
    logs = []
    for m, k, n in GEMM_SHAPES:
        a = np.ones((m, k), np.float32)
        b = np.ones((k, n), np.float32)
        c = np.empty((m, n), np.float32)
        logs.append(np.log(2.0 * m * k * n / _best(functools.partial(np.matmul, a, b, out=c), 5)))
    return float(np.exp(np.mean(logs)))


def probe() -> dict[str, float]:
    """This machine's rates (per second): the micro-kernel's float32 FLOPs
    (:func:`numbaconv.cpu.microkernel.peak_rate`), float32 GEMM FLOPs (NumPy's BLAS
    on conv-shaped products, :func:`_gemm_rate`), bytes copied (32 MiB), FFT
    points x log2 (complex128, 2^16 points), interpreted loop steps. Each
    the best of a few runs (~0.3 s)."""
    from .cpu.microkernel import peak_rate  # numba: imported when first probed

    flop = peak_rate()
    gemm = _gemm_rate()
    time.sleep(0.05)  # BLAS threads spin for a while after a GEMM
    src = np.ones(4 * 2**20, np.float64)
    dst = np.empty_like(src)
    mem = 2.0 * src.nbytes / _best(lambda: np.copyto(dst, src), 5)
    z = np.ones(2**16, np.complex128)
    fft = 2**16 * 16 / _best(lambda: np.fft.fft(z), 5)
    steps = 20000
    call = steps / _best(lambda: _loop(steps), 5)
    return {"flop": flop, "gemm": gemm, "mem": mem, "fft": fft, "call": call}


_LOCK = threading.Lock()
_MEMO: dict = {}


def rates_path() -> str:
    return os.path.join(config.cache_dir, "rates.json")


def _stored(path: str, fp: dict) -> dict[str, float] | None:
    """The rates ``rates.json`` holds for the fingerprint ``fp``, or None
    (none, another machine's, or unreadable: warned)."""
    if not os.path.exists(path):
        return None
    try:
        data = read_json(path, _MAX_FILE_BYTES)
        if not (isinstance(data, dict) and data.get("fingerprint") == fp):
            return None
        if isinstance(data.get("rates"), dict) and set(data["rates"]) != set(UNITS):
            return None  # written by a version with other units: measured again
        found = {u: float(data["rates"][u]) for u in UNITS}
        if not all(np.isfinite(v) and v > 0 for v in found.values()):
            raise ValueError("rates must be positive numbers")
        return found
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        warnings.warn(
            f"numbaconv: ignoring the unreadable rates file {path} ({exc}); measuring again",
            RuntimeWarning,
            stacklevel=4,
        )
        return None


def _keep(fp: dict, found: dict[str, float]) -> None:
    try:
        write_json_atomic(rates_path(), {"fingerprint": fp, "rates": found}, indent=1)
    except OSError:
        pass  # a read-only cache directory: measured again by the next process


def rates() -> dict[str, float]:
    """This machine's :func:`probe`, from ``rates.json`` when it holds this
    machine's (same fingerprint), else measured now and stored."""
    fp = fingerprint()
    key = repr(sorted(fp.items()))
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        found = _stored(rates_path(), fp)
        if found is None:
            found = probe()
            _keep(fp, found)
        _MEMO[key] = found
        return found


def refresh() -> dict[str, float]:
    """Probe again and keep, per unit, the faster of this and the stored
    rate (``numbaconv bench`` and ``info`` do): a probe taken while other
    work loaded the cores (2 vCPUs shared with a test run measured 1.05e11
    FLOP/s against 1.86e11 alone) would otherwise steer the dispatcher on
    this machine for good. A best-of-runs time cannot beat the hardware, so
    the faster reading is the truer one."""
    fp = fingerprint()
    new = probe()
    with _LOCK:
        old = _stored(rates_path(), fp) or new
        found = {u: max(new[u], old[u]) for u in UNITS}
        _keep(fp, found)
        _MEMO[repr(sorted(fp.items()))] = found
    return found


def forget() -> None:
    """Drop the rates kept in this process (tests)."""
    with _LOCK:
        _MEMO.clear()


def is_development_machine() -> bool:
    """Whether this machine's fingerprint has :data:`SHIPPED_FINGERPRINT`'s
    values (its keys only: LLVM's CPU type was added to the fingerprint
    after the constants were fitted)."""
    here = fingerprint()
    return all(here.get(k) == v for k, v in SHIPPED_FINGERPRINT.items())


def scales() -> dict[str, float]:
    """Per unit, how much longer a unit of work takes here than on the
    development machine (1.0 everywhere on that machine's fingerprint;
    "none": counts already in seconds of another row's estimate)."""
    if is_development_machine():
        return dict.fromkeys(UNITS + ("none",), 1.0)
    here = rates()
    out = {u: float(np.clip(SHIPPED_RATES[u] / here[u], 1 / MAX_SCALE, MAX_SCALE)) for u in UNITS}
    return {**out, "none": 1.0}
