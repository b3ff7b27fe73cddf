"""What Numba's threading layers allow, enforced around every CPU kernel call.

- **Threads**: the ``omp`` and ``tbb`` layers take parallel kernels from
  several Python threads at once; ``workqueue`` (Numba's fallback where
  neither OpenMP nor TBB loads) aborts the process when two threads launch
  one. :func:`kernel_section` serializes the calls under ``workqueue``, and
  before the first parallel kernel has chosen a layer.
- **read-only installs**: :func:`njit` is ``numba.njit``, except that where
  no on-disk cache location is writable (the package directory, the user
  cache, ``NUMBA_CACHE_DIR``) a ``cache=True`` kernel compiles without the
  cache, with one warning that says how to enable it, instead of failing.
- **fork**: GNU OpenMP cannot run in a process forked after its parent
  started OpenMP threads (Numba terminates such a child at its first
  parallel kernel). A child in that state gets a :class:`ForkedOpenMPError`
  that names the fixes (the 'spawn' or 'forkserver' start method, or Numba's
  fork-safe ``tbb`` layer) before any kernel runs. The ``tbb`` and
  ``workqueue`` layers are fork-safe. Other fork hazards (numbaconv's own
  thread pool) are reset in the child by their modules
  (``os.register_at_fork``).

Ground floor: imports nothing from numbaconv.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numba
from numba.np.ufunc import parallel as _parallel  # imported by numba itself

_SERIAL = threading.RLock()
_FORKED_AFTER_OPENMP = False


class ForkedOpenMPError(RuntimeError):
    """numbaconv was called in a child forked after its parent used GNU OpenMP."""


_NO_CACHE_WARNED = False


def njit(*args, **kwargs):
    """``numba.njit`` (same arguments); a ``cache=True`` kernel that Numba
    cannot cache anywhere ("no locator available") compiles without the
    on-disk cache instead, and the first such kernel warns once."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return numba.njit(args[0])

    def decorate(fn):
        try:
            return numba.njit(*args, **kwargs)(fn)
        except RuntimeError as exc:
            if not kwargs.get("cache") or "no locator available" not in str(exc):
                raise
            _warn_no_cache()
            return numba.njit(*args, **{**kwargs, "cache": False})(fn)

    return decorate


def _warn_no_cache() -> None:
    global _NO_CACHE_WARNED
    if _NO_CACHE_WARNED:
        return
    _NO_CACHE_WARNED = True
    warnings.warn(
        "numbaconv: Numba finds no writable cache directory (the package directory is read-only and so "
        "is the user cache), so numbaconv's kernels compile in every new process (seconds per kernel). "
        "Set NUMBA_CACHE_DIR to a writable directory to keep them (and NUMBACONV_CACHE_DIR for "
        "numbaconv's own files)",
        RuntimeWarning,
        stacklevel=4,
    )


def threading_layer() -> str | None:
    """The layer Numba chose, or None before the first parallel kernel ran."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


def num_threads() -> int:
    """Numba's thread count (``numba.get_num_threads()``), read through
    Numba's C getter once its threading layer is up (the public function
    re-enters the layer's start-up locks on every call: 0.7 vs 0.12 us, read
    several times a call), and without starting the layer when no parallel
    kernel has run yet (then nobody can have called ``numba.set_num_threads``
    either): a process that only ran the GEMM path stays fork-safe."""
    getter = getattr(_parallel, "_get_num_threads", None)
    if getattr(_parallel, "_is_initialized", False) and getter is not None:
        count = getter()
        if count > 0:
            return count
        return numba.get_num_threads()
    if threading_layer() is None:
        return numba.config.NUMBA_NUM_THREADS
    return numba.get_num_threads()


def _gnu_openmp() -> bool:
    try:
        from numba.np.ufunc import omppool

        return omppool.openmp_vendor == "GNU"
    except ImportError:  # pragma: no cover - no OpenMP pool built
        return False


def _after_fork_in_child() -> None:
    global _FORKED_AFTER_OPENMP, _SERIAL
    _SERIAL = threading.RLock()  # a lock held by another thread at fork would never be released
    if threading_layer() == "omp" and _gnu_openmp():
        _FORKED_AFTER_OPENMP = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def check_fork() -> None:
    """Raise :class:`ForkedOpenMPError` in a child forked after its parent used GNU OpenMP."""
    if _FORKED_AFTER_OPENMP:
        raise ForkedOpenMPError(
            "numbaconv cannot run its parallel kernels in this process: it was forked (multiprocessing's "
            "default 'fork' start method on Linux, ProcessPoolExecutor, DataLoader workers) after the "
            "parent process ran them on Numba's OpenMP threading layer, and GNU OpenMP cannot run in such "
            "a child (Numba would terminate it). Start the workers with "
            "multiprocessing.get_context('spawn') or 'forkserver' (ProcessPoolExecutor(mp_context=...), "
            "DataLoader(multiprocessing_context='spawn')), or install TBB (pip install tbb) so that Numba "
            "uses its fork-safe 'tbb' threading layer (NUMBA_THREADING_LAYER=tbb)"
        )


@contextlib.contextmanager
def kernel_section():
    """Around a call that runs parallel kernels: the fork check, then the
    calls serialized unless the layer is known to be thread-safe."""
    check_fork()
    if threading_layer() in ("omp", "tbb"):
        yield
        return
    with _SERIAL:
        yield


_POOL: dict[int, ThreadPoolExecutor] = {}
# a forked child inherits the pools but not their threads: it would wait forever
os.register_at_fork(after_in_child=_POOL.clear)


# below this many elements of work a split_run runs in the calling thread:
# handing pieces to the pool's threads and waiting for them took ~55 us a
# call on a 2-vCPU host (AMD Zen 4), about what 1e5 elements of a copy take
# on one core (a 3x3 layer on 7x7 planes went through the GEMM path in 450
# us, 3x its estimate, most of it waiting for the pool)
SPLIT_MIN_WORK = 1 << 17


def split_run(kernel, total: int, *args, work: int | None = None) -> None:
    """Run ``kernel(*args, start, stop)`` over ``[0, total)`` split across
    :func:`num_threads` Python threads (the kernels are ``nogil`` njit
    functions), one contiguous piece per thread; in the calling thread where
    ``work`` (the elements the whole run reads or writes) is below
    :data:`SPLIT_MIN_WORK`.

    Not a prange: numba's OpenMP workers spin for milliseconds after a
    parallel region and starve the BLAS threads of a GEMM that follows (a
    6 ms GEMM took 10.6 ms right after a tiny prange kernel here), and a
    parallel region compiles in seconds more than the same loop here.
    """
    nt = max(1, min(num_threads(), total))
    if nt == 1 or (work is not None and work < SPLIT_MIN_WORK):
        kernel(*args, 0, total)
        return
    pool = _POOL.get(nt)
    if pool is None:
        pool = _POOL[nt] = ThreadPoolExecutor(max_workers=nt, thread_name_prefix="numbaconv")
    step = -(-total // nt)
    futures, inline = [], []
    for a in range(0, total, step):
        try:
            futures.append(pool.submit(kernel, *args, a, min(a + step, total)))
        except RuntimeError:  # the interpreter is shutting down (a firstcall thread): here, in turn
            inline.append(a)
    for a in inline:
        kernel(*args, a, min(a + step, total))
    for f in futures:
        f.result()
