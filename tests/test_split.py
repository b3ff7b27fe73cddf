"""How the direct path's pixel layout splits a call into tasks
(numbaconv/cpu/igemm.py, ``Geometry._split``): where samples, groups and
planes are too few, bands of output rows come first (each task all of its
band's blocks of output channels), as long as a band keeps the kernel's
halo rows and 4 pixel blocks; chunks of blocks of output channels only
after that, and to 4 tasks a thread. Results against the reference and PyTorch on such calls."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config
from numbaconv.cpu import igemm
from numbaconv.shapes import make_conv_plan

from .conftest import assert_close_to_both, random_array, tolerance
from .reference import conv_reference

# (input shape, weight shape, stride, padding, dilation)
CASES = {
    "stem-7x7-s2": ((1, 3, 96, 90), (20, 3, 7, 7), (2, 2), [(3, 3), (3, 3)], (1, 1)),
    "3x3-s2-narrow": ((1, 8, 40, 30), (26, 8, 3, 3), (2, 2), [(1, 1), (1, 1)], (1, 1)),
    "5x5-dil2": ((2, 5, 50, 41), (30, 5, 5, 5), (1, 1), [(4, 3), (4, 4)], (2, 2)),
    "1x1": ((1, 12, 60, 33), (17, 12, 1, 1), (1, 1), [(0, 0), (0, 0)], (1, 1)),
}


@pytest.fixture
def pixels(monkeypatch):
    monkeypatch.setattr(config, "direct_layout", "pixels")
    igemm.clear_caches()
    yield
    igemm.clear_caches()


@pytest.mark.parametrize("threads", [2, 8])
@pytest.mark.parametrize("name", list(CASES))
def test_bands_before_channel_chunks(name, threads, pixels):
    xs, ws, stride, pads, dil = CASES[name]
    plan = make_conv_plan(xs, ws, None, stride, pads, dil, 1, dtype=np.float32)
    geo = igemm.geometry(plan, threads)[0]
    want = 8 * threads  # tasks a call wants (igemm._TASKS_PER_THREAD)
    oh, halo = plan.out_size[1], dil[0] * (ws[2] - 1) // stride[0]
    assert geo.nob > 1 and plan.batch < want  # too few samples for the tasks alone
    # bands no wider than the tasks ask for, or than the halo and 4 pixel
    # blocks need (of those, the one padding the pixel blocks least)
    top = min(oh, max(oh * plan.batch // want, halo, -(-4 * geo.px // geo.wq), 1))
    assert geo.band <= top
    # chunks of blocks of output channels (each fills its band's tile again)
    # only for tasks enough, and fewer of them: 4 a thread
    chunked = igemm._CHUNK_TASKS_PER_THREAD * threads
    if plan.batch * geo.nbands >= chunked:
        assert geo.och == geo.nob  # each task all of its band's blocks of output channels
    else:
        assert geo.och < geo.nob and plan.batch * geo.nbands < geo.tasks() < 2 * chunked


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", list(CASES))
def test_split_calls_vs_reference_and_torch(name, dtype, pixels):
    xs, ws, stride, pads, dil = CASES[name]
    rng = np.random.default_rng(7)
    x, w, b = random_array(rng, xs, dtype), random_array(rng, ws, dtype), random_array(rng, (ws[0],), dtype)
    got = nc.conv2d(x, w, b, stride, pads, dil, method="direct")
    params = dict(stride=list(stride), pads=pads, dilation=list(dil), groups=1, mode="zeros")
    ref = conv_reference(x, w, b, **params)
    tol = tolerance(dtype, xs[1] * int(np.prod(ws[2:])), x, w, b, **params)
    assert_close_to_both(got, ref, tol, (x, w, b, stride, pads, dil, 1, "zeros"))
