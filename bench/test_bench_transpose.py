"""Every transposed method of the dispatcher's table beside PyTorch CPU, same process.

    pytest bench/test_bench_transpose.py --benchmark-enable --benchmark-group-by=param:case

Each transposed workload of ``numbaconv.workloads`` has one benchmark per method
(``scatter``, ...) and ``torch`` in one group (float32, PyTorch with 2 threads).
"""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import dispatch
from numbaconv.workloads import WORKLOADS

CASES = [w for w in WORKLOADS if w[1] == "conv_transpose"]

try:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
except ImportError:  # pragma: no cover
    torch = None


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return {
        name: (rng.standard_normal(xs).astype(np.float32), rng.standard_normal(ws).astype(np.float32))
        for name, _op, xs, ws, _kw in CASES
    }


@pytest.mark.parametrize("case", [c[0] for c in CASES])
@pytest.mark.parametrize("impl", [r.name for r in dispatch.rows("conv_transpose")] + ["torch"])
def test_conv_transpose(benchmark, arrays, case, impl):
    _name, _op, _xs, ws, kw = next(c for c in CASES if c[0] == case)
    x, w = arrays[case]
    benchmark.group = case
    if impl == "torch":
        if torch is None:
            pytest.skip("torch not installed")
        fn = {3: F.conv_transpose1d, 4: F.conv_transpose2d, 5: F.conv_transpose3d}[len(ws)]
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        benchmark(lambda: fn(tx, tw, **kw))
    else:
        nc.conv_transpose(x, w, method=impl, **kw)  # compile / load from cache first
        benchmark(lambda: nc.conv_transpose(x, w, method=impl, **kw))
