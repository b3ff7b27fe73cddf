"""GPU kernels under Numba's CUDA simulator (run by tests/test_cuda.py in a
process of their own with NUMBA_ENABLE_CUDASIM=1, set before numba loads).

The launch geometry is shrunk so that tiny shapes span several blocks, chunks
and GEMM tiles, with ragged edges."""

from __future__ import annotations

import os

import pytest

from numbaconv import config

assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run these through tests/test_cuda.py"


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    monkeypatch.setattr(config, "cuda_block_2d", (4, 2))
    monkeypatch.setattr(config, "cuda_chunk", 5)
    monkeypatch.setattr(config, "cuda_threads", 32)
    monkeypatch.setattr(config, "cuda_max_blocks", 3)
    monkeypatch.setattr(config, "cuda_tile", 4)
