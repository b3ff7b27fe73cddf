"""Shared test helpers: tolerances, the PyTorch second oracle, hypothesis profile."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from hypothesis import settings

from numbaconv import config

from .reference import conv_reference

# numbaconv's own on-disk state (autotune winners, a calibration) goes to a
# private directory for the whole run, subprocesses included: the user's
# cache must neither steer nor receive the tests' results
_CACHE = tempfile.mkdtemp(prefix="numbaconv-tests-")
os.environ["NUMBACONV_CACHE_DIR"] = _CACHE
config.cache_dir = _CACHE
# every auto call runs the method its dispatcher chose, not NumPy while the
# kernels compile (numbaconv.firstcall: tests/test_firstcall.py turns it on);
# subprocesses too
os.environ["NUMBACONV_COMPILE_IN_BACKGROUND"] = "0"
config.compile_in_background = False

# the simulator tests run in their own process (tests/test_cuda.py)
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cuda_sim"]

settings.register_profile("numbaconv", deadline=None, max_examples=25, derandomize=True)
settings.load_profile("numbaconv")

try:  # optional second oracle
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - depends on the environment
    torch = None
    F = None

DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
KERNELS = ["pixels", "channels"]


def random_array(rng, shape, dtype):
    dtype = np.dtype(dtype)
    a = rng.standard_normal(shape)
    if dtype.kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    return a.astype(dtype)


def tolerance(dtype, reduction_length, x, w, bias, **ref_params):
    """Error bound for a result of ``dtype``: c * eps * sqrt(K) * max(|x| (*) |w| + |b|).

    The scale is the reference convolution of the absolute values, so
    cancellation in the true result does not shrink the bound below the
    rounding error of the terms actually summed.
    """
    eps = np.finfo(np.dtype(dtype)).eps
    scale = conv_reference(np.abs(x), np.abs(w), None if bias is None else np.abs(bias), **ref_params)
    smax = float(np.max(np.abs(scale))) if scale.size else 0.0
    return 8.0 * eps * np.sqrt(max(reduction_length, 1)) * max(smax, 1e-30)


def assert_close(got, ref, tol, what=""):
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    if got.size == 0:
        return
    err = float(np.max(np.abs(got.astype(ref.dtype) - ref)))
    assert err <= tol, f"{what}: max error {err:.3e} > tolerance {tol:.3e}"


def assert_close_to_both(got, ref, tol, args):
    """``got`` against the NumPy reference ``ref`` and, when installed,
    PyTorch in float64 (``args``: x, w, bias, stride, pads, dilation,
    groups, mode)."""
    assert_close(got, ref, tol, "vs reference")
    if torch is not None:
        assert_close(got, torch_conv(*args), tol, "vs torch")


def torch_conv(x, w, bias, stride, pads, dilation, groups, mode):
    """PyTorch's answer in float64 (explicit F.pad, then an unpadded conv)."""
    nd = w.ndim - 2
    tx = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    tw = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64))
    tb = None if bias is None else torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float64))
    flat = []
    for lo, hi in reversed(pads):
        flat += [lo, hi]
    if any(flat):
        tmode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate", "circular": "circular"}[
            mode
        ]
        tx = F.pad(tx, flat, mode=tmode)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(tx, tw, tb, stride=tuple(stride), dilation=tuple(dilation), groups=groups).numpy()


@pytest.fixture(autouse=True)
def _fresh_kept_calls():
    """Each test starts without numbaconv.api's kept calls: tests replace
    module functions and constants the dispatcher reads (which a kept call
    would skip) by other means than the settings that key them."""
    from numbaconv import api

    api.clear_kept_calls()
    yield
    api.clear_kept_calls()


@pytest.fixture(params=KERNELS)
def direct_kernel(request, monkeypatch):
    """Run the direct path's pixel layout or its channels-last layout (at 4
    lanes, so that small groups have a vector of output channels)."""
    monkeypatch.setattr(config, "direct_layout", request.param)
    if request.param == "channels":
        monkeypatch.setattr(config, "simd_lanes", 4)
    return request.param


def torch_conv_transpose(x, w, bias, stride, pads, dilation, groups, output_padding):
    """PyTorch's conv_transpose in float64, with (lo, hi) padding by cropping.

    PyTorch takes one symmetric padding per dim, so the unpadded result is
    computed, extended by zeros for output_padding, and cropped to
    ``[lo, lo + L_out)``; the bias is added afterwards.
    """
    nd = w.ndim - 2
    tx = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    tw = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float64))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    full = fn(tx, tw, None, stride=tuple(stride), dilation=tuple(dilation), groups=groups).numpy()
    full = np.pad(full, [(0, 0), (0, 0)] + [(0, op) for op in output_padding])
    sl = []
    for i, (lo, hi) in enumerate(pads):
        sl.append(slice(lo, full.shape[2 + i] - hi))
    out = full[(slice(None), slice(None)) + tuple(sl)]
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64).reshape((1, -1) + (1,) * nd)
    return out


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """numbaconv's cache directory (autotune winners, calibration) in a fresh
    folder, with the in-memory copies forgotten before and after."""
    from numbaconv import autotune, costs

    monkeypatch.setattr(config, "cache_dir", str(tmp_path))
    autotune.forget()
    costs.forget_loaded()
    yield tmp_path
    autotune.forget()
    costs.forget_loaded()
