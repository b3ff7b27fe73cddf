"""Settings in one place (tests patch these module attributes).

Assigning an attribute (``numbaconv.config.workspace_bytes = 2**28``) changes
it for every thread; :func:`override` changes it for a block of code in the
calling thread (or asyncio task) only, so concurrent overrides never leak
into each other. Environment variables are read once, at import; a value
that cannot be used is ignored with a RuntimeWarning naming the variable
(sizes accept ``67108864``, ``64MiB``, ``1e6``).

``workspace_bytes``
    Upper bound on the extra working memory one call may allocate for its
    workspaces (layout copies, patch matrices), default 64 MiB. Settable
    globally (``numbaconv.config.workspace_bytes = ...``), through the
    ``NUMBACONV_WORKSPACE_BYTES`` environment variable, or with
    :func:`override` for a block of code (in the calling thread or task only).
``cache_dir``
    Where numbaconv keeps its own on-disk state (autotune results,
    calibration): ``NUMBACONV_CACHE_DIR``, else ``$XDG_CACHE_HOME/numbaconv``,
    else ``~/.cache/numbaconv``. Numba's compiled-kernel cache is separate
    (``NUMBA_CACHE_DIR``).
``fft_kernel_cache_bytes``
    The FFT path keeps the kernel spectra of recent calls (keyed by the
    weight's bytes) up to this many bytes, default 32 MiB, env
    ``NUMBACONV_FFT_KERNEL_CACHE_BYTES``; 0 turns it off.
``weight_cache_bytes``
    The direct path keeps its packed copies of recent weights (vector-blocked
    for the micro-kernel, compared by content) up to this many bytes, default
    64 MiB, env ``NUMBACONV_WEIGHT_CACHE_BYTES``; 0 turns it off.
``measure_cache``
    ``method="measure"`` remembers each case's winner in
    ``<cache_dir>/autotune.json`` (default True; env
    ``NUMBACONV_MEASURE_CACHE=0`` turns it off: winners are then kept for
    the process only).
``measure_time_s``
    Time ``method="measure"``'s timed calls may take for one new case,
    default 2 s (the first candidate always runs; each candidate's untimed
    first call, which may compile it, is not counted).
``compile_in_background``
    A ``method="auto"`` conv whose method has not run yet in this process is
    answered by NumPy (an im2col and a BLAS product per group) while a
    thread compiles the method's kernels, or loads them from Numba's cache;
    the later calls run the method (:mod:`numbaconv.firstcall`). Default
    True; env ``NUMBACONV_COMPILE_IN_BACKGROUND=0`` turns it off (every
    call then runs the chosen method, the first one after its compile).
``cuda_threads``, ``cuda_max_blocks``, ``cuda_block_2d``, ``cuda_chunk``, ``cuda_tile``
    GPU launch geometry: threads per block of the 1-D grid-stride kernels
    (256) and their most blocks (4096); the (W, H) block of the direct and
    gather kernels ((16, 8)); weight values staged in shared memory per chunk
    (256); the GEMM kernel's tile (16); ``cuda_shared_bytes``, the dynamic
    shared memory the direct kernel's input tile may use (48 KiB; larger
    regions take the weight-staging kernel). Tests shrink them to cover
    several blocks and ragged edges with tiny shapes.
``simd_lanes``, ``simd_block``
    The micro-kernels' lanes per float32 vector and register block (rows,
    vectors); None (default) takes them from the host
    (:func:`numbaconv.cpu.microkernel.host_simd`: AVX-512 16 lanes and a 6 x 4
    block, AVX2 8 and 6 x 2, else 4 and 6 x 2). Tests force 4, 8 and 16.
``direct_layout``
    The layout of the direct path's micro-kernel blocks for real dtypes:
    ``"auto"`` (default: channels where the pixel blocks would be mostly
    padding, small planes with many channels), ``"pixels"`` (lanes over
    output pixels, the weight broadcast) or ``"channels"`` (lanes over
    output channels, the input channels-last, blocks of any output pixels;
    where a group has at least a vector of output channels, else pixels).
    Tests force both.
``direct_channels_last_min``
    The direct path for complex dtypes switches from its row kernel to its
    channels-last kernel (vectorized along input channels) when a group has at
    least this many input channels; the transposed op's gather path counts
    groups with fewer as thin in its cost model.

``dask_numba_threads``
    Numba threads one block task of a dask input uses (``numbaconv.lazy``):
    None (default) divides the cores (Numba's thread count) by the dask
    worker's threads, so that worker threads x Numba threads never exceed
    the cores; an int fixes it. Env ``NUMBACONV_DASK_NUMBA_THREADS``.
``dask_tune_malloc``
    In a process started with ``MALLOC_TRIM_THRESHOLD_`` (dask's nanny sets
    it for its workers), the first block task lets glibc keep up to 256 MiB
    of freed memory and serve allocations up to 32 MiB from its heap
    (``numbaconv.lazy.tune_malloc``; the kernels ran 2-3x slower otherwise).
    Default True; env ``NUMBACONV_DASK_TUNE_MALLOC=0`` turns it off.

Kernels are compiled with ``fastmath={"reassoc", "contract"}`` only:
reductions may be reordered and fused, NaN and Inf propagate. ``FASTMATH`` is
that set; the kernel modules carry literal copies (numba's on-disk cache keys
on each kernel file's contents, not on this module), which the tests check
equal to it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import re
import sys
import types
import warnings

FASTMATH = frozenset({"reassoc", "contract"})

_DEFAULTS = {
    "workspace_bytes": 64 * 2**20,
    "direct_channels_last_min": 8,
    "direct_layout": "auto",
    "fft_kernel_cache_bytes": 32 * 2**20,
    "weight_cache_bytes": 64 * 2**20,
    "measure_cache": True,
    "measure_time_s": 2.0,
    "compile_in_background": True,
    "cuda_threads": 256,
    "cuda_max_blocks": 4096,
    "cuda_block_2d": (16, 8),
    "cuda_chunk": 256,
    "cuda_tile": 16,
    "cuda_shared_bytes": 48 * 1024,
    "simd_lanes": None,
    "simd_block": None,
    "dask_numba_threads": None,
    "dask_tune_malloc": True,
}
_SETTINGS = (*_DEFAULTS, "cache_dir")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "kib": 2**10, "m": 10**6, "mb": 10**6, "mib": 2**20,
          "g": 10**9, "gb": 10**9, "gib": 2**30, "t": 10**12, "tb": 10**12, "tib": 2**40}  # fmt: skip


def _ignored(var: str, text: str, what: str, default) -> None:
    warnings.warn(
        f"numbaconv: ignoring {var}={text!r}: {what}; using the default {default!r}",
        RuntimeWarning,
        stacklevel=3,
    )


def parse_bytes(text: str) -> int:
    """A byte count: an integer, a float with an integral value (``1e6``) or a
    number with a unit (``64MiB``, ``2 GB``, ``512k``). ValueError otherwise."""
    m = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a byte count: {text!r} (give e.g. 67108864, 64MiB or 1e6)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def _env_bytes(var: str, default: int, minimum: int) -> int:
    text = os.environ.get(var)
    if text is None or not text.strip():
        return default
    try:
        value = parse_bytes(text)
    except ValueError as exc:
        _ignored(var, text, str(exc), default)
        return default
    if value < minimum:
        _ignored(var, text, f"it must be at least {minimum}", default)
        return default
    return value


def _env_float(var: str, default: float, minimum: float) -> float:
    text = os.environ.get(var)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        _ignored(var, text, "not a number of seconds", default)
        return default
    if not math.isfinite(value) or value < minimum:
        _ignored(var, text, f"it must be a finite number >= {minimum}", default)
        return default
    return value


def _env_bool(var: str, default: bool) -> bool:
    text = os.environ.get(var)
    if text is None or not text.strip():
        return default
    t = text.strip().lower()
    if t in _TRUE or t in _FALSE:
        return t in _TRUE
    _ignored(var, text, f"expected one of {', '.join(_TRUE + _FALSE)}", default)
    return default


def _default_cache_dir() -> str:
    env = os.environ.get("NUMBACONV_CACHE_DIR")
    if env and env.strip():
        return os.path.expanduser(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "numbaconv")


def _from_environment() -> dict:
    values = dict(_DEFAULTS)
    values["workspace_bytes"] = _env_bytes("NUMBACONV_WORKSPACE_BYTES", _DEFAULTS["workspace_bytes"], 1)
    values["fft_kernel_cache_bytes"] = _env_bytes(
        "NUMBACONV_FFT_KERNEL_CACHE_BYTES", _DEFAULTS["fft_kernel_cache_bytes"], 0
    )
    values["weight_cache_bytes"] = _env_bytes(
        "NUMBACONV_WEIGHT_CACHE_BYTES", _DEFAULTS["weight_cache_bytes"], 0
    )
    values["measure_cache"] = _env_bool("NUMBACONV_MEASURE_CACHE", _DEFAULTS["measure_cache"])
    values["compile_in_background"] = _env_bool(
        "NUMBACONV_COMPILE_IN_BACKGROUND", _DEFAULTS["compile_in_background"]
    )
    values["measure_time_s"] = _env_float("NUMBACONV_MEASURE_TIME_S", _DEFAULTS["measure_time_s"], 0.0)
    values["dask_tune_malloc"] = _env_bool("NUMBACONV_DASK_TUNE_MALLOC", _DEFAULTS["dask_tune_malloc"])
    threads = os.environ.get("NUMBACONV_DASK_NUMBA_THREADS", "").strip()
    if threads:
        if threads.isdigit() and int(threads) >= 1:
            values["dask_numba_threads"] = int(threads)
        else:
            _ignored("NUMBACONV_DASK_NUMBA_THREADS", threads, "not a positive integer", None)
    values["cache_dir"] = _default_cache_dir()
    return values


# the process-wide values, and each thread's / task's overrides on top
_GLOBAL: dict = _from_environment()
_CHANGES = [0]  # assignments to the process-wide values so far (state())
_OVERRIDES: contextvars.ContextVar = contextvars.ContextVar(
    "numbaconv_config_overrides", default=types.MappingProxyType({})
)

# for type checkers and readers: the settings, as module attributes
workspace_bytes: int
direct_channels_last_min: int
direct_layout: str
fft_kernel_cache_bytes: int
weight_cache_bytes: int
cache_dir: str
measure_cache: bool
measure_time_s: float
compile_in_background: bool
cuda_threads: int
cuda_max_blocks: int
cuda_block_2d: tuple[int, int]
cuda_chunk: int
cuda_tile: int
cuda_shared_bytes: int
simd_lanes: int | None
simd_block: tuple[int, int] | None
dask_numba_threads: int | None
dask_tune_malloc: bool


class _ConfigModule(types.ModuleType):
    """Settings read through the calling context's overrides; assignments go
    to the process-wide values."""

    def __getattr__(self, name):
        if name in _SETTINGS:
            overrides = _OVERRIDES.get()
            return overrides[name] if name in overrides else _GLOBAL[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in _SETTINGS:
            _GLOBAL[name] = value
            _CHANGES[0] += 1
        else:
            super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(_SETTINGS))


def _setting(name: str) -> property:
    # a data descriptor on the module's class: found before the module's
    # dict, so reading a setting raises no internal AttributeError first
    # (__getattr__ alone took 2.3 us a read, ~30 reads a conv call)
    def get(self):
        overrides = _OVERRIDES.get()
        return overrides[name] if name in overrides else _GLOBAL[name]

    def put(self, value):
        _GLOBAL[name] = value
        _CHANGES[0] += 1

    return property(get, put, doc=f"The {name} setting (see the module docstring).")


for _name in _SETTINGS:
    setattr(_ConfigModule, _name, _setting(_name))
del _name

sys.modules[__name__].__class__ = _ConfigModule


def _reset() -> None:
    """Restore the defaults (used by tests)."""
    _GLOBAL.clear()
    _GLOBAL.update(_DEFAULTS, cache_dir=_default_cache_dir())
    _CHANGES[0] += 1


def state() -> tuple:
    """A key that changes whenever a setting read here may have changed:
    the count of process-wide assignments and this context's overrides
    (for results kept per settings, ~0.3 us where reading every setting
    took ~8 us)."""
    overrides = _OVERRIDES.get()
    return (_CHANGES[0], tuple(sorted(overrides.items())) if overrides else ())


@contextlib.contextmanager
def override(**settings):
    """Change settings for a block of code, in the calling thread (or asyncio
    task) only: ``with config.override(workspace_bytes=2**20): ...``."""
    unknown = [k for k in settings if k not in _SETTINGS]
    if unknown:
        raise ValueError(f"unknown numbaconv.config setting(s): {', '.join(unknown)}")
    token = _OVERRIDES.set({**_OVERRIDES.get(), **settings})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)
