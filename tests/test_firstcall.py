"""First calls while the kernels compile (numbaconv/firstcall.py): a
method="auto" conv whose method has not run in the process is answered by
NumPy while a thread prepares the method; the NumPy conv against the
reference over the parameter space; which calls come here; a script that
ends while its kernels still compile exits cleanly with the right result."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import config, firstcall
from numbaconv.shapes import make_conv_plan, make_conv_transpose_plan

from .cases import transpose_tolerance
from .conftest import assert_close, random_array, tolerance
from .reference import conv_reference, conv_transpose_reference

FUNCS = {1: nc.conv1d, 2: nc.conv2d, 3: nc.conv3d}

# (input shape, weight shape, stride, padding (lo, hi) per dim, dilation, groups, mode)
CASES = {
    "2d-3x3": ((2, 4, 9, 11), (6, 4, 3, 3), (1, 1), [(1, 1), (1, 1)], (1, 1), 1, "zeros"),
    "2d-s2-dil-groups-reflect": (
        (1, 6, 12, 13),
        (4, 3, 3, 2),
        (2, 1),
        [(2, 1), (0, 3)],
        (2, 3),
        2,
        "reflect",
    ),
    "2d-depthwise-circular": ((2, 5, 7, 8), (5, 1, 5, 3), (1, 2), [(2, 2), (1, 1)], (1, 1), 5, "circular"),
    "1d-replicate-asym": ((3, 2, 17), (4, 2, 4), (3,), [(3, 0)], (2,), 1, "replicate"),
    "3d": ((1, 4, 5, 6, 7), (2, 2, 2, 3, 3), (1, 2, 1), [(1, 0), (1, 1), (0, 2)], (2, 1, 1), 2, "zeros"),
    "valid": ((2, 3, 8, 8), (3, 3, 3, 3), (1, 1), [(0, 0), (0, 0)], (1, 1), 1, "zeros"),
}


@pytest.fixture
def background(monkeypatch):
    monkeypatch.setattr(config, "compile_in_background", True)
    firstcall.forget()
    yield
    firstcall.forget()


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.complex64, np.complex128], ids=lambda d: np.dtype(d).name
)
@pytest.mark.parametrize("name", list(CASES))
def test_numpy_conv_vs_reference(name, dtype):
    xs, ws, stride, pads, dil, groups, mode = CASES[name]
    rng = np.random.default_rng(0)
    x, w, b = random_array(rng, xs, dtype), random_array(rng, ws, dtype), random_array(rng, (ws[0],), dtype)
    pads = [tuple(p) for p in pads]
    plan = make_conv_plan(xs, ws, (ws[0],), stride, pads, dil, groups, padding_mode=mode, dtype=dtype)
    x5, w5 = x.reshape(plan.input_shape5), w.reshape(plan.weight_shape5)
    before = x.copy()
    got = firstcall.numpy_conv(plan, x5, w5, b).reshape(plan.output_shape)
    params = dict(stride=list(stride), pads=pads, dilation=list(dil), groups=groups, mode=mode)
    ref = conv_reference(x, w, b, **params)
    assert got.dtype == np.dtype(dtype) and got.shape == ref.shape
    assert_close(got, ref, tolerance(dtype, ws[1] * int(np.prod(ws[2:])), x, w, b, **params))
    np.testing.assert_array_equal(x, before)


# (input shape, weight shape, stride, padding (lo, hi) per dim, dilation, groups, output_padding)
TRANSPOSED = {
    "2d-s2-k4": ((2, 4, 5, 6), (4, 3, 4, 4), (2, 2), [(1, 1), (1, 1)], (1, 1), 1, (0, 0)),
    "2d-s3-dil-groups-asym-opad": ((1, 6, 4, 5), (6, 2, 3, 2), (3, 2), [(2, 0), (0, 1)], (2, 1), 3, (1, 1)),
    "1d": ((2, 3, 9), (3, 2, 5), (2,), [(2, 2)], (1,), 1, (1,)),
    "3d": ((1, 2, 3, 4, 3), (2, 2, 2, 3, 2), (1, 2, 2), [(0, 1), (1, 1), (0, 0)], (1, 1, 2), 2, (0, 1, 0)),
}


@pytest.mark.parametrize("name", list(TRANSPOSED))
def test_numpy_conv_transpose_vs_reference(name):
    xs, ws, stride, pads, dil, groups, opad = TRANSPOSED[name]
    rng = np.random.default_rng(3)
    dtype = np.float64
    x, w, b = (
        random_array(rng, xs, dtype),
        random_array(rng, ws, dtype),
        random_array(rng, (ws[1] * groups,), dtype),
    )
    pads = [tuple(p) for p in pads]
    plan = make_conv_transpose_plan(xs, ws, b.shape, stride, pads, opad, groups, dil, dtype=dtype)
    got = firstcall.numpy_conv(plan, x.reshape(plan.input_shape5), w.reshape(plan.weight_shape5), b)
    ref = conv_transpose_reference(x, w, b, list(stride), pads, list(dil), groups, list(opad))
    got = got.reshape(plan.output_shape)
    assert got.shape == ref.shape
    params = dict(
        stride=list(stride), pads=pads, dilation=list(dil), groups=groups, output_padding=list(opad)
    )
    assert_close(got, ref, transpose_tolerance(dtype, x, w, b, **params))


def test_zero_padding_is_zero_not_a_masked_product():
    """A NaN in the input next to zero padding stays where PyTorch puts it:
    the padding positions are zeros, not NaN * 0."""
    x = np.ones((1, 1, 4, 4))
    x[0, 0, 0, 0] = np.nan
    w = np.ones((1, 1, 3, 3))
    plan = make_conv_plan(x.shape, w.shape, None, 1, 1, 1, 1)
    got = firstcall.numpy_conv(plan, x.reshape(plan.input_shape5), w.reshape(plan.weight_shape5), None)
    got = got.reshape(4, 4)
    assert np.isnan(got[:2, :2]).all() and np.isfinite(got[2:, :]).all() and np.isfinite(got[:, 2:]).all()
    assert got[3, 3] == 4.0


def test_auto_first_call_then_the_method(background):
    """The first auto call of a method is NumPy's and starts one thread; once
    it is done, the next call runs the method (no NumPy call counted)."""
    rng = np.random.default_rng(1)
    x, w = random_array(rng, (2, 4, 10, 9), np.float32), random_array(rng, (5, 4, 3, 3), np.float32)
    ref = nc.conv2d(x, w, padding=1, method="direct")  # forced: never here
    n0, s0 = firstcall.STATS["numpy"], firstcall.STATS["started"]
    first = nc.conv2d(x, w, padding=1)
    assert firstcall.STATS["numpy"] == n0 + 1 and firstcall.STATS["started"] == s0 + 1
    assert firstcall.wait(60)
    out = np.empty_like(ref)
    second = nc.conv2d(x, w, padding=1, out=out)
    assert second is out and firstcall.STATS["numpy"] == n0 + 1
    tol = tolerance(np.float32, 36, x, w, None, stride=[1, 1], pads=[(1, 1), (1, 1)], dilation=[1, 1],
                    groups=1, mode="zeros")  # fmt: skip
    assert_close(first, ref, tol)
    assert_close(second, ref, tol)


def test_which_calls_come_here(background):
    """Forced methods, "measure", a transposed op with
    another padding mode than zeros, patch matrices past
    config.workspace_bytes and empty results run the method itself."""
    rng = np.random.default_rng(2)
    x, w = random_array(rng, (1, 3, 8, 8), np.float64), random_array(rng, (2, 3, 3, 3), np.float64)
    n0 = firstcall.STATS["numpy"]
    nc.conv2d(x, w, method="direct")
    nc.conv2d(x, w, method="measure")
    nc.conv_transpose2d(x, w.transpose(1, 0, 2, 3).copy(), padding=1, padding_mode="reflect")
    with config.override(workspace_bytes=1024):
        nc.conv2d(x, w)
    assert nc.conv2d(x[:0], w).shape == (0, 2, 6, 6)  # an empty result: no kernel runs
    assert firstcall.STATS["numpy"] == n0
    out = np.full((1, 2, 6, 6), 7.0)
    got = nc.conv2d(x, w, out=out)  # this one does, into out
    assert got is out and firstcall.STATS["numpy"] == n0 + 1
    firstcall.wait(60)
    plan = make_conv_plan(x.shape, w.shape, None, 1, 0, 1, 1)
    assert firstcall.patch_bytes(plan) == 1 * 3 * 9 * 36 * 8


def test_script_ending_while_kernels_compile(tmp_path):
    """A process whose only call was answered by NumPy, its kernels still
    compiling (an empty Numba cache), exits cleanly once they are done, with
    the right result; the next process finds them in the cache."""
    script = textwrap.dedent(
        """
        import numpy as np, numbaconv as nc
        from numbaconv import firstcall
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
        w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
        np.save(OUT, nc.conv2d(x, w, padding=1))
        print(firstcall.STATS["numpy"], firstcall.STATS["started"])
        """
    ).replace("OUT", repr(str(tmp_path / "y.npy")))
    cache = tmp_path / "numba"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache), NUMBACONV_COMPILE_IN_BACKGROUND="1")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "1"]  # answered by NumPy, one thread started
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 12, 12)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    params = dict(stride=[1, 1], pads=[(1, 1), (1, 1)], dilation=[1, 1], groups=1, mode="zeros")
    ref = conv_reference(x, w, None, **params)
    assert_close(np.load(tmp_path / "y.npy"), ref, tolerance(np.float32, 27, x, w, None, **params))
    assert any(cache.rglob("*.nbi"))  # the thread's kernels were written to the cache


def _first(call):
    """``call()`` as a process's first call of its method: answered by NumPy."""
    firstcall.forget()
    n0 = firstcall.STATS["numpy"]
    result = call()
    assert firstcall.STATS["numpy"] == n0 + 1
    return result


def test_front_ends_answered_while_compiling(background):
    """The transposed op and the SciPy front-ends' own auto (signal's
    convolve/correlate, ndimage's correlate, integer images included) are
    answered by NumPy on their first calls, with their usual results."""
    import scipy.ndimage
    import scipy.signal

    from numbaconv import ndimage as nndimage
    from numbaconv import signal as nsignal

    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 4, 6, 7)), rng.standard_normal((4, 2, 3, 3))
    got = _first(lambda: nc.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1))
    ref = conv_transpose_reference(x, w, None, [2, 2], [(1, 1), (1, 1)], [1, 1], 1, [1, 1])
    params = dict(stride=[2, 2], pads=[(1, 1), (1, 1)], dilation=[1, 1], groups=1, output_padding=[1, 1])
    assert_close(got, ref, transpose_tolerance(np.float64, x, w, None, **params))
    a, k = rng.standard_normal((20, 23)), rng.standard_normal((4, 5))
    tol = 1e-12 * np.abs(a).max() * np.abs(k).sum()
    for name, kw in (("convolve", dict(mode="same")), ("correlate2d", dict(boundary="symm"))):
        got = _first(lambda name=name, kw=kw: getattr(nsignal, name)(a, k, **kw))
        assert_close(got, getattr(scipy.signal, name)(a, k, **kw), tol)
    got = _first(lambda: nndimage.correlate(a, k, mode="mirror"))
    assert_close(got, scipy.ndimage.correlate(a, k, mode="mirror"), tol)
    img = (rng.random((15, 16)) * 255).astype(np.uint8)
    box = np.full((3, 3), 1 / 9)
    got = _first(lambda: nndimage.correlate(img, box, mode="reflect"))  # rounded as SciPy rounds
    want = scipy.ndimage.correlate(img, box, mode="reflect")
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - want.astype(int)).max() <= 1
    firstcall.wait(120)


def test_explain_says_so(background):
    """explain() says when a call now would be answered by NumPy, and stops
    saying it once the method has run."""
    rng = np.random.default_rng(5)
    x, w = random_array(rng, (1, 3, 9, 9), np.float64), random_array(rng, (2, 3, 3, 3), np.float64)
    e = nc.explain("conv", x, w, padding=1)
    assert e.first_call and "answered by NumPy" in str(e)
    _first(lambda: nc.conv2d(x, w, padding=1))
    assert firstcall.wait(120)
    e = nc.explain("conv", x, w, padding=1)
    assert not e.first_call and "answered by NumPy" not in str(e)
    assert not nc.explain("conv", x, w, padding=1, method="direct").first_call


def test_complex_first_call(background):
    """Complex dtypes too (their kernels compile apart from the real ones)."""
    rng = np.random.default_rng(6)
    x = random_array(rng, (2, 4, 7, 8), np.complex128)
    w = random_array(rng, (6, 2, 3, 3), np.complex128)
    got = _first(lambda: nc.conv2d(x, w, padding=(1, 2), groups=2, padding_mode="circular"))
    params = dict(stride=[1, 1], pads=[(1, 1), (2, 2)], dilation=[1, 1], groups=2, mode="circular")
    tol = tolerance(np.complex128, 18, x, w, None, **params)
    assert_close(got, conv_reference(x, w, None, **params), tol)
    firstcall.wait(120)


def test_thread_runs_with_the_callers_settings(background, monkeypatch):
    """The preparing thread sees the caller's config.override settings (the
    kernels it compiles are the ones the caller's next calls run)."""
    seen = []
    real = firstcall._prepare

    def spy(k, prepare):
        seen.append(config.direct_layout)
        real(k, prepare)

    monkeypatch.setattr(firstcall, "_prepare", spy)
    rng = np.random.default_rng(7)
    x, w = random_array(rng, (1, 32, 6, 6), np.float32), random_array(rng, (32, 32, 3, 3), np.float32)
    with config.override(direct_layout="channels"):
        _first(lambda: nc.conv2d(x, w, padding=1))
    assert firstcall.wait(120) and seen == ["channels"]


def test_split_run_after_interpreter_shutdown_began(monkeypatch):
    """A firstcall thread still running once the main thread has ended finds
    concurrent.futures refusing new work: runtime.split_run then runs the
    pieces itself, all of them."""
    from numbaconv import runtime

    class Closed:
        def submit(self, *args):
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    monkeypatch.setattr(runtime, "num_threads", lambda: 3)
    monkeypatch.setitem(runtime._POOL, 3, Closed())
    done = []
    runtime.split_run(lambda tag, a, b: done.append((tag, a, b)), 10, "k")
    assert sorted(done) == [("k", 0, 4), ("k", 4, 8), ("k", 8, 10)]


def test_fork_waits_for_the_preparing_thread(background):
    """A fork while a thread compiles waits for it (the child would inherit
    Numba's compiler lock held by a thread it does not have); the child
    starts with no thread running."""
    rng = np.random.default_rng(8)
    x, w = random_array(rng, (1, 2, 9, 9), np.float64), random_array(rng, (3, 2, 3, 3), np.float64)
    _first(lambda: nc.conv2d(x, w, padding=1))
    with warnings.catch_warnings():  # 3.12+: a DeprecationWarning for fork() with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: no thread of its parent's running, the method ready
        # (no kernel here: after OpenMP kernels in the parent a forked child
        # cannot run them, runtime.ForkedOpenMPError)
        os._exit(0 if not firstcall._RUNNING and firstcall._READY else 1)
    assert not firstcall._RUNNING  # the parent waited for its thread before forking
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
