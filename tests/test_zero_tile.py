"""Zero padding in the direct path's tiles (numbaconv/cpu/igemm.py,
``_zero_tile``): with zero padding a task zeroes its tile once and its
fills copy only the input; the padding positions must read as zeros in
every fill of a task (channel chunks, groups sharing a task) and whatever
an earlier call left in the memory the tile reuses (a reflect-padded call
writes edge values where a zero-padded one reads padding)."""

from __future__ import annotations

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config
from numbaconv.cpu import igemm
from numbaconv.shapes import make_conv_plan

from .conftest import assert_close_to_both, random_array, tolerance
from .reference import conv_reference


def test_geometry_says_zero_padding():
    def zeros(padding, mode="zeros"):
        plan = make_conv_plan(
            (1, 4, 12, 12), (5, 4, 3, 3), None, 1, padding, 1, 1, padding_mode=mode, dtype=np.float32
        )
        return igemm.geometry(plan, 2)[0].zeros()

    assert zeros(1) == 2 and zeros([(0, 1), (0, 0)]) == 2
    assert zeros(0) == 1 and zeros("valid") == 1  # no padding
    assert zeros(1, "reflect") == 0 and zeros(1, "circular") == 0


# (input shape, weight shape, stride, padding, groups, layout, tile bytes)
CASES = {
    "pixels-chunks": ((2, 40, 13, 19), (9, 40, 3, 3), 1, 2, 1, "pixels", 4096),
    "pixels-s2": ((2, 6, 21, 17), (11, 6, 5, 5), 2, 3, 1, "pixels", None),
    "band-groups": ((2, 24, 15, 23), (24, 1, 5, 5), 1, 2, 24, "auto", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_zero_padding_after_other_modes(name, monkeypatch):
    xs, ws, stride, pad, groups, layout, tile = CASES[name]
    monkeypatch.setattr(config, "direct_layout", layout)
    if tile is not None:
        monkeypatch.setattr(igemm, "_TILE_BYTES", tile)  # several channel chunks a task
    igemm.clear_caches()
    rng = np.random.default_rng(11)
    x = random_array(rng, xs, np.float64) + 50.0  # edge values far from zero
    w, b = random_array(rng, ws, np.float64), random_array(rng, (ws[0],), np.float64)
    geo = igemm.geometry(make_conv_plan(xs, ws, (ws[0],), stride, pad, 1, groups, dtype=np.float64), None)[0]
    assert geo.zeros() == 2 and not geo.channels_last
    assert geo.cc < geo.cg or geo.gpt > 1 or tile is None and stride == 2
    for mode in ("reflect", "zeros", "circular", "zeros"):
        got = nc.conv2d(x, w, b, stride, pad, 1, groups, padding_mode=mode, method="direct")
        params = dict(stride=[stride] * 2, pads=[(pad, pad)] * 2, dilation=[1, 1], groups=groups, mode=mode)
        ref = conv_reference(x, w, b, **params)
        tol = tolerance(np.float64, xs[1] // groups * ws[2] * ws[3], x, w, b, **params)
        assert_close_to_both(got, ref, tol, (x, w, b, [stride] * 2, [(pad, pad)] * 2, [1, 1], groups, mode))
    igemm.clear_caches()
