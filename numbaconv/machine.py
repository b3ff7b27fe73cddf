"""Machine facts and timing: the ground floor every other layer may import.

What the cost constants and the autotune cache depend on (:func:`fingerprint`),
the CPU's name, the versions and threading facts ``numbaconv info`` prints, and
the one block timer that calibration, ``explain(measure=True)``,
``method="measure"`` and the bench share (:func:`block_best`, :data:`REST_S`).
Imports nothing from numbaconv but :mod:`numbaconv.config`.
"""

from __future__ import annotations

import functools
import os
import platform
import time

import numba

from . import config

# Idle time before each timed block: OpenBLAS's worker threads spin for up to
# ~0.2 s after a multi-threaded GEMM, and a prange kernel that meets them on
# these 2 cores ran up to 20x slower (an FFT conv took 20 ms instead of 1 ms
# 0.05-0.1 s after a matmul; see docs/performance.md)
REST_S = 0.25


def block_best(fn, calls: int = 3, rest: float = REST_S) -> float:
    """Best of ``calls`` back-to-back calls of ``fn`` (seconds), after ``rest``
    seconds idle: OpenBLAS's and OpenMP's worker threads spin after a call and
    would slow whatever is timed next (PyTorch's 3x3 conv measured 9.5 ms
    right after numbaconv's GEMM path, 5.1 ms after a 0.1 s pause)."""
    time.sleep(rest)
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def cpu_arch() -> str:
    """LLVM's name for this CPU (``znver3``, ``znver4``, ``sapphirerapids``,
    ...): virtual machines often report one model name ("AMD EPYC") for
    CPU generations whose vector units differ."""
    import llvmlite.binding as llb

    return llb.get_host_cpu_name()


def fingerprint() -> dict:
    """What the cost constants depend on: the CPU (model name and LLVM's CPU
    type), its core count and the thread count."""
    return {
        "cpu": cpu_name(),
        "arch": cpu_arch(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
    }


def threading_layer() -> str:
    """Numba's threading layer (a trivial parallel kernel runs first if none has)."""
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: run a trivial one
        from numba import njit, prange

        @njit(parallel=True)
        def _touch(n):
            s = 0
            for i in prange(n):
                s += i
            return s

        _touch(4)
        return numba.threading_layer()


def info() -> dict:
    """Versions, CPU, threads, threading layer, CUDA status and cache directories."""
    import numpy
    import scipy

    from . import __version__
    from .cuda import status

    usable, why = status()
    return {
        "numbaconv": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "cpu": f"{cpu_name()} ({cpu_arch()})",
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": threading_layer(),
        "cuda_usable": usable,
        "cuda_reason": why,
        "numbaconv_cache_dir": config.cache_dir,
        "numba_cache_dir": numba.config.CACHE_DIR or "(next to the package sources, __pycache__)",
        "workspace_bytes": config.workspace_bytes,
    }
