"""numbaconv.signal.convolve beside scipy.signal.convolve (both method="auto"),
float64, on the signal workloads, same process.

    pytest bench/test_bench_signal.py --benchmark-enable --benchmark-group-by=param:case
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal as ss

from numbaconv import signal as ns
from numbaconv.workloads import WORKLOADS

CASES = [w for w in WORKLOADS if w[1] == "signal"]


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    return {name: (rng.standard_normal(xs), rng.standard_normal(ws)) for name, _op, xs, ws, _kw in CASES}


@pytest.mark.parametrize("case", [c[0] for c in CASES])
@pytest.mark.parametrize("impl", ["numbaconv", "scipy"])
def test_signal_convolve(benchmark, arrays, case, impl):
    _name, _op, _xs, _ws, kw = next(c for c in CASES if c[0] == case)
    a, b = arrays[case]
    benchmark.group = case
    fn = ns.convolve if impl == "numbaconv" else ss.convolve
    fn(a, b, **kw)  # compile / load from cache first
    benchmark(lambda: fn(a, b, **kw))
