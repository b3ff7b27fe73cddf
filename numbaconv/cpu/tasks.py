"""A parallel region over tasks that calls the task function by its address.

A ``prange`` loop that calls an njit function links that function's module
into the region's and optimizes and compiles it again: for the direct path's
task body (every register-block shape of the micro-kernel) that doubled the
cold compile (a first ``conv2d`` 9.6 s, 5 s of it the region). Here the
region (:func:`run_tasks`, compiled once per argument types) receives the
task function's address as an integer and calls it through Numba's own
calling convention (:func:`call_task`), so the body is compiled once, in its
own cached kernel. The address is a run-time argument, so the region caches
on disk like any kernel. A task that fails (an allocation that raised) sets
a flag that :func:`parallel_tasks` turns into a ``MemoryError``.

Tasks are handed out dynamically: each thread takes the next task from a
shared counter (an atomic add) until none is left, instead of a fixed
contiguous share per thread (``prange``'s static schedule). On a shared
host a thread that loses its core for a while no longer holds up the call
with the rest of its share: the others take it.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from ..runtime import njit, num_threads
from .microkernel import Spec
from .winotile import Tile


@intrinsic
def call_task(typingctx, addr, args, err):
    """Call the njit function at ``addr`` (an int64 from :func:`task_address`)
    with the elements of the tuple ``args``; on an error status, ``err[0] = 1``."""
    if not isinstance(args, types.BaseTuple) or not isinstance(addr, types.Integer):
        return None
    argtys = list(args.types)

    def codegen(context, builder, signature, llargs):
        fnty = context.call_conv.get_function_type(types.none, argtys)
        fptr = builder.inttoptr(llargs[0], fnty.as_pointer())
        values = [builder.extract_value(llargs[1], i) for i in range(len(argtys))]
        status, _ = context.call_conv.call_function(builder, fptr, types.none, argtys, values)
        with builder.if_then(status.is_error, likely=False):
            flag = context.make_array(signature.args[2])(context, builder, llargs[2]).data
            builder.store(context.get_constant(types.int64, 1), flag)
        return context.get_dummy_value()

    return types.void(addr, args, err), codegen


@intrinsic
def borrow(typingctx, arr):
    """``arr`` as a view that holds no reference (no meminfo): passing it to
    inlined functions and slicing it then costs no atomic reference-count
    updates. For a task's arguments, which the caller holds for the whole
    call: both threads updating the count of a shared array (the packed
    weight, the input, the output) bounced its cache line between the cores
    at every micro-kernel block."""
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, signature, llargs):
        view = context.make_array(arr)(context, builder, llargs[0])
        view.meminfo = cgutils.get_null_value(view.meminfo.type)
        view.parent = cgutils.get_null_value(view.parent.type)
        return view._getvalue()

    return arr(arr), codegen


@intrinsic
def fetch_add(typingctx, counter, value):
    """``counter[0] += value`` atomically (an int64 array); the value before."""
    if not isinstance(counter, types.Array) or counter.dtype != types.int64:
        return None

    def codegen(context, builder, signature, llargs):
        data = context.make_array(signature.args[0])(context, builder, llargs[0]).data
        add = context.cast(builder, llargs[1], signature.args[1], types.int64)
        return builder.atomic_rmw("add", data, add, "monotonic")

    return types.int64(counter, value), codegen


@njit(parallel=True, cache=True)
def run_tasks(addr, tasks, workers, err, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12):
    """``task(a0, ..., a12, t)`` for every task ``t``, in parallel on
    ``workers`` threads, each taking the next task from a shared counter.
    (Thirteen arguments, not a tuple or star args: Numba types those element
    by element in Python, ~200 us a call; plain arguments take its fast
    path. ``workers`` from the caller: ``numba.get_num_threads()`` inside
    the kernel is a dynamic global, which Numba does not cache.)"""
    counter = np.zeros(1, dtype=np.int64)
    for _ in prange(workers):
        t = fetch_add(counter, 1)
        while t < tasks:
            call_task(addr, (a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, np.int64(t)), err)
            t = fetch_add(counter, 1)


@njit(inline="always")
def aligned_empty(n, like):
    """``n`` uninitialized elements of ``like``'s dtype starting on a 64-byte
    boundary, for a task's workspace. Numba's ``np.empty`` starts arrays on
    32 bytes: half the time every 64-byte vector load of a channels-last
    tile spanned two cache lines (a depthwise 3x3 layer's register blocks
    on a tile in L1 ran 1.45x slower on AMD Zen 4; whole calls, bound by
    their copies, showed no difference within this host's noise)."""
    raw = np.empty(n + 64 // like.itemsize, dtype=like.dtype)
    start = (64 - raw.ctypes.data % 64) % 64 // raw.itemsize
    return raw[start : start + n]


_ADDRESSES: dict = {}


def _key(args) -> tuple:
    # what Numba's type of each argument depends on, cheaply
    # (flags.num: contiguity, writeable, aligned and the rest as one int;
    # a microkernel.Spec or winotile.Tile is its own key: its type is fixed
    # per object)
    return tuple(
        (a.dtype, a.ndim, a.flags.num)
        if isinstance(a, np.ndarray)
        else a
        if isinstance(a, (Spec, Tile))
        else numba.typeof(a)
        for a in args
    )


def task_address(task, args) -> int:
    """The address of ``task`` compiled for ``args`` + an int64 task index
    (compiled, or loaded from Numba's cache, on first use)."""
    key = (task, _key(args))
    addr = _ADDRESSES.get(key)
    if addr is None:
        sig = tuple(numba.typeof(a) for a in args) + (types.int64,)
        task.compile(sig)
        cres = task.overloads[sig]
        addr = _ADDRESSES[key] = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
    return addr


def parallel_tasks(task, tasks: int, *args) -> None:
    """Run ``task(*args, t)`` for ``t`` in ``range(tasks)`` on Numba's threads
    (13 arguments before ``t``)."""
    run_at(task_address(task, args), task, tasks, *args)


def run_at(address: int, task, tasks: int, *args) -> None:
    """:func:`parallel_tasks` with the task's address already known
    (:func:`task_address` of these arguments' types: a caller that keeps it
    skips the type key, ~4 us a call)."""
    err = np.zeros(1, dtype=np.int64)
    workers = max(1, min(tasks, num_threads()))
    run_tasks(address, tasks, workers, err, *args)
    if err[0]:
        raise MemoryError(f"a task of {task.py_func.__name__} failed (out of memory)")
