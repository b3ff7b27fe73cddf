"""GPU kernels (numba-cuda), mirroring :mod:`numbaconv.cpu`.

Nothing here is imported by ``import numbaconv``: :func:`status` imports
``numba.cuda`` on first use, so a machine without CUDA (or without
numba-cuda) never touches the driver unless a GPU method is asked for.

One module per method, each the GPU twin of the CPU module of the same name
(the method table in :mod:`numbaconv.dispatch` has a row per method; every
module exposes ``supports``, ``cost_features`` (a roofline: FLOPs and bytes),
``workspace_bytes`` and ``run`` on device arrays in the canonical 5-D form):

- :mod:`.direct`: conv; a thread per output element, the input tile and the
  weights staged in shared memory
- :mod:`.gemm`: ``run`` / ``run_transpose``; an im2col kernel and a tiled
  shared-memory GEMM kernel, chunked to ``config.workspace_bytes``
- :mod:`.scatter`: the transposed op with ``cuda.atomic.add``
- :mod:`.gather`: the transposed op as a gather (the direct kernel; no atomics)
- :mod:`.fft`: ``run`` / ``run_transpose`` through cuFFT (CuPy), when installed
- :mod:`._common`: launch geometry, device tap maps, the fold of the
  transposed op's non-zero padding modes
"""

from __future__ import annotations

import functools
import importlib.util
import os


def simulated() -> bool:
    """Whether Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def status() -> tuple[bool, str]:
    """``(usable, why)``: whether GPU methods can run here, and if not, why."""
    if importlib.util.find_spec("numba_cuda") is None and not simulated():
        return False, "numba-cuda is not installed (pip install numbaconv[cuda])"
    try:
        from numba import cuda
    except Exception as exc:  # a broken install must not crash the CPU paths
        return False, f"numba.cuda could not be imported: {exc}"
    if simulated():
        return True, "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correct but very slow"
    try:
        if not cuda.is_available():
            return False, "numba-cuda is installed but no usable CUDA driver/GPU was found"
    except Exception as exc:
        return False, f"the CUDA driver check failed: {exc}"
    return True, "a CUDA GPU is available"


def require() -> None:
    """Raise a ValueError saying why when the GPU cannot be used."""
    usable, why = status()
    if not usable:
        raise ValueError(f"device='cuda' is not usable here: {why}")


def is_device_array(obj) -> bool:
    """A Numba device array or any object with ``__cuda_array_interface__``
    (CuPy arrays, PyTorch CUDA tensors). Never imports numba.cuda for plain
    host objects."""
    if hasattr(obj, "__cuda_array_interface__"):
        return True
    # Numba's own device arrays (the simulator's have no __cuda_array_interface__)
    return type(obj).__name__ in ("DeviceNDArray", "FakeCUDAArray", "MappedNDArray")
