"""The parallel region of the direct and Winograd paths (numbaconv/cpu/tasks.py):
every task runs exactly once, whatever the task and thread counts, with the
threads taking tasks from a shared counter; a failing task raises. And the
per-call machinery around it: the weight caches' byte compare."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from numbaconv.cpu import tasks


@numba.njit  # not cached: the thread id is a dynamic global
def _count_task(hits, who, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, t):
    hits[t] += 1  # one slot per task: no two threads write the same one
    who[t] = numba.get_thread_id()


@numba.njit
def _failing_task(hits, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, t):
    if t == 3:
        raise MemoryError("out of memory")
    hits[t] += 1


def _run(task, n, hits, who):
    z = np.zeros(1)
    tasks.parallel_tasks(task, n, hits, who, z, z, z, z, z, z, z, z, z, z, z)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, 257])
def test_every_task_once(n, threads):
    before = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        hits = np.zeros(n, dtype=np.int64)
        who = np.full(n, -1, dtype=np.int64)
        _run(_count_task, n, hits, who)
        assert np.array_equal(hits, np.ones(n, dtype=np.int64))
        assert (who >= 0).all() and (who < numba.get_num_threads()).all()
    finally:
        numba.set_num_threads(before)


def test_fetch_add_returns_the_value_before():
    @numba.njit
    def take(counter, k):
        out = np.empty(k, dtype=np.int64)
        for i in range(k):
            out[i] = tasks.fetch_add(counter, 2)
        return out

    counter = np.array([5], dtype=np.int64)
    assert take(counter, 4).tolist() == [5, 7, 9, 11]
    assert counter[0] == 13


def test_failing_task_raises_memory_error():
    hits = np.zeros(8, dtype=np.int64)
    with pytest.raises(MemoryError, match="_failing_task"):
        _run(_failing_task, 8, hits, np.zeros(1))
    assert hits[3] == 0 and hits.sum() == 7  # the others still ran


@pytest.mark.parametrize("count", [1, 3, 8, 15, 16, 1000])
def test_weight_cache_compares_every_byte(count):
    """The weight caches serve a kept value only for the same bytes: a change
    in any one byte (the last of a length compared as 8-byte words or as
    bytes) makes a new entry."""
    from numbaconv.common import WeightCache

    cache = WeightCache("weight_cache_bytes")
    w = np.arange(count, dtype=np.float32)
    made = []

    def make():
        made.append(1)
        return w.copy()

    first = cache.get(w, ("k",), make)
    assert cache.get(w.copy(), ("k",), make) is first and len(made) == 1
    for index in (0, count - 1):
        edited = w.copy()
        edited.view(np.uint8)[index * 4 + 3] ^= 1  # one bit of one byte
        assert cache.get(edited, ("k",), make) is not first
    assert len(made) == 3 if count > 1 else len(made) == 2


@pytest.mark.parametrize("memcmp", [True, False])
@pytest.mark.parametrize("nbytes", [(1 << 16) + 1, 1 << 18, 70001])
def test_large_weights_compare_every_byte(monkeypatch, memcmp, nbytes):
    """Past 64 KiB the bytes are compared by the C library's memcmp (or,
    without one, by NumPy): equal bytes are the same, one bit changed
    anywhere is not."""
    from numbaconv import common

    if not memcmp:
        monkeypatch.setattr(common, "_MEMCMP", None)
    elif common._MEMCMP is None:
        pytest.skip("no C library memcmp found by ctypes here")
    a = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    assert common._same_bytes(a, a.copy())
    for index in (0, nbytes // 2, nbytes - 1):
        b = a.copy()
        b[index] ^= 0x10
        assert not common._same_bytes(a, b) and not common._same_bytes(b, a)


def test_thread_count_follows_numba():
    """runtime.num_threads (Numba's C getter once its layer is up) reads what
    numba.set_num_threads set, as numba.get_num_threads does."""
    from numbaconv import runtime

    before = numba.get_num_threads()
    try:
        for count in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(count)
            assert runtime.num_threads() == numba.get_num_threads() == count
    finally:
        numba.set_num_threads(before)


def test_direct_path_keeps_bound_regions_per_setting(monkeypatch):
    """igemm._bound: the task regions and their addresses are made once per
    (phases, setting, array types): a repeated call looks none up; another
    thread count or workspace budget (other tasks) makes its own, and every
    result matches the reference."""
    import numbaconv as nc
    from numbaconv import config
    from numbaconv.cpu import igemm

    from .reference import conv_reference

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 8, 9, 11))
    w = rng.standard_normal((6, 8, 3, 3))
    ref = conv_reference(x, w, None, stride=[1, 1], pads=[(1, 1)] * 2, dilation=[1, 1], groups=1)
    looked_up = []
    address = igemm.task_address
    monkeypatch.setattr(igemm, "task_address", lambda task, a: looked_up.append(task) or address(task, a))
    igemm.clear_caches()
    before = numba.get_num_threads()
    try:
        for threads, budget, new in [(2, None, True), (2, None, False), (1, None, True), (1, 2**16, True)]:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
            looked_up.clear()
            with config.override(**({} if budget is None else {"workspace_bytes": budget})):
                got = nc.conv2d(x, w, padding=1, method="direct")
            assert bool(looked_up) == new or numba.config.NUMBA_NUM_THREADS == 1
            np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    finally:
        numba.set_num_threads(before)
        igemm.clear_caches()


def test_aligned_empty_starts_on_64_bytes():
    """tasks.aligned_empty: a task's workspace of exactly n elements of the
    given array's dtype, its data on a 64-byte boundary (Numba's np.empty
    gives 32), for every size and both float dtypes."""
    from numbaconv.cpu.tasks import aligned_empty
    from numbaconv.runtime import njit

    @njit
    def make(n, like):
        a = aligned_empty(n, like)
        a[:] = 1  # every element writable, none past n
        return a

    for dtype in (np.float32, np.float64):
        like = np.zeros(1, dtype)
        for n in (1, 7, 16, 100, 2113, 100_003):
            got = [make(n, like) for _ in range(4)]
            assert all(a.size == n and a.dtype == dtype for a in got)
            assert all(a.ctypes.data % 64 == 0 for a in got)
            assert all((a == 1).all() for a in got)


@numba.njit
def _borrowed_sum(a, lo):
    b = tasks.borrow(a)
    s = b[lo:]  # a slice of the borrowed view: the same memory
    s[0] += 1.0  # writes reach the caller's array
    return s.sum()


def test_borrow_is_a_view_without_a_reference():
    # tasks.borrow: the same data, shape and strides, and no reference
    # taken or dropped (the caller's array keeps one owner, its contents
    # and its writes)
    a = np.arange(12.0).reshape(3, 4)[:, 1:]  # non-contiguous: strides kept
    flat = np.arange(10.0)
    import sys

    before = sys.getrefcount(flat)
    assert _borrowed_sum(flat, 3) == np.arange(3.0, 10.0).sum() + 1.0
    assert flat[3] == 4.0 and sys.getrefcount(flat) == before

    @numba.njit
    def twice(x):
        y = tasks.borrow(x)
        return y[1, 2] + y[2, 0], y.shape, y.strides

    got, shape, strides = twice(a)
    assert got == a[1, 2] + a[2, 0] and shape == a.shape and strides == a.strides
