"""Every GPU kernel compiled to PTX for each dtype it takes (``cuda.compile_ptx``).

The simulator runs kernels as Python, so typing errors (a float64 literal in
a float32 kernel, an unsupported call) only show when NVVM compiles them.
This needs NVVM (the CUDA toolkit's libnvvm, e.g. /usr/local/cuda/lib or
``pip install nvidia-nvvm``) but no GPU or driver; where NVVM cannot be
found the test is skipped with that reason. Run it alone with
``pytest tests/test_cuda_ptx.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":  # pragma: no cover - the simulator process
    pytest.skip("PTX needs the real CUDA target, not the simulator", allow_module_level=True)


def _nvvm_or_skip():
    try:
        from numba import cuda, float32

        def k(a):
            a[0] = 1

        cuda.compile_ptx(k, (float32[:],), cc=(8, 0))
    except Exception as exc:  # no libnvvm here
        pytest.skip(f"NVVM is not available here ({type(exc).__name__}: {str(exc)[:120]})")


def _sigs():
    from numba import types

    from numbaconv.cuda import _common, direct, gather, gemm, scatter

    i64 = types.int64
    idx = types.Array(i64, 1, "A")

    def arr(dt, nd):
        return types.Array(dt, nd, "A")

    out = []
    for name in ("float32", "float64", "complex64", "complex128"):
        dt = _common.numba_type(np.dtype(name).str)
        a1, a2, a3, a5 = arr(dt, 1), arr(dt, 2), arr(dt, 3), arr(dt, 5)
        maps = (idx, idx, idx, idx)
        out += [
            (f"fill {name}", _common._fill_kernel, (a1, dt)),
            (f"set_nan {name}", _common._set_nan_kernel, (a5, types.Array(types.uint8, 4, "A"), dt)),
            (f"nonfinite {name}", _common._nonfinite_kernel, (a1, types.Array(types.int32, 1, "A"))),
            (f"fold {name}", _common._fold_kernel, (a5, a1, a5, idx, idx, idx, idx, idx, idx)),
            (f"direct {name}", direct.gather_conv_kernel(np.dtype(name).str, 256, 16, 8),
             (a5, a2, a1, a5, *maps, i64, i64, i64, i64)),
            (f"direct tiled {name}", direct.gather_conv_tiled_kernel(np.dtype(name).str, 16, 8),
             (a5, a2, a1, a5, *maps, i64, i64, i64, i64, i64, i64)),
            (f"to_gather_layout {name}", gather._to_gather_layout, (a5, a2, i64)),
            (f"add_bias {name}", scatter._add_bias, (a5, a1)),
            (f"gemm {name}", gemm.gemm_kernel(np.dtype(name).str, 16), (a2, a2, a2)),
            (f"im2col {name}", gemm._im2col, (a5, a2, i64, i64, *maps, i64, i64, i64, i64, i64, i64)),
            (f"store {name}", gemm._store, (a2, a3, a1, i64, i64)),
            (f"col2im {name}", gemm._col2im,
             (a2, a5, a1, i64, i64, i64, *maps, i64, i64, i64, i64, i64, i64)),
            (f"transposed_weight {name}", gemm._transposed_weight, (a5, a2, i64, i64)),
        ]  # fmt: skip
        if name.startswith("float"):  # atomics: real types only (supports() refuses complex)
            out.append((f"scatter {name}", scatter._scatter_kernel, (a5, a5, a5, *maps, i64)))
    return out


def test_every_kernel_compiles_to_ptx():
    _nvvm_or_skip()
    import re

    from numba import cuda

    compiled = []
    for label, kernel, sig in _sigs():
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))
        assert ".entry" in ptx or ".visible .func" in ptx, label
        if "float32" in label or "complex64" in label:  # no silent promotion to double
            assert not re.findall(r"\b(?:add|sub|mul|fma\.rn)\.f64\b", ptx), label
        compiled.append(label)
    assert len(compiled) == 4 * 13 + 2
