"""The command line and the on-disk kernel cache, in fresh processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

CACHE_PROBE = textwrap.dedent(
    """
    import json, time
    import numpy as np
    t0 = time.perf_counter()
    import numbaconv as nc
    x = np.ones((1, 16, 8, 8), np.float32); w = np.ones((4, 16, 3, 3), np.float32)
    y = nc.conv2d(x, w, padding=1)
    dt = time.perf_counter() - t0
    from numba.core.registry import CPUDispatcher
    from numbaconv.cpu import direct, gemm, transpose
    kernels = [f for m in (direct, gemm, transpose) for f in vars(m).values() if isinstance(f, CPUDispatcher)]
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
    print(json.dumps({"seconds": dt, "hits": hits, "misses": misses, "value": float(y[0, 0, 4, 4])}))
    """
)


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, check=True)


def test_info_json():
    data = json.loads(_run("-m", "numbaconv.cli", "info", "--json").stdout)
    assert data["numba_threads"] >= 1
    assert data["threading_layer"] in ("omp", "tbb", "workqueue")
    assert isinstance(data["cuda_usable"], bool) and data["cuda_reason"]


def test_bench_quick_json():
    rows = json.loads(
        _run("-m", "numbaconv.cli", "bench", "--case", "depthwise_3x3_c32", "--repeat", "1", "--json").stdout
    )
    # one row per method, then auto (with the method it chose)
    assert [r["method"] for r in rows] == ["direct", "gemm", "fft", "auto:direct"]
    assert all(r["case"] == "depthwise_3x3_c32" for r in rows)
    assert rows[0]["output_shape"] == [8, 32, 112, 112] and rows[0]["median_s"] > 0


def test_bench_transposed_case_runs_every_method():
    rows = json.loads(
        _run("-m", "numbaconv.cli", "bench", "--case", "unet_up_2x2s2", "--repeat", "1", "--json").stdout
    )
    assert [r["method"] for r in rows] == ["scatter", "gather", "gemm", "fft", "auto:gemm"]
    assert all(r["output_shape"] == [8, 32, 128, 128] for r in rows)
    errs = [r["max_rel_err_vs_peer"] for r in rows]
    assert all(e is None or e < 1e-5 for e in errs), errs


def test_second_process_loads_kernels_from_the_cache():
    """The first process may compile; the second must load every kernel from disk."""
    _run("-c", CACHE_PROBE)
    second = json.loads(_run("-c", CACHE_PROBE).stdout)
    assert second["value"] == 16 * 9
    assert second["misses"] == 0 and second["hits"] >= 1, second


def test_bench_signal_case_against_scipy():
    rows = json.loads(
        _run("-m", "numbaconv.cli", "bench", "--case", "signal2d_5x5_same", "--repeat", "1", "--json").stdout
    )
    assert [r["method"] for r in rows][:2] == ["direct", "fft"] and rows[-1]["method"].startswith("auto:")
    assert all(r["peer"] == "scipy" and r["peer_ratio"] > 0 for r in rows)
    assert all(r["max_rel_err_vs_peer"] < 1e-10 for r in rows)
