"""The out-of-core job of ``numbaconv bench --dask``: a float32 volume in
Zarr on disk, larger than the memory its workers are given, filtered block
by block on a ``distributed.LocalCluster`` (processes) and written back to
Zarr, with a progress bar; beside it the same filter with dask-image and in
memory.

Reports: the job's throughput (input GB/s) with 1 and 2 workers, each
worker's peak memory (sampled) against its limit, dask-image's throughput
on the same job, and on a volume that fits in memory the dask call's time
against the in-memory call's (the overhead of blocks and halos).

The filter is :func:`numbaconv.ndimage.correlate` with a dense ``k x k x
k`` kernel, mode 'reflect' (dask-image's ``ndfilters.correlate`` takes the
same arguments)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

from . import lazy
from . import ndimage as nnd


def _zarr_array(path: str, shape, chunks):
    """An uncompressed float32 Zarr array (the job measures the filter and
    the disk, not a codec)."""
    import zarr

    if hasattr(zarr, "create_array"):  # zarr 3
        return zarr.create_array(
            path, shape=shape, chunks=chunks, dtype="f4", compressors=None, overwrite=True
        )
    return zarr.open_array(path, mode="w", shape=shape, chunks=chunks, dtype="f4", compressor=None)


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class _PeakMemory:
    """Each worker's resident memory, polled every ``every`` seconds while
    the block runs: ``peaks`` maps worker address to its largest reading."""

    def __init__(self, client, every: float = 0.2):
        self.client, self.every = client, every
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            try:
                for addr, rss in self.client.run(_rss).items():
                    self.peaks[addr] = max(self.peaks.get(addr, 0), rss)
            except Exception:  # pragma: no cover - a worker restarting
                pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _store(y, path: str, client, progress: bool) -> float:
    """``y`` written to a new Zarr array at ``path`` on the cluster; seconds."""
    import dask.array as da
    from distributed import progress as bar
    from distributed import wait

    target = _zarr_array(path, y.shape, tuple(c[0] for c in y.chunks))
    t = time.perf_counter()
    job = client.compute(da.store(y, target, lock=False, compute=False))
    if progress:
        bar(job)
        print(file=sys.stderr)
    wait(job)
    job.result()
    return time.perf_counter() - t


def _volume(path: str, shape, chunks, client) -> None:
    import dask.array as da

    x = da.random.default_rng(0).random(shape, chunks=chunks, dtype=np.float32)
    client.compute(da.store(x, _zarr_array(path, shape, chunks), lock=False, compute=False)).result()


def _cluster_job(src, dst, weights, workers, memory, progress, use_dask_image=False):
    """The filter from Zarr ``src`` to Zarr ``dst`` on ``workers`` worker
    processes (one thread each) with ``memory`` each: seconds and peaks."""
    import dask.array as da
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory,
            dashboard_address=":0",
            silence_logs=50,
        ) as cluster,
        Client(cluster) as client,
    ):
        x = da.from_zarr(src)
        if use_dask_image:
            from dask_image import ndfilters

            y = ndfilters.correlate(x, weights, mode="reflect")
        else:
            y = nnd.correlate(x, weights, mode="reflect")
        with _PeakMemory(client) as mem:
            seconds = _store(y, dst, client, progress)
        limit = min(w["memory_limit"] for w in client.scheduler_info()["workers"].values())
    return seconds, mem.peaks, limit


def _in_memory(gb: float, weights, chunk) -> dict:
    """On a volume of ``gb`` that fits in memory: the in-memory call, the
    dask call on the same array (threads), dask-image's; best of two."""
    import dask.array as da

    n = max(chunk, int(round((gb * 2**30 / 4) ** (1 / 3) / chunk)) * chunk)
    vol = np.random.default_rng(1).random((n, n, n), dtype=np.float32)

    def best(fn):
        fn()
        return min(_timed(fn) for _ in range(2))

    out = {"shape": (n, n, n)}
    out["in_memory_s"] = best(lambda: nnd.correlate(vol, weights, mode="reflect"))
    x = da.from_array(vol, chunks=chunk)
    target = np.empty_like(vol)  # the blocks stored in place (no final concatenation)
    out["dask_s"] = best(
        lambda: da.store(nnd.correlate(x, weights, mode="reflect"), target, lock=False, scheduler="threads")
    )
    out["max_abs_error"] = float(np.abs(target - nnd.correlate(vol, weights, mode="reflect")).max())
    try:
        from dask_image import ndfilters

        out["dask_image_s"] = _timed(lambda: ndfilters.correlate(x, weights, mode="reflect").compute())
    except ImportError:
        out["dask_image_s"] = None
    out["gb"] = vol.nbytes / 1e9
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run(
    gb: float = 8.0,
    worker_memory: str = "2GB",
    kernel: int = 5,
    chunk: int = 256,
    fits_gb: float = 0.5,
    path: str | None = None,
    workers=(1, 2),
    peers: bool = True,
    progress: bool = True,
) -> dict:
    """The out-of-core job (see the module docstring); returns its figures.

    ``gb``: the volume's size on disk (float32, shape ``(depth, 1024, 1024)``
    rounded to whole chunks); ``worker_memory``: each worker's limit;
    ``chunk``: the Zarr chunk edge (``chunk x chunk x chunk``, 64 MiB at
    256); ``fits_gb``: the in-memory comparison's volume; ``path``: where
    the Zarr arrays go (default a temporary directory, removed after)."""
    lazy.require_dask()
    from distributed import Client, LocalCluster

    side = 1024
    depth = max(chunk, int(round(gb * 2**30 / 4 / side**2 / chunk)) * chunk)
    shape, chunks = (depth, side, side), (chunk, chunk, chunk)
    root = path or tempfile.mkdtemp(prefix="numbaconv-dask-")
    weights = np.random.default_rng(2).random((kernel,) * 3).astype(np.float32)
    weights /= weights.sum()
    figures: dict = {"shape": shape, "chunks": chunks, "data_gb": np.prod(shape) * 4 / 1e9, "kernel": kernel}
    figures["worker_memory"] = worker_memory
    try:
        src = os.path.join(root, "volume.zarr")
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", silence_logs=50) as c:
            with Client(c) as client:
                t = time.perf_counter()
                _volume(src, shape, chunks, client)
                figures["write_input_s"] = time.perf_counter() - t
        for n in workers:
            s, peaks, limit = _cluster_job(
                src, os.path.join(root, f"out{n}.zarr"), weights, n, worker_memory, progress
            )
            figures[f"workers_{n}"] = {
                "seconds": s,
                "gb_per_s": figures["data_gb"] / s,
                "peak_worker_bytes": max(peaks.values()) if peaks else None,
                "limit_bytes": limit,
            }
        check = _check_sample(src, os.path.join(root, f"out{workers[-1]}.zarr"), weights)
        figures["sample_max_abs_error"] = check
        if peers:
            try:
                s, peaks, limit = _cluster_job(
                    src,
                    os.path.join(root, "dask_image.zarr"),
                    weights,
                    workers[-1],
                    worker_memory,
                    progress,
                    use_dask_image=True,
                )
                figures["dask_image"] = {
                    "seconds": s,
                    "gb_per_s": figures["data_gb"] / s,
                    "peak_worker_bytes": max(peaks.values()) if peaks else None,
                }
            except ImportError:
                figures["dask_image"] = None
        figures["fits_in_memory"] = _in_memory(fits_gb, weights, chunk)
    finally:
        if path is None:
            shutil.rmtree(root, ignore_errors=True)
    return figures


def _check_sample(src: str, dst: str, weights) -> float:
    """The job's output against the in-memory filter on a corner and an
    interior box of the volume (the box's own edges excluded)."""
    import zarr

    x, y = zarr.open_array(src, mode="r"), zarr.open_array(dst, mode="r")
    k = weights.shape[0]
    err = 0.0
    for start in ((0, 0, 0), tuple(n // 2 - 40 for n in x.shape)):
        box = tuple(slice(s, s + 80) for s in start)
        ref = nnd.correlate(np.asarray(x[box]), weights, mode="reflect")
        inner = tuple(slice(0 if s == 0 else k, 80 - k) for s in start)
        got = np.asarray(y[box])
        err = max(err, float(np.abs(got[inner] - ref[inner]).max()))
    return err


def report(f: dict) -> str:
    """The figures as text."""
    gb = f["data_gb"]
    lines = [
        f"volume {f['shape']} float32 ({gb:.2f} GB) in Zarr chunks {f['chunks']}, "
        f"{f['kernel']}^3 correlate, mode 'reflect'; workers limited to {f['worker_memory']} each",
        f"  writing the input: {f['write_input_s']:.1f} s",
    ]
    for key in sorted(k for k in f if k.startswith("workers_")):
        w = f[key]
        peak = w["peak_worker_bytes"] or 0
        lines.append(
            f"  numbaconv, {key.split('_')[1]} worker(s): {w['seconds']:.1f} s, {w['gb_per_s']:.2f} GB/s, "
            f"peak worker memory {peak / 2**30:.2f} GiB of {w['limit_bytes'] / 2**30:.2f} GiB"
        )
    if f.get("dask_image"):
        d = f["dask_image"]
        lines.append(f"  dask-image ndfilters.correlate: {d['seconds']:.1f} s, {d['gb_per_s']:.2f} GB/s")
    lines.append(f"  sample check, max |error| vs the in-memory filter: {f['sample_max_abs_error']:.2e}")
    m = f["fits_in_memory"]
    lines.append(
        f"  fits in memory {m['shape']} ({m['gb']:.2f} GB): in-memory {m['in_memory_s']:.2f} s, "
        f"dask (threads) {m['dask_s']:.2f} s = {m['in_memory_s'] / m['dask_s']:.2f}x the in-memory throughput"
        + (f", dask-image {m['dask_image_s']:.2f} s" if m.get("dask_image_s") else "")
    )
    return "\n".join(lines)
