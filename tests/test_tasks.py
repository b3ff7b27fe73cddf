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
