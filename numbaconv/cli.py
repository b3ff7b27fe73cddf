"""The ``numbaconv`` command: ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _cuda_status() -> tuple[bool, str]:
    """Whether CUDA is usable and, if not, why. Never imports numba.cuda eagerly elsewhere."""
    try:
        import importlib.util

        if importlib.util.find_spec("numba_cuda") is None:
            return False, "numba-cuda is not installed (pip install numbaconv[cuda])"
        from numba import cuda

        if not cuda.is_available():
            return False, "numba-cuda is installed but no usable CUDA driver/GPU was found"
        return False, "a GPU is present, but this version of numbaconv has no GPU kernels yet"
    except Exception as exc:  # a broken driver install must not crash `info`
        return False, f"CUDA check failed: {exc}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info() -> dict:
    import numba
    import numpy
    import scipy

    from . import __version__, config

    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet: run a trivial one
        from numba import njit, prange

        @njit(parallel=True)
        def _touch(n):
            s = 0
            for i in prange(n):
                s += i
            return s

        _touch(4)
        layer = numba.threading_layer()
    usable, why = _cuda_status()
    return {
        "numbaconv": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "scipy": scipy.__version__,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": layer,
        "cuda_usable": usable,
        "cuda_reason": why,
        "numbaconv_cache_dir": config.cache_dir,
        "numba_cache_dir": numba.config.CACHE_DIR or "(next to the package sources, __pycache__)",
        "workspace_bytes": config.workspace_bytes,
    }


def _peer_torch():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    torch.set_num_threads(int(os.environ.get("NUMBACONV_BENCH_THREADS", "2")))
    return torch, F


def _settle_allocator() -> None:
    """Free one 30 MiB block first, so that glibc keeps later large blocks on its
    heap (its mmap threshold rises to the size of a freed mmapped block): the
    outputs of both contenders then come without fresh page faults. Without
    it, whichever workloads ran earlier decide that (PyTorch's conv_transpose
    measured 2x faster after the conv cases than alone)."""
    import numpy as np

    block = np.ones(30 * 2**20 // 8)
    del block


def gemm_peak_gflops(n: int = 2048, calls: int = 5) -> float:
    """This machine's float32 GEMM rate (NumPy's BLAS, all threads), GFLOP/s."""
    import numpy as np

    a = np.ones((n, n), np.float32)
    b = np.ones((n, n), np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    return 2 * n**3 / _block_time(lambda: np.matmul(a, b, out=c), calls, rest=0.0) / 1e9


def _peak_extra_bytes(fn, result_bytes: int) -> int:
    """Peak memory NumPy allocates during ``fn()`` beyond its result (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return max(0, peak - result_bytes)


def _block_time(fn, calls: int = 3, rest: float = 0.1) -> float:
    """Best of ``calls`` back-to-back calls of ``fn`` (seconds), after ``rest``
    seconds idle: OpenBLAS's and OpenMP's worker threads spin for tens of ms
    after a call and would slow the other contender's block (PyTorch's 3x3
    conv measured 9.5 ms right after numbaconv's GEMM path, 5.1 ms after a
    0.1 s pause)."""
    time.sleep(rest)
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


_OPS = ("conv", "conv_transpose", "signal")


def _setup(op, xs, ws, kw, rng, torch_peer):
    """Arrays, FLOP count, the calls to time per method, the auto choice and the peer."""
    import numpy as np

    from . import api, dispatch
    from . import signal as nsignal
    from .shapes import make_conv_plan, make_conv_transpose_plan

    if op == "signal":  # scipy.signal.convolve semantics, float64
        import scipy.signal as ss

        x = rng.standard_normal(xs)
        w = rng.standard_normal(ws)
        mode = kw.get("mode", "full")
        taps = int(np.prod(ws))
        outs = int(np.prod([a + b - 1 if mode == "full" else a for a, b in zip(xs, ws)]))
        calls = {m: (lambda m=m: nsignal.convolve(x, w, method=m, **kw)) for m in ("direct", "fft")}
        calls["auto"] = lambda: nsignal.convolve(x, w, **kw)
        auto = nsignal.choose_conv_method(x, w, mode)
        return 2 * outs * taps, calls, auto, "scipy", (lambda: ss.convolve(x, w, **kw))
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    if op == "conv":
        plan = make_conv_plan(xs, ws, None, dtype=np.float32, **kw)
        run = api.conv
    else:
        plan = make_conv_transpose_plan(xs, ws, None, dtype=np.float32, **kw)
        run = api.conv_transpose
    calls = {m: (lambda m=m: run(x, w, method=m, **kw)) for m in dispatch.method_names(op) if m != "auto"}
    calls["auto"] = lambda: run(x, w, **kw)
    auto = dispatch.select(op, plan, "auto").name
    peer = None
    if torch_peer is not None:
        torch, F = torch_peer
        fns = {
            "conv": (F.conv1d, F.conv2d, F.conv3d),
            "conv_transpose": (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d),
        }
        fn = fns[op][len(ws) - 3]
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        peer = lambda: fn(tx, tw, **kw).numpy()  # noqa: E731
    return plan.flops, calls, auto, "torch", peer


def bench(quick: bool = False, case: str | None = None, repeat: int = 5) -> list[dict]:
    """Time the workloads: every method and ``auto`` beside the peer (PyTorch
    CPU for conv ops if installed, scipy.signal.convolve for signal ops), in
    the same process."""
    import numpy as np

    from . import dispatch
    from .workloads import WORKLOADS

    rows = [w for w in WORKLOADS if w[1] in _OPS]
    if case:
        rows = [w for w in rows if w[0] == case]
        if not rows:
            names = ", ".join(w[0] for w in WORKLOADS if w[1] in _OPS)
            raise SystemExit(f"unknown case {case!r}; the cases are: {names}")
    elif quick:
        rows = [w for w in rows if w[0] in ("resnet_3x3_c64", "depthwise_3x3_c32", "unet_up_2x2s2")]
    torch_peer = _peer_torch()
    _settle_allocator()
    peak = gemm_peak_gflops()
    rng = np.random.default_rng(0)
    results = []
    for name, op, xs, ws, kw in rows:
        flops, calls, auto_choice, peer_name, peer = _setup(op, xs, ws, kw, rng, torch_peer)
        ref = None if peer is None else np.asarray(peer())
        for method, call in calls.items():
            t0 = time.perf_counter()
            try:
                y = call()
            except dispatch.UnsupportedMethodError:
                continue
            first = time.perf_counter() - t0
            err = None
            if ref is not None:
                err = float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))
            # Alternate short blocks A A A, B B B, ... and keep each block's best:
            # strictly alternating single calls measures the other runtime's
            # OpenMP threads still spinning and its allocator churn (PyTorch's
            # depthwise conv measured 10 ms that way vs 2 ms in a block).
            times, ratios = [], []
            for _ in range(repeat):
                t = _block_time(call)
                times.append(t)
                if peer is not None:
                    ratios.append(_block_time(peer) / t)
            med = float(np.median(times))
            extra = _peak_extra_bytes(call, y.nbytes)
            results.append(
                {
                    "case": name,
                    "op": op,
                    "output_shape": list(y.shape),
                    "method": f"auto:{auto_choice}" if method == "auto" else method,
                    "first_call_s": first,
                    "median_s": med,
                    "gflops": flops / med / 1e9,
                    "fraction_of_gemm_peak": flops / med / 1e9 / peak,
                    "gemm_peak_gflops": peak,
                    "peak_extra_bytes": extra,
                    "peer": peer_name if peer is not None else None,
                    "peer_ratio": float(np.median(ratios)) if ratios else None,
                    "max_rel_err_vs_peer": err,
                }
            )
    return results


def _print_bench(results: list[dict]) -> None:
    head = (
        f"{'case':22s} {'output shape':>22s} {'method':>14s} {'first s':>8s} "
        f"{'median ms':>10s} {'GFLOP/s':>8s} {'peak':>5s} {'extra MiB':>9s} {'peer/nc':>13s}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        ratio = "n/a" if r["peer_ratio"] is None else f"{r['peer']} {r['peer_ratio']:.2f}"
        print(
            f"{r['case']:22s} {str(tuple(r['output_shape'])):>22s} {r['method']:>14s} "
            f"{r['first_call_s']:8.2f} {r['median_s'] * 1e3:10.2f} {r['gflops']:8.1f} "
            f"{r['fraction_of_gemm_peak']:5.2f} {r['peak_extra_bytes'] / 2**20:9.1f} {ratio:>13s}"
        )
    if results:
        print(
            "peak: fraction of this machine's float32 GEMM rate "
            f"({results[0]['gemm_peak_gflops']:.0f} GFLOP/s); "
            "extra MiB: peak memory beyond the result (tracemalloc)"
        )
    print(
        "peer/nc: the peer's time / numbaconv's time (> 1 means numbaconv is faster); peers: "
        "PyTorch CPU (conv ops), scipy.signal.convolve method='auto' (signal ops)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="numbaconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, CPU, threads, CUDA status, cache directory")
    p_info.add_argument("--json", action="store_true")
    p_bench = sub.add_parser(
        "bench", help="time every method on the built-in conv/conv_transpose workloads beside PyTorch"
    )
    p_bench.add_argument("--quick", action="store_true", help="three small cases only")
    p_bench.add_argument("--case", help="one workload by name")
    p_bench.add_argument("--repeat", type=int, default=5)
    p_bench.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "info":
        data = info()
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            for k, v in data.items():
                print(f"{k:20s} {v}")
    elif args.command == "bench":
        results = bench(quick=args.quick, case=args.case, repeat=args.repeat)
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            _print_bench(results)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
