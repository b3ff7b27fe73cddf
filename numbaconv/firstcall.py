"""First calls while the kernels compile: a NumPy result now, the kernels in a thread.

A CPU kernel compiles once per signature (2-5 s for a parallel one), then
loads from Numba's on-disk cache in later processes. Without a cache the
first call of a process waited for that compile (a first ``conv2d`` 4-5 s,
``numbaconv.signal`` and ``numbaconv.ndimage`` 6-7 s on a 2-core Zen 4).
With ``config.compile_in_background`` (the default) a call whose method
``auto`` chose (``method="auto"``, or the SciPy front-ends' own auto:
:func:`automatic`) and which has not yet run in this process is answered at
once by :func:`numpy_conv` (per dim the input position of each output and
tap, folded by the padding mode, then one BLAS matrix product per group:
NumPy only, nothing to compile), while a thread runs the chosen method once
on the same arrays (its result dropped) so that its kernels compile, or load
from the cache, and are kept. Calls made before that thread ends are
answered the same way; the later ones run the method. The thread is not a
daemon: a script that ends at once waits for it, and the cache is then
warm for the next process (``runtime.split_run`` runs its pieces itself
once the interpreter's shutdown refuses new thread-pool work). It runs in
the caller's context (its ``config.override`` settings), and a fork waits
for it: a child forked while it compiled would hold Numba's compiler lock
with no thread to release it.

Only where that pays and is safe: a real or complex plan on the CPU, a
conv in any padding mode or a transposed conv with zero padding, with the
patch matrix (:func:`patch_bytes`) within ``config.workspace_bytes``
(larger cases compile in the caller, as before). The values are the conv's
within the direct path's test bound (the sums in BLAS's order), so two calls
may differ in the last bits; calls that force a method, ``"measure"``, the
GPU and ``numbaconv bench`` never come here, and :func:`numbaconv.explain`
says when a call would. ``NUMBACONV_COMPILE_IN_BACKGROUND=0`` (or
``config.compile_in_background = False``) turns it off.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading

import numpy as np

from . import config, runtime
from .shapes import fold_index, gather_table

_READY: set = set()  # keys whose method has run in this process (or failed to)
_RUNNING: dict = {}  # key -> the thread preparing it
_LOCK = threading.Lock()
STATS = {"numpy": 0, "started": 0}  # calls answered here, threads started (tests read them)


def _before_fork() -> None:
    # a fork while a thread compiles would leave the child Numba's compiler
    # lock held by a thread it does not have (its first compile would hang):
    # the fork waits for the threads (a minute at most)
    current = threading.current_thread()
    for thread in list(_RUNNING.values()):
        if thread is not current:
            thread.join(60)


def _forget_threads() -> None:
    # a forked child has none of its parent's threads: it prepares its own
    _RUNNING.clear()


os.register_at_fork(before=_before_fork, after_in_child=_forget_threads)


def patch_bytes(plan) -> int:
    """Bytes of :func:`numpy_conv`'s patch matrix (every tap of every output
    pixel, per input channel)."""
    taps = int(np.prod(plan.kernel))
    return plan.batch * plan.c_in * taps * int(np.prod(plan.out_size)) * plan.dtype.itemsize


def key(op: str, plan, method: str) -> tuple:
    """What a prepared method is kept under: the op, the method's name, the dtype."""
    return (op, method, plan.dtype.str)


def wanted(op: str, plan, method: str) -> bool:
    """Whether a call of the method named ``method`` that ``method="auto"`` (or a front-end's own
    auto, :func:`automatic`) chose is answered here (see the module doc)."""
    return (
        config.compile_in_background
        and plan.dtype.kind in "fc"
        and (op == "conv" or all(plan.mode(i) == "zeros" for i in range(3)))
        and key(op, plan, method) not in _READY
        and 0 < patch_bytes(plan) <= config.workspace_bytes  # empty results: no kernel runs anyway
    )


_AUTOMATIC: contextvars.ContextVar = contextvars.ContextVar("numbaconv_automatic_choice", default=False)


@contextlib.contextmanager
def automatic():
    """The calls in this block (this thread or task) run a method that the
    caller's own ``auto`` chose (numbaconv.signal, numbaconv.ndimage): they
    may be answered here as a ``method="auto"`` call is."""
    token = _AUTOMATIC.set(True)
    try:
        yield
    finally:
        _AUTOMATIC.reset(token)


def automatic_choice() -> bool:
    """Inside :func:`automatic`."""
    return _AUTOMATIC.get()


def _input_index(plan, i: int) -> np.ndarray:
    """``[output, tap]``: the input position each output of dim ``i`` reads
    at each tap (-1: a zero)."""
    k, s, d, lo = plan.kernel[i], plan.stride[i], plan.dilation[i], plan.padding[i][0]
    if plan.op == "conv_transpose":  # the input i with i * s + tap * d - lo == output
        return gather_table(plan.out_size[i], k, s, d, lo, plan.in_size[i])
    pos = np.arange(plan.out_size[i])[:, None] * s + np.arange(k)[None, :] * d - lo
    return fold_index(pos, plan.in_size[i], plan.mode(i))


def numpy_conv(plan, x5: np.ndarray, w5: np.ndarray, b1: np.ndarray | None) -> np.ndarray:
    """The conv (or transposed conv) of canonical 5-D arrays in NumPy: per
    spatial dim the input position of each (output, tap) pair (the padding
    mode's fold, ``shapes.fold_index``; the transposed op's gather,
    ``shapes.gather_table``; a zero where they say -1), then one matrix
    product per group over the input channels x taps. Returns the 5-D result
    in the plan's dtype."""
    x = x5
    for i in range(3):
        idx = _input_index(plan, i)
        axis = 2 + 2 * i  # (N, C, Do, Kd, Ho, Kh, Wo, Kw) once the three dims are done
        x = np.take(x, np.maximum(idx, 0), axis=axis)
        if (idx < 0).any():  # zeros there, not a masked product (NaN * 0 is NaN)
            shape = [1] * x.ndim
            shape[axis], shape[axis + 1] = idx.shape
            x = np.where((idx >= 0).reshape(shape), x, x.dtype.type(0))
    g = plan.groups
    cg, og = plan.c_in // g, plan.c_out // g
    n, (od, oh, ow) = plan.batch, plan.out_size
    cols = x.reshape(n, g, cg, od, plan.kernel[0], oh, plan.kernel[1], ow, plan.kernel[2])
    taps = int(np.prod(plan.kernel))
    cols = cols.transpose(1, 2, 4, 6, 8, 0, 3, 5, 7).reshape(g, cg * taps, n * od * oh * ow)
    if plan.op == "conv_transpose":  # (C_in, C_out / groups, taps): per group (og, cg x taps)
        w = w5.reshape(g, cg, og, taps).transpose(0, 2, 1, 3).reshape(g, og, cg * taps)
    else:
        w = w5.reshape(g, og, cg * taps)
    y = np.matmul(w, cols)  # (g, og, n * pixels)
    y = y.reshape(plan.c_out, n, od, oh, ow).transpose(1, 0, 2, 3, 4)
    if b1 is not None:
        y = y + b1.reshape(1, -1, 1, 1, 1)
    return np.ascontiguousarray(y, dtype=plan.dtype)


def run(op: str, plan, method: str, x5, w5, b1, prepare) -> np.ndarray:
    """:func:`numpy_conv`'s result, the thread that runs ``prepare()`` (the
    method once, its result dropped) started unless one is running."""
    k = key(op, plan, method)
    with _LOCK:
        if k not in _RUNNING and k not in _READY:
            # in the caller's context: its config.override settings pick the same kernels
            context = contextvars.copy_context()
            thread = threading.Thread(
                target=context.run, args=(_prepare, k, prepare), name="numbaconv-compile"
            )
            _RUNNING[k] = thread
            STATS["started"] += 1
            thread.start()
    STATS["numpy"] += 1
    return numpy_conv(plan, x5, w5, b1)


def _prepare(k, prepare) -> None:
    try:
        with runtime.kernel_section():
            prepare()
    except Exception:  # the next call runs the method in the caller (and raises there)
        pass
    finally:
        with _LOCK:
            _READY.add(k)
            _RUNNING.pop(k, None)


def wait(timeout: float | None = None) -> bool:
    """Wait for the kernels being prepared; True when none is left."""
    for thread in list(_RUNNING.values()):
        thread.join(timeout)
    return not _RUNNING


def forget() -> None:
    """Forget which methods ran (tests: the next auto calls come here again)."""
    wait()
    _READY.clear()
    FORGOTTEN[0] += 1


FORGOTTEN = [0]  # forget() calls so far: part of the key numbaconv.api keeps calls under
