"""The parallel region of the direct and Winograd paths (numbaconv/cpu/tasks.py):
every task runs exactly once, whatever the task and thread counts, with the
threads taking tasks from a shared counter; a failing task raises."""

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
