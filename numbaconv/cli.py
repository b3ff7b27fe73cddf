"""The ``numbaconv`` command: ``info`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def _cuda_status() -> tuple[bool, str]:
    """Whether the GPU methods can run here and, if not, why (imports
    numba.cuda only when numba-cuda is installed)."""
    from .cuda import status

    return status()


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


def _block_time(fn, calls: int = 3, rest: float | None = None) -> float:
    """Best of ``calls`` back-to-back calls of ``fn`` (seconds), after ``rest``
    seconds idle (default ``costs.REST_S``): OpenBLAS's and OpenMP's worker
    threads spin after a call and would slow the other contender's block
    (PyTorch's 3x3 conv measured 9.5 ms right after numbaconv's GEMM path, 5.1
    ms after a 0.1 s pause; an FFT conv 20 ms instead of 1 ms 0.05-0.1 s after
    a matmul)."""
    from .costs import REST_S, _block_best

    return _block_best(fn, calls, REST_S if rest is None else rest)


def _torch_fn(F, op: str, ndim: int):
    """PyTorch's functional conv / conv_transpose for ``ndim`` spatial dims."""
    fns = {
        "conv": (F.conv1d, F.conv2d, F.conv3d),
        "conv_transpose": (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d),
    }
    return fns[op][ndim - 1]


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
        return 2 * outs * taps, calls, auto, "scipy", (lambda: ss.convolve(x, w, **kw)), (x, w)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    if op == "conv":
        plan = make_conv_plan(xs, ws, None, dtype=np.float32, **kw)
        run = api.conv
    else:
        plan = make_conv_transpose_plan(xs, ws, None, dtype=np.float32, **kw)
        run = api.conv_transpose
    forced = [m for m in dispatch.method_names(op) if m not in dispatch.SPECIAL_METHODS]
    calls = {m: (lambda m=m: run(x, w, method=m, **kw)) for m in forced}
    calls["auto"] = lambda: run(x, w, **kw)
    auto = dispatch.select(op, plan, "auto").name
    peer = None
    tkw = _torch_kwargs(kw)
    if torch_peer is not None and tkw is not None:
        torch, F = torch_peer
        fn = _torch_fn(F, op, len(ws) - 2)
        tx, tw = torch.from_numpy(x), torch.from_numpy(w)
        peer = lambda: fn(tx, tw, **tkw).numpy()  # noqa: E731
    return plan.flops, calls, auto, "torch", peer, (x, w)


def _torch_kwargs(kw: dict) -> dict | None:
    """``kw`` as PyTorch's functional conv takes it, or None when it cannot
    (a non-zero padding mode, asymmetric padding)."""
    out = {k: v for k, v in kw.items() if not (k == "padding_mode" and v == "zeros")}
    if "padding_mode" in out:
        return None
    pad = out.get("padding", 0)
    if isinstance(pad, tuple) and any(isinstance(p, tuple | list) for p in pad):
        return None
    return out


class _Progress:
    """A progress bar on stderr (redrawn in place on a terminal, a line per
    step otherwise, nothing when disabled)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        self.done += 1
        width = 30
        fill = int(width * self.done / self.total)
        bar = "#" * fill + "." * (width - fill)
        text = f"[{bar}] {self.done}/{self.total} {label} ({time.perf_counter() - self.t0:.0f} s)"
        if self.tty:
            sys.stderr.write("\r" + text.ljust(100) + ("\n" if self.done == self.total else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _opencv_peer(op, x, w, kw):
    """OpenCV's cv2.filter2D for 2-D 'same' signal cases (``shared/workloads.py``
    names it: the fastest 2-D filter a user would reach for), when installed.
    It correlates: the kernel is flipped and anchored so the result equals
    scipy.signal.convolve(mode='same') with zero borders."""
    if op != "signal" or x.ndim != 2 or kw.get("mode") != "same":
        return None
    try:
        import cv2
    except ImportError:
        return None
    import numpy as np

    cv2.setNumThreads(int(os.environ.get("NUMBACONV_BENCH_THREADS", "2")))
    k = np.ascontiguousarray(w[::-1, ::-1])
    anchor = (w.shape[1] - 1 - w.shape[1] // 2, w.shape[0] - 1 - w.shape[0] // 2)
    return lambda: cv2.filter2D(x, -1, k, anchor=anchor, borderType=cv2.BORDER_CONSTANT)


def _reference(op, xs, ws, kw, x, w, torch_peer):
    """A float64 result to measure errors against: PyTorch in float64 when
    installed (independent of numbaconv), else numbaconv's direct method in
    float64; for signal cases scipy.signal.convolve (float64 inputs)."""
    import numpy as np

    from . import api

    if op == "signal":
        import scipy.signal as ss

        return "scipy", ss.convolve(x, w, **kw)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    tkw = _torch_kwargs(kw)
    if torch_peer is not None and tkw is not None:
        torch, F = torch_peer
        fn = _torch_fn(F, op, len(ws) - 2)
        return "torch-float64", fn(torch.from_numpy(x64), torch.from_numpy(w64), **tkw).numpy()
    run = api.conv if op == "conv" else api.conv_transpose
    method = "direct" if op == "conv" else "scatter"
    return f"numbaconv-{method}-float64", run(x64, w64, method=method, **kw)


def bench(
    quick: bool = False,
    case: str | None = None,
    repeat: int = 5,
    custom: tuple | None = None,
    progress: bool = False,
) -> list[dict]:
    """Time the workloads: every method and ``auto`` beside the peer (PyTorch
    CPU for conv ops if installed, scipy.signal.convolve for signal ops), in
    the same process. ``custom`` is one ``(name, op, input shape, weight
    shape, params)`` case instead of the built-in ones.

    Each result row has the median time, GFLOP/s, the fraction of the measured
    float32 GEMM peak, the max error against a float64 reference, the peak
    extra memory, the peer's ratio, and on the ``auto`` row the method it chose
    and its regret: auto's time / the fastest forced method's time, measured
    in alternating blocks of the two (so that the host's drift cancels)."""
    import numpy as np

    from . import dispatch
    from .workloads import WORKLOADS

    rows = [w for w in WORKLOADS if w[1] in _OPS]
    if custom is not None:
        rows = [custom]
    elif case:
        rows = [w for w in rows if w[0] == case]
        if not rows:
            names = ", ".join(w[0] for w in WORKLOADS if w[1] in _OPS)
            raise SystemExit(f"unknown case {case!r}; the cases are: {names}")
    elif quick:
        rows = [w for w in rows if w[0] in QUICK]
    torch_peer = _peer_torch()
    _settle_allocator()
    peak = gemm_peak_gflops()
    rng = np.random.default_rng(0)
    results = []
    bar = _Progress(len(rows), progress)
    for name, op, xs, ws, kw in rows:
        flops, calls, auto_choice, peer_name, peer, (x, w) = _setup(op, xs, ws, kw, rng, torch_peer)
        ref_name, ref = _reference(op, xs, ws, kw, x, w, torch_peer)
        cv = _opencv_peer(op, x, w, kw)
        ref_scale = max(float(np.max(np.abs(ref))), 1e-30)
        case_rows = {}
        for method, call in calls.items():
            t0 = time.perf_counter()
            try:
                y = call()
            except dispatch.UnsupportedMethodError:
                continue
            first = time.perf_counter() - t0
            err = float(np.max(np.abs(y - ref)) / ref_scale)
            # Alternate short blocks A A A, B B B, ... and keep each block's best:
            # strictly alternating single calls measures the other runtime's
            # OpenMP threads still spinning and its allocator churn (PyTorch's
            # depthwise conv measured 10 ms that way vs 2 ms in a block).
            times, ratios, cv_ratios = [], [], []
            for _ in range(repeat):
                t = _block_time(call)
                times.append(t)
                if peer is not None:
                    ratios.append(_block_time(peer) / t)
                if cv is not None:
                    cv_ratios.append(_block_time(cv) / t)
            med = float(np.median(times))
            extra = _peak_extra_bytes(call, y.nbytes)
            case_rows[method] = {
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
                "opencv_ratio": float(np.median(cv_ratios)) if cv_ratios else None,
                "max_rel_err": err,
                "reference": ref_name,
                "choice": auto_choice if method == "auto" else None,
                "regret": None,
            }
        forced = {m: r for m, r in case_rows.items() if m != "auto"}
        if "auto" in case_rows and forced:
            best = min(forced, key=lambda m: forced[m]["median_s"])
            pairs = [_block_time(calls["auto"]) / _block_time(calls[best]) for _ in range(2 * max(repeat, 3))]
            case_rows["auto"]["regret"] = float(np.median(pairs))
            case_rows["auto"]["fastest_forced"] = best
        results.extend(case_rows.values())
        bar.step(name)
    return results


QUICK = ("resnet_3x3_c64", "depthwise_3x3_c32", "unet_up_2x2s2")

_COLUMNS = (
    "case",
    "op",
    "output_shape",
    "method",
    "choice",
    "first_call_s",
    "median_s",
    "gflops",
    "fraction_of_gemm_peak",
    "peak_extra_bytes",
    "max_rel_err",
    "reference",
    "peer",
    "peer_ratio",
    "opencv_ratio",
    "regret",
    "fastest_forced",
    "gemm_peak_gflops",
)


def _write_csv(results: list[dict], path: str) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
        out.writeheader()
        for r in results:
            out.writerow({k: ("x".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})


def _plot(results: list[dict], path: str) -> None:
    """Time per method per case, one group of bars per case (log scale)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("--plot needs matplotlib: pip install 'numbaconv[bench]'") from exc
    cases = list(dict.fromkeys(r["case"] for r in results))
    methods = list(dict.fromkeys(r["method"].split(":")[0] for r in results))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cases)), 4.5))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs, ys = [], []
        for i, c in enumerate(cases):
            for r in results:
                if r["case"] == c and r["method"].split(":")[0] == m:
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    ys.append(r["median_s"] * 1e3)
        ax.bar(xs, ys, width, label=m)
    ax.set_yscale("log")
    ax.set_ylabel("median time (ms)")
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=8)
    ax.set_title("time per method (auto: the dispatcher's choice)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _print_bench(results: list[dict]) -> None:
    head = (
        f"{'case':22s} {'output shape':>22s} {'method':>14s} {'first s':>8s} "
        f"{'median ms':>10s} {'GFLOP/s':>8s} {'peak':>5s} {'extra MiB':>9s} {'max err':>8s} "
        f"{'peer/nc':>22s} {'regret':>6s}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        ratio = "n/a" if r["peer_ratio"] is None else f"{r['peer']} {r['peer_ratio']:.2f}"
        if r.get("opencv_ratio") is not None:
            ratio += f" cv2 {r['opencv_ratio']:.2f}"
        regret = "" if r.get("regret") is None else f"{r['regret']:.2f}"
        print(
            f"{r['case']:22s} {str(tuple(r['output_shape'])):>22s} {r['method']:>14s} "
            f"{r['first_call_s']:8.2f} {r['median_s'] * 1e3:10.2f} {r['gflops']:8.1f} "
            f"{r['fraction_of_gemm_peak']:5.2f} {r['peak_extra_bytes'] / 2**20:9.1f} "
            f"{r['max_rel_err']:8.1e} {ratio:>22s} {regret:>6s}"
        )
    if results:
        print(
            "peak: fraction of this machine's float32 GEMM rate "
            f"({results[0]['gemm_peak_gflops']:.0f} GFLOP/s); "
            "extra MiB: peak memory beyond the result (tracemalloc); max err: max |y - ref| / max |ref| "
            f"against a float64 reference ({results[0]['reference']})"
        )
    print(
        "peer/nc: the peer's time / numbaconv's time (> 1 means numbaconv is faster); peers: "
        "PyTorch CPU (conv ops), scipy.signal.convolve method='auto' (signal ops), and OpenCV's "
        "cv2.filter2D (2-D 'same' signal ops, when installed)\n"
        "regret: auto's time / the fastest forced method's time, in alternating blocks of the two"
    )


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _int_or_ints(text: str):
    vals = _ints(text)
    return vals[0] if len(vals) == 1 else vals


def _padding(text: str):
    if text in ("same", "valid"):
        return text
    vals = _ints(text)
    return vals[0] if len(vals) == 1 else vals


def _add_case_args(p, required: bool) -> None:
    """Shape and parameter options shared by ``explain`` and ``bench``."""
    p.add_argument("--input", type=_ints, required=required, help="input shape, e.g. 8,64,56,56")
    p.add_argument("--weight", type=_ints, required=required, help="weight shape, e.g. 64,64,3,3")
    p.add_argument("--bias", action="store_true", help="with a bias")
    p.add_argument("--stride", type=_int_or_ints, default=1)
    p.add_argument("--padding", type=_padding, default=0, help="int, ints, 'same' or 'valid'")
    p.add_argument("--dilation", type=_int_or_ints, default=1)
    p.add_argument("--groups", type=int, default=1)
    p.add_argument("--padding-mode", default="zeros", choices=("zeros", "reflect", "replicate", "circular"))
    p.add_argument("--output-padding", type=_int_or_ints, default=0, help="conv_transpose only")


def _case_params(args) -> dict:
    kw = dict(
        stride=args.stride,
        padding=args.padding,
        dilation=args.dilation,
        groups=args.groups,
        padding_mode=args.padding_mode,
    )
    if args.op == "conv_transpose":
        kw["output_padding"] = args.output_padding
    return kw


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="numbaconv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, CPU, threads, CUDA status, cache directory")
    p_info.add_argument("--json", action="store_true")
    p_bench = sub.add_parser(
        "bench",
        help="compare every method and auto on the built-in workloads (or one case) beside the peers",
    )
    p_bench.add_argument("--quick", action="store_true", help=f"a small subset: {', '.join(QUICK)}")
    p_bench.add_argument("--case", help="one built-in workload by name")
    p_bench.add_argument(
        "--op", choices=("conv", "conv_transpose"), help="one case given here (with --input, --weight, ...)"
    )
    _add_case_args(p_bench, required=False)
    p_bench.add_argument("--repeat", type=int, default=5, help="timed blocks per method (default 5)")
    p_bench.add_argument("--json", action="store_true", help="print the results as JSON")
    p_bench.add_argument("--csv", metavar="PATH", help="also write the results as CSV")
    p_bench.add_argument("--plot", metavar="PNG", help="also draw time per method per case (matplotlib)")
    p_bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p_explain = sub.add_parser(
        "explain", help="the method auto would take for a case, why, and every candidate's estimate"
    )
    p_explain.add_argument("op", choices=("conv", "conv_transpose"))
    _add_case_args(p_explain, required=True)
    p_explain.add_argument(
        "--dtype", default="float32", choices=("float32", "float64", "complex64", "complex128")
    )
    p_explain.add_argument("--measure", action="store_true", help="also time every supported method")
    p_explain.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda"), help="whose methods (default cpu)"
    )
    p_explain.add_argument("--json", action="store_true")
    p_cal = sub.add_parser(
        "calibrate", help="refit the cost model's constants on this machine (stored in the cache directory)"
    )
    p_cal.add_argument(
        "--ship", action="store_true", help="print the constants as numbaconv/costs.py's SHIPPED"
    )
    p_cal.add_argument("--quick", action="store_true", help="a third of the cases (a rougher fit, ~20 s)")
    p_cal.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "info":
        data = info()
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            for k, v in data.items():
                print(f"{k:20s} {v}")
    elif args.command == "bench":
        custom = None
        if args.op is not None:
            if args.input is None or args.weight is None:
                parser.error("bench --op needs --input and --weight")
            custom = ("custom", args.op, args.input, args.weight, _case_params(args))
        results = bench(
            quick=args.quick, case=args.case, repeat=args.repeat, custom=custom, progress=not args.no_progress
        )
        if args.csv:
            _write_csv(results, args.csv)
        if args.plot:
            _plot(results, args.plot)
        if args.json:
            print(json.dumps(results, indent=2))
        else:
            _print_bench(results)
    elif args.command == "explain":
        from .explain import explain

        e = explain(
            args.op,
            args.input,
            args.weight,
            (args.weight[0] if args.op == "conv" else args.weight[1] * args.groups,) if args.bias else None,
            measure=args.measure,
            device=args.device,
            dtype=args.dtype,
            **_case_params(args),
        )
        print(json.dumps(e.as_dict(), indent=2) if args.json else e)
    elif args.command == "calibrate":
        from . import costs

        def step(i, n):
            sys.stderr.write(f"\rcalibrating: case {i}/{n}")
            sys.stderr.flush()

        cases = costs.CALIBRATION_CASES[::3] if args.quick else costs.CALIBRATION_CASES
        result = costs.calibrate(cases, progress=step)
        sys.stderr.write("\n")
        path = costs.save_calibration(result)
        if args.json:
            print(json.dumps(result, indent=2))
        elif args.ship:
            print(costs.shipped_literal(result))
        else:
            for key, q in result["fit"].items():
                print(f"{key:24s} relative rms error {q['rel_rms']:.2f} over {q['samples']} cases")
            print(f"stored in {path}; used from now on by numbaconv on this machine")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
