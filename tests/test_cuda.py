"""The GPU kernels' simulator tests (tests/cuda_sim), in a process of their
own: NUMBA_ENABLE_CUDASIM must be set before numba is imported. Also: the
import of numbaconv on this (CUDA-less) machine never loads numba.cuda."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import numbaconv as nc

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_kernels_under_the_cuda_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda_sim"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail


def test_import_does_not_touch_cuda():
    code = "import sys, numbaconv; print('numba.cuda' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "False" and out.stderr == ""


def test_cuda_status_says_why_here():
    """On this machine (no GPU, no numba-cuda) device='cuda' says why it cannot run."""
    usable, why = nc.cuda.status()
    if usable:  # a machine with a GPU: the simulator test above covers the kernels
        assert why
        return
    assert "numba-cuda" in why or "driver" in why
    with pytest.raises(ValueError, match="device='cuda' is not usable here"):
        nc.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 1, 1)), device="cuda")
    with pytest.raises(nc.UnsupportedMethodError, match="no conv method supports this case"):
        nc.choose_method("conv", (1, 1, 3, 3), (1, 1, 1, 1), device="cuda")
    e = nc.explain("conv", (1, 1, 3, 3), (1, 1, 1, 1), device="cuda")
    every = {r.name for r in nc.dispatch.rows("conv", "cuda")}
    assert e.choice.method == "none" and set(e.choice.unsupported) == every >= {
        "direct",
        "gemm",
        "fft",
        "winograd",
    }
    assert all(why in r for r in e.choice.unsupported.values())


def test_gpu_bench_says_why_without_a_gpu():
    usable, why = nc.cuda.status()
    if usable:  # a GPU machine: bench/gpu_bench.py is run there by hand (docs/gpu.md)
        return
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_bench.py"), "--case", "unet_up_2x2s2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "no usable GPU here" in proc.stderr and why in proc.stderr
