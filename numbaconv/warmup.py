"""``numbaconv warmup``: compile every CPU kernel ahead of time, and how warm
Numba's on-disk cache is (``numbaconv info``).

Each kernel compiles once per signature (2-10 s for a parallel one), then
loads from Numba's on-disk cache in later processes. ``warmup`` runs every
method of the table on tiny cases that reach each of its kernels (1-D, 2-D
and 3-D, few and many channels per group, a folding padding mode) for the
dtypes asked, so a container build or a CI job pays the compilation once. The
cases come from the method table: a new method is warmed without an edit here.
"""

from __future__ import annotations

import importlib
import pkgutil
import time
import warnings

import numpy as np

from . import api, config, dispatch
from .benchmark import _Progress

DTYPES = ("float32", "float64", "complex64", "complex128")


def kernels() -> list:
    """Every cached njit kernel of the CPU methods (``numbaconv.cpu.*``; inline
    helpers compile into their callers and have no cache of their own)."""
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    from . import cpu

    found = {}
    for info in pkgutil.iter_modules(cpu.__path__):
        module = importlib.import_module(f".cpu.{info.name}", __package__)
        for value in vars(module).values():
            if isinstance(value, CPUDispatcher) and not isinstance(value._cache, NullCache):
                found[id(value)] = value
    return list(found.values())


def _this_cpu(kernel) -> tuple:
    return kernel.targetctx.codegen().magic_tuple()


def cache_state() -> dict:
    """How warm Numba's on-disk cache is for this CPU: kernels with at least
    one cached signature, and cached signatures in all."""
    ks = kernels()
    warm = signatures = 0
    for k in ks:
        try:
            index = k._cache._cache_file._load_index()
        except Exception:  # no cache location, unreadable index: cold
            index = {}
        cpu = _this_cpu(k)
        here = [key for key in index if len(key) > 1 and key[1] == cpu]
        warm += bool(here)
        signatures += len(here)
    return {"kernels": len(ks), "warm_kernels": warm, "cached_signatures": signatures}


def _cases():
    """(op, input shape, weight shape, params) reaching every kernel variant."""
    out = []
    for nd in (1, 2, 3):
        sp = (9, 8, 7)[:nd]
        k = (3, 2, 3)[:nd]
        for cin, groups in ((2, 1), (8, 1), (4, 4)):  # few channels, more, depthwise
            cout = 4
            out.append(("conv", (1, cin) + sp, (cout, cin // groups) + k, dict(padding=1, groups=groups)))
        out.append(("conv", (1, 2) + sp, (4, 2) + k, dict(padding=1, padding_mode="reflect")))
        out.append(("conv", (1, 8) + sp, (4, 8) + k, dict(stride=2, dilation=2, padding=2)))
        if nd > 1:  # depthwise with 5 kernel rows: the band blocks (one task function, 4- and 6-row)
            kb = (1, 5, 3)[3 - nd :]
            out.append(("conv", (1, 2) + sp, (2, 1) + kb, dict(padding=(0, 2, 1)[3 - nd :], groups=2)))
        # depthwise, a vector of channels, narrow rows: lanes over channels (cpu/dwcl.py)
        out.append(("conv", (1, 16) + sp, (16, 1) + k, dict(padding=1, groups=16)))
        # a vector of output channels, strided: the channels-last layout
        out.append(("conv", (1, 8) + sp, (16, 8) + k, dict(stride=2, padding=1)))
        # the common square kernels: Winograd compiles one kernel per tile shape
        for kc in ((3,), (5,)) if nd < 3 else ((3,),):
            out.append(("conv", (1, 8) + sp, (8, 8) + kc * nd, dict(padding="same")))
        for cin in (2, 8):
            out.append(("conv_transpose", (1, cin) + sp, (cin, 3) + k, dict(stride=2, padding=1)))
            out.append(
                ("conv_transpose", (1, cin) + sp, (cin, 3) + k, dict(stride=2, padding_mode="reflect"))
            )
    return out


# the integer images whose filter computes in each real dtype (numbaconv.ndimage)
_IMAGES = {"float32": np.uint8, "float64": np.int32}


def _front_ends(dtypes) -> int:
    """The front-ends' own kernels: numbaconv.ndimage's integer store, for an
    integer image filtered in each real dtype asked, and the fused separable
    filter (cpu.sepfused) into a float and an integer image."""
    from . import ndimage

    calls = 0
    img = np.arange(72).reshape(9, 8)
    box = np.full((3, 3), 1 / 9)
    for d in dtypes:
        if d in _IMAGES:
            ndimage.correlate(img.astype(_IMAGES[d]), box, method="direct")
            ndimage.correlate(img.astype(_IMAGES[d]), box, method="separable")
            ndimage.correlate(img.astype(d), box, method="separable")
            calls += 3
    return calls


def warmup(dtypes=("float32", "float64"), progress: bool = False) -> dict:
    """Run every CPU method of the table on :func:`_cases` for ``dtypes``
    (compiling or loading each kernel); returns the time taken, the calls
    made and :func:`cache_state` afterwards."""
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {d!r}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    jobs = [(d, case, r) for d in dtypes for case in _cases() for r in dispatch.rows(case[0])]
    bar = _Progress(len(jobs), progress)
    calls = 0
    for dtype, (op, xs, ws, kw), row in jobs:
        x = rng.standard_normal(xs).astype(dtype)
        w = rng.standard_normal(ws).astype(dtype)
        fn = api.conv if op == "conv" else api.conv_transpose
        # the direct path's channels-last layout runs only when config asks for it
        layouts = ("auto", "channels") if row.name == "direct" else ("auto",)
        try:
            for layout in layouts:
                with warnings.catch_warnings(), config.override(direct_layout=layout):
                    warnings.simplefilter("ignore", RuntimeWarning)  # tiny cases: no budget warnings
                    fn(x, w, method=row.name, **kw)
                calls += 1
        except dispatch.UnsupportedMethodError:
            pass
        bar.step(f"{op} {row.name} {dtype}")
    calls += _front_ends(dtypes)
    return {"seconds": time.perf_counter() - t0, "calls": calls, "dtypes": list(dtypes), **cache_state()}
