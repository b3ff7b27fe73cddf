"""Settings in one place (tests patch these module attributes).

``workspace_bytes``
    Upper bound on the extra working memory one call may allocate for its
    workspaces (layout copies, patch matrices), default 64 MiB. Settable
    globally (``numbaconv.config.workspace_bytes = ...``), through the
    ``NUMBACONV_WORKSPACE_BYTES`` environment variable, or with
    :func:`override` for a block of code.
``cache_dir``
    Where numbaconv keeps its own on-disk state (autotune results,
    calibration): ``NUMBACONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/numbaconv``,
    else ``~/.cache/numbaconv``. Numba's compiled-kernel cache is separate
    (``NUMBA_CACHE_DIR``).
``fft_kernel_cache_bytes``
    The FFT path keeps the kernel spectra of recent calls (keyed by the
    weight's bytes) up to this many bytes, default 32 MiB, env
    ``NUMBACONV_FFT_KERNEL_CACHE_BYTES``; 0 turns it off.
``measure_cache``
    ``method="measure"`` remembers each case's winner in
    ``<cache_dir>/autotune.json`` (default True; env
    ``NUMBACONV_MEASURE_CACHE=0`` turns it off: winners are then kept for
    the process only).
``measure_time_s``
    Time ``method="measure"`` may spend timing candidates for one new case,
    default 2 s (the first candidate always runs).
``cuda_threads``, ``cuda_max_blocks``, ``cuda_block_2d``, ``cuda_chunk``, ``cuda_tile``
    GPU launch geometry: threads per block of the 1-D grid-stride kernels
    (256) and their most blocks (4096); the (W, H) block of the direct and
    gather kernels ((16, 8)); weight values staged in shared memory per chunk
    (256); the GEMM kernel's tile (16); ``cuda_shared_bytes``, the dynamic
    shared memory the direct kernel's input tile may use (48 KiB; larger
    regions take the weight-staging kernel). Tests shrink them to cover
    several blocks and ragged edges with tiny shapes.
``direct_channels_last_min``
    The direct path switches from its row kernel (vectorized along the output
    width) to its channels-last kernel (vectorized along input channels) when a
    group has at least this many input channels.

Kernels are compiled with ``fastmath={"reassoc", "contract"}`` only:
reductions may be reordered and fused, NaN and Inf propagate. ``FASTMATH`` is
that set; the kernel modules carry literal copies (numba's on-disk cache keys
on each kernel file's contents, not on this module), which the tests check
equal to it.
"""

from __future__ import annotations

import contextlib
import os

FASTMATH = frozenset({"reassoc", "contract"})

_DEFAULTS = {
    "workspace_bytes": 64 * 2**20,
    "direct_channels_last_min": 8,
    "fft_kernel_cache_bytes": 32 * 2**20,
    "measure_cache": True,
    "measure_time_s": 2.0,
    "cuda_threads": 256,
    "cuda_max_blocks": 4096,
    "cuda_block_2d": (16, 8),
    "cuda_chunk": 256,
    "cuda_tile": 16,
    "cuda_shared_bytes": 48 * 1024,
}


_FALSE = ("0", "false", "no", "off")


def _default_cache_dir() -> str:
    env = os.environ.get("NUMBACONV_CACHE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "numbaconv")


workspace_bytes: int = int(os.environ.get("NUMBACONV_WORKSPACE_BYTES", _DEFAULTS["workspace_bytes"]))
direct_channels_last_min: int = _DEFAULTS["direct_channels_last_min"]
fft_kernel_cache_bytes: int = int(
    os.environ.get("NUMBACONV_FFT_KERNEL_CACHE_BYTES", _DEFAULTS["fft_kernel_cache_bytes"])
)
cache_dir: str = _default_cache_dir()
measure_cache: bool = os.environ.get("NUMBACONV_MEASURE_CACHE", "1").strip().lower() not in _FALSE
measure_time_s: float = float(os.environ.get("NUMBACONV_MEASURE_TIME_S", _DEFAULTS["measure_time_s"]))
cuda_threads: int = _DEFAULTS["cuda_threads"]
cuda_max_blocks: int = _DEFAULTS["cuda_max_blocks"]
cuda_block_2d: tuple[int, int] = _DEFAULTS["cuda_block_2d"]
cuda_chunk: int = _DEFAULTS["cuda_chunk"]
cuda_tile: int = _DEFAULTS["cuda_tile"]
cuda_shared_bytes: int = _DEFAULTS["cuda_shared_bytes"]


def _reset() -> None:
    """Restore the defaults (used by tests)."""
    global workspace_bytes, direct_channels_last_min, fft_kernel_cache_bytes, cache_dir
    global measure_cache, measure_time_s, cuda_threads, cuda_max_blocks, cuda_block_2d, cuda_chunk, cuda_tile
    global cuda_shared_bytes
    workspace_bytes = _DEFAULTS["workspace_bytes"]
    measure_cache = _DEFAULTS["measure_cache"]
    measure_time_s = _DEFAULTS["measure_time_s"]
    cuda_threads = _DEFAULTS["cuda_threads"]
    cuda_max_blocks = _DEFAULTS["cuda_max_blocks"]
    cuda_block_2d = _DEFAULTS["cuda_block_2d"]
    cuda_chunk = _DEFAULTS["cuda_chunk"]
    cuda_tile = _DEFAULTS["cuda_tile"]
    cuda_shared_bytes = _DEFAULTS["cuda_shared_bytes"]
    direct_channels_last_min = _DEFAULTS["direct_channels_last_min"]
    fft_kernel_cache_bytes = _DEFAULTS["fft_kernel_cache_bytes"]
    cache_dir = _default_cache_dir()


@contextlib.contextmanager
def override(**settings):
    """Temporarily change settings: ``with config.override(workspace_bytes=2**20): ...``."""
    g = globals()
    unknown = [k for k in settings if k not in _DEFAULTS and k != "cache_dir"]
    if unknown:
        raise ValueError(f"unknown numbaconv.config setting(s): {', '.join(unknown)}")
    old = {k: g[k] for k in settings}
    g.update(settings)
    try:
        yield
    finally:
        g.update(old)
