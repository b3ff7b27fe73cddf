"""Dask inputs (numbaconv.lazy): every front-end's lazy result against the
in-memory call over random configurations and chunkings; graphs, errors,
threads, the memory planner, Zarr and a LocalCluster with processes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import dask  # noqa: E402

import numbaconv as nc  # noqa: E402
from numbaconv import config, lazy  # noqa: E402
from numbaconv import ndimage as nnd  # noqa: E402
from numbaconv import signal as ns  # noqa: E402

from .conftest import assert_close, tolerance  # noqa: E402

MODES = ("zeros", "reflect", "replicate", "circular")


def _chunking(rng, shape, lead):
    """Random chunks: the leading axes split or not, each spatial axis in
    pieces of 1, 2, 3, a random size or whole."""
    chunks = []
    for i, n in enumerate(shape):
        if i < lead:
            chunks.append(int(rng.choice([1, max(1, n // 2), n])))
        else:
            chunks.append(int(rng.choice([1, 2, 3, int(rng.integers(1, n + 1)), n])))
    return tuple(chunks)


def _conv_case(rng, transposed=False):
    nd = int(rng.integers(1, 4))
    groups = int(rng.choice([1, 1, 2, 3]))
    cg, og = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    size = [int(rng.integers(3, 9 if nd == 3 else 14)) for _ in range(nd)]
    k = [int(rng.integers(1, 4)) for _ in range(nd)]
    kw = dict(
        stride=tuple(int(rng.integers(1, 4)) for _ in range(nd)),
        dilation=tuple(int(rng.integers(1, 3)) for _ in range(nd)),
        groups=groups,
        padding_mode=str(rng.choice(MODES)),
    )
    if transposed:
        kw["padding"] = tuple(int(rng.integers(0, 3)) for _ in range(nd))
        kw["output_padding"] = tuple(
            int(rng.integers(0, max(kw["stride"][i], kw["dilation"][i]))) for i in range(nd)
        )
        w_shape = (groups * cg, og) + tuple(k)
    else:
        kind = rng.integers(0, 3)
        if kind == 0:
            kw["padding"] = tuple(int(rng.integers(0, 3)) for _ in range(nd))
        elif kind == 1:
            kw["padding"] = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(nd))
        else:
            kw["padding"] = str(rng.choice(["same", "valid"]))
            if kw["padding"] == "same":
                kw["stride"] = (1,) * nd
        w_shape = (groups * og, cg) + tuple(k)
    batch = int(rng.integers(1, 4))
    x_shape = (batch, groups * cg) + tuple(size)
    bias = rng.standard_normal(w_shape[1] * groups if transposed else w_shape[0])
    return x_shape, w_shape, bias, kw


def _check_same(fn, x, w, b, kw, rng, what):
    try:
        ref = fn(x, w, b, **kw)
    except ValueError as exc:  # the dask call refuses it too, before any task
        with pytest.raises(ValueError, match=str(exc)[:30].replace("(", r"\(").replace(")", r"\)")):
            fn(da.from_array(x), w, b, **kw)
        return 0
    K = w[0].size
    tol = 8.0 * np.finfo(x.dtype).eps * np.sqrt(K) * fn(np.abs(x), np.abs(w), np.abs(b), **kw).max()
    for _ in range(3):
        chunks = _chunking(rng, x.shape, 2)
        y = fn(da.from_array(x, chunks=chunks), w, b, **kw)
        assert isinstance(y, da.Array)
        assert y.shape == ref.shape and y.dtype == ref.dtype
        got = y.compute(scheduler="threads")
        assert_close(got, ref, tol, f"{what} chunks {chunks} {kw}")
    return 1


@pytest.mark.parametrize("seed", range(6))
def test_conv_random_sweep(seed):
    rng = np.random.default_rng(100 + seed)
    ran = 0
    for _ in range(8):
        xs, ws, b, kw = _conv_case(rng)
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        ran += _check_same(nc.conv, x, w, b, kw, rng, "conv")
    assert ran >= 3


@pytest.mark.parametrize("seed", range(6))
def test_conv_transpose_random_sweep(seed):
    rng = np.random.default_rng(200 + seed)
    ran = 0
    for _ in range(8):
        xs, ws, b, kw = _conv_case(rng, transposed=True)
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        ran += _check_same(nc.conv_transpose, x, w, b, kw, rng, "conv_transpose")
    assert ran >= 3


@pytest.mark.parametrize("dtype", [np.float32, np.complex64])
def test_conv_dtypes_unbatched_and_channel_chunks(dtype):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((10, 21, 19)).astype(dtype)  # unbatched (C, H, W)
    w = rng.standard_normal((6, 10, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    ref = nc.conv2d(x, w, b, padding=1, padding_mode="reflect")
    tol = tolerance(dtype, 90, x[None], w, b, pads=((1, 1), (1, 1)), mode="reflect")
    for chunks in [(3, 5, 4), (10, 21, 19), (1, 7, 19)]:  # channel chunks: partial sums
        y = nc.conv2d(da.from_array(x, chunks=chunks), w, b, padding=1, padding_mode="reflect")
        assert y.dtype == ref.dtype and y.shape == ref.shape
        assert_close(y.compute(), ref, tol, f"chunks {chunks}")


def test_grouped_channel_chunks_move_to_whole_groups():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 12, 15, 15))
    w = rng.standard_normal((8, 3, 3, 3))
    y = nc.conv2d(da.from_array(x, chunks=(1, 5, 8, 8)), w, groups=4, padding=1)
    e = nc.explain("conv", da.from_array(x, chunks=(1, 5, 8, 8)), w, groups=4, padding=1)
    assert "whole groups" in str(e)
    np.testing.assert_allclose(y.compute(), nc.conv2d(x, w, groups=4, padding=1), rtol=1e-12, atol=1e-12)


def test_large_kernel_blocks_use_fft_and_match():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 2, 150, 140)).astype(np.float32)
    w = rng.standard_normal((2, 2, 31, 31)).astype(np.float32)
    ref = nc.conv2d(x, w, padding=15)
    y = nc.conv2d(da.from_array(x, chunks=(1, 2, 64, 64)), w, padding=15, method="fft")
    tol = tolerance(np.float32, 2 * 31 * 31, x, w, None, pads=((15, 15), (15, 15)))
    assert_close(y.compute(), ref, tol, "fft blocks")


def test_lazy_no_compute_and_weight_once():
    calls = []

    def source(block):
        if block.size:  # map_blocks calls it on an empty block for its meta
            calls.append(1)
        return block

    x = da.ones((2, 3, 40, 40), chunks=(1, 3, 10, 10)).map_blocks(source, dtype=float)
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3))
    y = nc.conv2d(x, w, padding=1)
    assert calls == [] and isinstance(y, da.Array)
    graph = dict(y.__dask_graph__())
    held = [k for k, v in graph.items() if isinstance(v, np.ndarray) and v.shape == w.shape]
    assert len(held) == 1, "the weight must be one key of the graph, not one copy per task"
    np.testing.assert_allclose(y.compute(), nc.conv2d(np.ones((2, 3, 40, 40)), w, padding=1), rtol=1e-12)


def test_dask_weight_and_bias_are_computed_once():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 2, 12, 12))
    w, b = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    y = nc.conv2d(da.from_array(x, chunks=6), da.from_array(w), da.from_array(b), padding=1)
    np.testing.assert_allclose(y.compute(), nc.conv2d(x, w, b, padding=1), rtol=1e-12, atol=1e-12)


def test_errors_before_any_task():
    x = da.zeros((1, 2, 8, 8), chunks=4)
    w = np.zeros((3, 2, 3, 3))
    with pytest.raises(TypeError, match="out="):
        nc.conv2d(x, w, out=np.zeros((1, 3, 6, 6)))
    with pytest.raises(ValueError, match="stride"):
        nc.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="channel mismatch"):
        nc.conv2d(x, np.zeros((3, 5, 3, 3)))
    with pytest.raises(ValueError, match="reflect"):
        nc.conv2d(x, w, padding=9, padding_mode="reflect")
    with pytest.raises(TypeError, match="input"):
        nc.conv2d(da.zeros((1, 2, 8, 8), dtype=object, chunks=4), w)
    with pytest.raises(ValueError, match="device"):
        nc.conv2d(x, w, device="tpu")
    with pytest.raises(ValueError, match="run on the CPU"):
        nc.conv_transpose2d(x, np.zeros((2, 3, 3, 3)), device="cuda")
    with pytest.raises(TypeError, match="output="):
        nnd.correlate(da.zeros((8, 8), chunks=4), np.ones((3, 3)), output=np.zeros((8, 8)))
    with pytest.raises(RuntimeError, match="boundary mode"):
        nnd.correlate(da.zeros((8, 8), chunks=4), np.ones((3, 3)), mode="bogus")
    with pytest.raises(ValueError, match="Acceptable boundary"):
        ns.convolve2d(da.zeros((8, 8), chunks=4), np.ones((3, 3)), boundary="bogus")


def test_empty_inputs():
    w = np.ones((3, 2, 3, 3))
    assert nc.conv2d(da.zeros((0, 2, 8, 8), chunks=(1, 2, 4, 4)), w, padding=1).compute().shape == (
        0,
        3,
        8,
        8,
    )
    y = nc.conv_transpose2d(da.zeros((0, 2, 4, 4), chunks=2), np.ones((2, 3, 3, 3)), stride=2)
    assert y.compute().shape == (0, 3, 9, 9)
    y = nnd.correlate(da.zeros((0, 5), chunks=2), np.ones((3, 3)))
    assert y.shape == (0, 5) and y.compute().shape == (0, 5)


def test_import_does_not_import_dask():
    code = "import sys, numbaconv, numbaconv.signal, numbaconv.ndimage; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- SciPy front-ends ---------------------------------------------------------

NDIMAGE_MODES = [
    "reflect",
    "constant",
    "nearest",
    "mirror",
    "wrap",
    "grid-wrap",
    "grid-constant",
    "grid-mirror",
]


@pytest.mark.parametrize("mode", NDIMAGE_MODES)
def test_ndimage_every_mode_and_function(mode):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((17, 23, 4)).astype(np.float32)
    w = rng.standard_normal((4, 3, 2))
    cases = [
        (nnd.correlate, dict(weights=w, origin=(1, -1, 0), cval=0.5)),
        (nnd.convolve, dict(weights=w, cval=-2.0)),
        (nnd.correlate, dict(weights=w[:, :, 0], axes=(0, 1))),
        (nnd.correlate1d, dict(weights=w[:, 0, 0], axis=1, origin=1)),
        (nnd.convolve1d, dict(weights=w[:, 1, 0], axis=0)),
        (nnd.sepfilter, dict(kernels=[w[:, 0, 0], w[:3, 1, 1]], axes=(0, 1), origin=(0, 1))),
    ]
    for chunks in [(5, 7, 4), (2, 3, 1), (17, 23, 4)]:
        X = da.from_array(x, chunks=chunks)
        for f, kw in cases:
            ref = f(x, mode=mode, **kw)
            y = f(X, mode=mode, **kw)
            assert y.dtype == ref.dtype and y.shape == ref.shape
            got = y.compute()
            scale = float(np.abs(ref).max())
            assert np.abs(got - ref).max() <= 8 * np.finfo(np.float32).eps * np.sqrt(24) * scale, (f, chunks)


def test_ndimage_output_chunks_are_the_input_chunks():
    """Output i goes with input i's chunk (SciPy's filters keep the shape):
    even kernels and origins do not shift the chunks; each block's slab holds
    only what its outputs read (no halo outputs computed and cropped)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((40, 36)).astype(np.float32)
    X = da.from_array(x, chunks=(10, 12))
    w = rng.standard_normal((4, 6))
    for f, kw in [
        (nnd.correlate, dict(origin=(1, -2))),
        (nnd.convolve, dict(origin=(-1, 2), mode="mirror")),
        (nnd.correlate, dict(mode="wrap")),
    ]:
        y = f(X, w, **kw)
        assert y.chunks == X.chunks, (f, kw)
        ref = f(x, w, **kw)
        got = y.compute()
        assert np.abs(got - ref).max() <= 8 * np.finfo(np.float32).eps * np.sqrt(24) * np.abs(ref).max()


def test_ndimage_mode_per_axis_and_integers():
    rng = np.random.default_rng(4)
    x = (rng.random((33, 29)) * 255).astype(np.uint8)
    X = da.from_array(x, chunks=(8, 7))
    ks = [np.array([1.0, 2.0, 1.0]) / 4, np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16]
    for modes in (["wrap", "reflect"], ["constant", "mirror"], ["nearest", "grid-wrap"]):
        ref = nnd.sepfilter(x, ks, mode=modes, cval=9)
        got = nnd.sepfilter(X, ks, mode=modes, cval=9).compute()
        assert got.dtype == np.uint8 and np.array_equal(got, ref), modes
    ref = nnd.correlate(x, np.ones((3, 5)) / 15, output=np.float64, mode="constant", cval=7.5)
    got = nnd.correlate(X, np.ones((3, 5)) / 15, output=np.float64, mode="constant", cval=7.5).compute()
    np.testing.assert_allclose(got, ref, rtol=1e-12)


@pytest.mark.parametrize("mode", ["full", "same", "valid"])
def test_signal_functions(mode):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 41))
    xi = rng.integers(-50, 50, (30, 33))
    for chunks in [(10, 9), (3, 2), (37, 41)]:
        X = da.from_array(x, chunks=chunks)
        for k in [(5, 4), (1, 3), (4, 1)]:
            w = rng.standard_normal(k) + 1j * rng.standard_normal(k)
            for f in (ns.convolve, ns.correlate, ns.fftconvolve, ns.oaconvolve):
                ref = f(x, w, mode=mode)
                got = f(X, w, mode=mode).compute()
                assert got.shape == ref.shape and got.dtype == ref.dtype, f
                assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max() * 10, (f, chunks, k)
            for boundary, fill in [("fill", 0), ("fill", 2.5), ("wrap", 0), ("symm", 0)]:
                for f in (ns.convolve2d, ns.correlate2d):
                    ref = f(x, w, mode=mode, boundary=boundary, fillvalue=fill)
                    got = f(X, w, mode=mode, boundary=boundary, fillvalue=fill).compute()
                    assert got.shape == ref.shape and got.dtype == ref.dtype
                    assert np.abs(got - ref).max() <= 1e-11 * np.abs(ref).max(), (f, boundary, chunks)
    XI = da.from_array(xi, chunks=(7, 8))
    kern = np.arange(6).reshape(2, 3)
    for f in (ns.convolve, ns.correlate2d):
        ref = f(xi, kern, mode=mode)
        got = f(XI, kern, mode=mode).compute()
        assert got.dtype == ref.dtype and np.array_equal(got, ref), f


def test_signal_long_1d_and_axes():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(20001)
    h = rng.standard_normal(301)
    X = da.from_array(x, chunks=1500)
    for mode in ("full", "same", "valid"):
        ref = ns.convolve(x, h, mode=mode)
        got = ns.convolve(X, h, mode=mode).compute()
        assert np.abs(got - ref).max() <= 1e-12 * np.abs(ref).max() * 30
    x2 = rng.standard_normal((6, 500))
    ref = ns.fftconvolve(x2, h[None, :51], mode="same", axes=1)
    got = ns.fftconvolve(da.from_array(x2, chunks=(2, 128)), h[None, :51], mode="same", axes=1).compute()
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="size 1 along the axes not convolved"):
        ns.convolve(da.from_array(x2), rng.standard_normal((6, 5)), axes=1)


# --- planner, threads, explain -------------------------------------------------


def test_planner_splits_blocks_within_the_budget():
    x = da.zeros((2, 8, 600, 600), chunks=(2, 8, 600, 600), dtype=np.float32)
    w = np.zeros((8, 8, 15, 15), np.float32)
    with config.override(workspace_bytes=2 * 2**20):
        layout = nc.explain("conv", x, w, padding=7).chunking
        blocks = [max(c) for c in layout.output_chunks[2:]]
        halo = 2 * 8 * 4 * ((blocks[0] + 14) * (blocks[1] + 14) - blocks[0] * blocks[1])
        assert halo <= 2**20 and "split" in " ".join(layout.reasons)
        y = nc.conv2d(x, w, padding=1)
    assert y.numblocks == tuple(len(c) for c in layout.output_chunks)
    assert y.numblocks[2] * y.numblocks[3] > 1


def test_tiny_chunks_rechunked_and_explained():
    x = da.zeros((1, 1, 300), chunks=(1, 1, 2))
    e = nc.explain("conv", x, np.ones((1, 1, 9)), padding=4)
    assert "shorter than the halo" in str(e) and "rechunked" in str(e)
    np.testing.assert_array_equal(nc.conv1d(x, np.ones((1, 1, 9)), padding=4).compute(), 0)


def test_task_threads_divide_the_cores():
    import numba

    cores = numba.config.NUMBA_NUM_THREADS
    seen = []

    def probe(block):
        if block.size:  # not map_blocks' meta call
            seen.append((lazy.worker_threads(), lazy.task_threads()))
        return block

    for workers in (2, 3):
        with dask.config.set(num_workers=workers):
            da.ones(4, chunks=1).map_blocks(probe, meta=np.array((), float)).compute(scheduler="threads")
        assert len(seen) == 4 and all(w == workers and t == max(1, cores // workers) for w, t in seen), seen
        seen.clear()
    da.ones(2, chunks=1).map_blocks(probe, meta=np.array((), float)).compute(scheduler="sync")
    assert all(w == 1 and t == cores for w, t in seen), seen
    with config.override(dask_numba_threads=1):
        assert lazy.task_threads() == 1


def test_numba_threads_restored_after_a_task():
    import numba

    before = numba.get_num_threads()
    x = da.from_array(np.ones((1, 1, 50, 50)), chunks=25)
    with dask.config.set(scheduler="sync"), config.override(dask_numba_threads=1):
        nc.conv2d(x, np.ones((1, 1, 3, 3))).compute()
    assert numba.get_num_threads() == before


# --- Zarr and a cluster of processes ---------------------------------------------


def test_zarr_in_and_out(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(11)
    vol = rng.standard_normal((24, 30, 28)).astype(np.float32)
    z = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=vol.shape, chunks=(8, 10, 14), dtype="f4")
    z[...] = vol
    w = rng.standard_normal((3, 3, 3)).astype(np.float32)
    y = nnd.correlate(da.from_zarr(str(tmp_path / "in.zarr")), w, mode="nearest")
    y.to_zarr(str(tmp_path / "out.zarr"))
    got = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    np.testing.assert_allclose(got, nnd.correlate(vol, w, mode="nearest"), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def test_random_sweep_on_a_cluster_of_processes(cluster_client):
    """The random sweep's configurations and chunkings computed by two
    worker processes, against the in-memory calls."""
    rng = np.random.default_rng(300)
    checked = 0
    for fn, transposed in ((nc.conv, False), (nc.conv_transpose, True)) * 4:
        xs, ws, b, kw = _conv_case(rng, transposed=transposed)
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        try:
            ref = fn(x, w, b, **kw)
        except ValueError:
            continue
        K = w[0].size
        tol = 8.0 * np.finfo(x.dtype).eps * np.sqrt(K) * fn(np.abs(x), np.abs(w), np.abs(b), **kw).max()
        ys = [fn(da.from_array(x, chunks=_chunking(rng, x.shape, 2)), w, b, **kw) for _ in range(2)]
        for y in cluster_client.compute(ys, sync=True):
            assert_close(y, ref, tol, f"{fn.__name__} {kw}")
            checked += 1
    assert checked >= 6


def test_local_cluster_with_processes(cluster_client):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 4, 40, 36))
    w = rng.standard_normal((4, 4, 3, 3))
    wt = rng.standard_normal((4, 2, 4, 4))
    X = da.from_array(x, chunks=(1, 2, 20, 18))
    y = nc.conv2d(X, w, padding=1, padding_mode="circular", stride=(1, 2))
    yt = nc.conv_transpose2d(X, wt, stride=2, padding=1, groups=2)
    yf = nnd.correlate(X[0, 0], w[0, 0], mode="mirror")
    got, got_t, got_f = cluster_client.compute([y, yt, yf], sync=True)
    cluster_client.wait_for_workers(2)
    workers = list(cluster_client.run(lambda: None))  # every worker (cached scheduler_info may lag)
    threads = {w: cluster_client.submit(lazy.task_threads, pure=False, workers=[w]).result() for w in workers}
    ref = nc.conv2d(x, w, padding=1, padding_mode="circular", stride=(1, 2))
    np.testing.assert_allclose(got, ref, rtol=1e-12)
    # the whole array and its blocks may take different methods (auto, by
    # their sizes: Winograd phases or the direct region), so the transposed
    # result is held to the methods' test bound, 8 eps sqrt(K) max(|x| (*) |w|)
    ref_t = nc.conv_transpose2d(x, wt, stride=2, padding=1, groups=2)
    bound = nc.conv_transpose2d(np.abs(x), np.abs(wt), stride=2, padding=1, groups=2).max()
    assert_close(got_t, ref_t, 8.0 * np.finfo(x.dtype).eps * np.sqrt(wt[0].size) * bound, "conv_transpose2d")
    np.testing.assert_allclose(got_f, nnd.correlate(x[0, 0], w[0, 0], mode="mirror"), rtol=1e-12)
    import numba

    # two worker processes on this host, one thread each: the cores shared between them
    assert sorted(threads.values()) == [max(1, numba.config.NUMBA_NUM_THREADS // 2)] * 2
