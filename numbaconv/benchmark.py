"""The benchmark harness behind ``numbaconv bench``: every method of the table
and ``auto`` on the built-in workloads (or one case) beside the peers, in the
same process.

Peers: PyTorch CPU (conv ops, when installed), ``scipy.signal.convolve`` and
OpenCV's ``cv2.filter2D`` (2-D 'same' signal cases, when installed); for the
image filters (:data:`FILTER_WORKLOADS`, numbaconv.ndimage) scipy.ndimage and
OpenCV's ``filter2D`` / ``sepFilter2D`` (separable kernels) with the matching
border. The methods come from the dispatcher's table, so a new row is
benchmarked without an edit here. :mod:`numbaconv.cli` only parses arguments for it.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from . import api, config, dispatch, separable
from . import ndimage as nndimage
from . import signal as nsignal
from .machine import REST_S, block_best
from .shapes import make_plan
from .workloads import WORKLOADS

OPS = ("conv", "conv_transpose", "signal", "filter")
QUICK = ("resnet_3x3_c64", "depthwise_3x3_c32", "unet_up_2x2s2")

# numbaconv.ndimage.correlate (mode 'reflect') on images and volumes: dense
# random kernels and separable Gaussians; kwargs: the dtype, the kernel kind
FILTER_WORKLOADS = [
    ("filter2d_3x3_f32", "filter", (2048, 2048), (3, 3), dict(dtype="float32")),
    ("filter2d_5x5_f32", "filter", (2048, 2048), (5, 5), dict(dtype="float32")),
    ("filter2d_15x15_f32", "filter", (2048, 2048), (15, 15), dict(dtype="float32")),
    ("gauss2d_31x31_f32", "filter", (2048, 2048), (31, 31), dict(dtype="float32", kernel="gaussian")),
    ("filter2d_5x5_f64", "filter", (2048, 2048), (5, 5), dict(dtype="float64")),
    ("gauss2d_31x31_f64", "filter", (2048, 2048), (31, 31), dict(dtype="float64", kernel="gaussian")),
    ("gauss2d_7x7_u8", "filter", (2048, 2048), (7, 7), dict(dtype="uint8", kernel="gaussian")),
    ("filter1d_63_f32", "filter", (64, 65536), (1, 63), dict(dtype="float32")),
    ("filter3d_5x5x5_f32", "filter", (96, 128, 128), (5, 5, 5), dict(dtype="float32")),
]
FILTER_SKIP = 10.0  # filter cases: forced methods estimated this much slower than the best are not timed


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
    block = np.ones(30 * 2**20 // 8)
    del block


def gemm_peak_gflops(n: int = 2048, calls: int = 5) -> float:
    """This machine's float32 GEMM rate (NumPy's BLAS, all threads), GFLOP/s."""
    a = np.ones((n, n), np.float32)
    b = np.ones((n, n), np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    return 2 * n**3 / block_best(lambda: np.matmul(a, b, out=c), calls, rest=0.0) / 1e9


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


SLOW_CALL_S = 0.3  # a call this long is timed once per block (SciPy's 31x31 filter: 3 s)


def _block_time(fn, calls: int = 3) -> float:
    """Best of ``calls`` back-to-back calls after :data:`~numbaconv.machine.REST_S`
    idle (one call when it takes over :data:`SLOW_CALL_S`)."""
    first = block_best(fn, 1, REST_S)
    if first > SLOW_CALL_S or calls <= 1:
        return first
    return min(first, block_best(fn, calls - 1, 0.0))


def _torch_fn(F, op: str, ndim: int):
    """PyTorch's functional conv / conv_transpose for ``ndim`` spatial dims."""
    fns = {
        "conv": (F.conv1d, F.conv2d, F.conv3d),
        "conv_transpose": (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d),
    }
    return fns[op][ndim - 1]


def _gaussian(n: int) -> np.ndarray:
    """A normalized 1-D Gaussian of ``n`` taps (sigma n / 6)."""
    t = np.arange(n) - n // 2
    g = np.exp(-0.5 * (t / max(n / 6, 0.5)) ** 2)
    return g / g.sum()


def _filter_arrays(xs, ws, kw, rng):
    """The image (values 0-255 in its dtype) and the kernel of a filter case."""
    dtype = np.dtype(kw.get("dtype", "float32"))
    x = rng.uniform(0, 255, xs).astype(dtype)
    if kw.get("kernel") == "gaussian":
        w = np.ones(ws)
        for d, n in enumerate(ws):
            w = w * _gaussian(n).reshape(tuple(n if e == d else 1 for e in range(len(ws))))
    else:
        w = rng.standard_normal(ws) / np.sqrt(np.prod(ws))
    return x, w.astype(np.float64 if dtype == np.float64 else np.float32)


def _setup_filter(xs, ws, kw, rng):
    """:func:`_setup` of a filter case (numbaconv.ndimage.correlate, mode 'reflect')."""
    import scipy.ndimage as snd

    x, w = _filter_arrays(xs, ws, kw, rng)
    plan = make_plan("conv", (1, 1) + xs, (1, 1) + ws, None, padding="same", dtype=w.dtype)
    plan = separable.mark(plan, w[None, None])
    est, _ = dispatch.estimate_all("conv", plan)
    best = min(est.values())
    calls = {
        m: (lambda m=m: nndimage.correlate(x, w, mode="reflect", method=m))
        for m in est
        if est[m] <= FILTER_SKIP * best
    }
    calls["auto"] = lambda: nndimage.correlate(x, w, mode="reflect")
    from .filters import choose_method

    auto = choose_method(plan)
    peer = lambda: snd.correlate(x, w, mode="reflect")  # noqa: E731
    return 2 * x.size * w.size, calls, auto, "ndimage", peer, (x, w)


def _setup(op, xs, ws, kw, rng, torch_peer):
    """Arrays, FLOP count, the calls to time per method, the auto choice and the peer."""
    if op == "filter":
        return _setup_filter(xs, ws, kw, rng)
    if op == "signal":  # scipy.signal.convolve semantics, float64
        import scipy.signal as ss

        x = rng.standard_normal(xs)
        w = rng.standard_normal(ws)
        mode = kw.get("mode", "full")
        taps = int(np.prod(ws))
        outs = int(np.prod([a + b - 1 if mode == "full" else a for a, b in zip(xs, ws)]))
        calls = {m: (lambda m=m: nsignal.convolve(x, w, method=m, **kw)) for m in nsignal.CONV_METHODS}
        calls["auto"] = lambda: nsignal.convolve(x, w, **kw)
        auto = nsignal.choose_conv_method(x, w, mode)
        return 2 * outs * taps, calls, auto, "scipy", (lambda: ss.convolve(x, w, **kw)), (x, w)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    plan = make_plan(op, xs, ws, None, dtype=np.float32, **kw)
    run = api.conv if op == "conv" else api.conv_transpose
    calls = {r.name: (lambda m=r.name: run(x, w, method=m, **kw)) for r in dispatch.rows(op)}
    calls["auto"] = lambda: run(x, w, **kw)
    auto = dispatch.resolve(op, plan, "auto").name
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
    scipy.signal.convolve(mode='same') with zero borders. Filter cases: 2-D
    images, filter2D or (separable kernels) sepFilter2D with BORDER_REFLECT
    (scipy.ndimage's 'reflect')."""
    if op not in ("signal", "filter") or x.ndim != 2 or (op == "signal" and kw.get("mode") != "same"):
        return None
    try:
        import cv2
    except ImportError:
        return None
    cv2.setNumThreads(int(os.environ.get("NUMBACONV_BENCH_THREADS", "2")))
    if op == "filter":
        if kw.get("kernel") == "gaussian":
            ky = np.ascontiguousarray(w[:, w.shape[1] // 2] / w[w.shape[0] // 2, w.shape[1] // 2])
            kx = np.ascontiguousarray(w[w.shape[0] // 2, :])
            return lambda: cv2.sepFilter2D(x, -1, kx, ky, borderType=cv2.BORDER_REFLECT)
        return lambda: cv2.filter2D(x, -1, w, borderType=cv2.BORDER_REFLECT)
    k = np.ascontiguousarray(w[::-1, ::-1])
    anchor = (w.shape[1] - 1 - w.shape[1] // 2, w.shape[0] - 1 - w.shape[0] // 2)
    return lambda: cv2.filter2D(x, -1, k, anchor=anchor, borderType=cv2.BORDER_CONSTANT)


def _reference(op, xs, ws, kw, x, w, torch_peer):
    """A float64 result to measure errors against: PyTorch in float64 when
    installed (independent of numbaconv), else numbaconv's direct method in
    float64; for signal cases scipy.signal.convolve (float64 inputs)."""
    if op == "signal":
        import scipy.signal as ss

        return "scipy", ss.convolve(x, w, **kw)
    if op == "filter":
        import scipy.ndimage as snd

        return "scipy.ndimage-float64", snd.correlate(x.astype(np.float64), w, mode="reflect")
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    tkw = _torch_kwargs(kw)
    if torch_peer is not None and tkw is not None:
        torch, F = torch_peer
        fn = _torch_fn(F, op, len(ws) - 2)
        return "torch-float64", fn(torch.from_numpy(x64), torch.from_numpy(w64), **tkw).numpy()
    run = api.conv if op == "conv" else api.conv_transpose
    method = "direct" if op == "conv" else "scatter"
    return f"numbaconv-{method}-float64", run(x64, w64, method=method, **kw)


def _select(quick: bool, case: str | None, custom: tuple | None) -> list:
    """The workloads to run: ``custom``, one by name, the quick subset or all."""
    rows = [w for w in WORKLOADS + FILTER_WORKLOADS if w[1] in OPS]
    if custom is not None:
        return [custom]
    if case:
        picked = [w for w in rows if w[0] == case]
        if not picked:
            raise ValueError(f"unknown case {case!r}; the cases are: {', '.join(w[0] for w in rows)}")
        return picked
    if quick:
        return [w for w in rows if w[0] in QUICK]
    return rows


def _time_method(call, repeat, peer, cv, probe):
    """(block times, peer ratios, OpenCV ratios, micro-kernel rates) of
    ``call``: alternate short blocks A A A, B B B, ... and keep each block's
    best (strictly alternating single calls measures the other runtime's
    OpenMP threads still spinning and its allocator churn: PyTorch's depthwise
    conv measured 10 ms that way vs 2 ms in a block). ``probe`` (``(call,
    flops)``, :func:`~numbaconv.cpu.microkernel.rate_probe`) is timed in a
    block after each of ``call``'s: the rate each block is compared with (the
    host's speed drifts by 2x within a run here)."""
    times, ratios, cv_ratios, rates = [], [], [], []
    for _ in range(repeat):
        t = _block_time(call)
        times.append(t)
        if peer is not None:
            ratios.append(_block_time(peer) / t)
        if cv is not None:
            cv_ratios.append(_block_time(cv) / t)
        rates.append(probe[1] / _block_time(probe[0]) / 1e9)
    return times, ratios, cv_ratios, rates


def _run_case(name, op, xs, ws, kw, rng, torch_peer, repeat, peak) -> dict:
    """One result row per method of the case (auto last, with its regret)."""
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
        times, ratios, cv_ratios, rates = _time_method(call, repeat, peer, cv, peak["probe"])
        med = float(np.median(times))
        case_rows[method] = {
            "case": name,
            "op": op,
            "output_shape": list(y.shape),
            "method": f"auto:{auto_choice}" if method == "auto" else method,
            "first_call_s": first,
            "median_s": med,
            "gflops": flops / med / 1e9,
            "fraction_of_gemm_peak": flops / med / 1e9 / peak["gemm"],
            "gemm_peak_gflops": peak["gemm"],
            # each block's rate over the micro-kernel's rate measured right after it
            "fraction_of_ukernel_peak": float(np.median([flops / t / 1e9 / r for t, r in zip(times, rates)])),
            "ukernel_peak_gflops": float(np.median(rates)),
            "peak_extra_bytes": _peak_extra_bytes(call, y.nbytes),
            "peer": peer_name if peer is not None else None,
            "peer_ratio": float(np.median(ratios)) if ratios else None,
            "opencv_ratio": float(np.median(cv_ratios)) if cv_ratios else None,
            "max_rel_err": float(np.max(np.abs(y - ref)) / ref_scale),
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
    return case_rows


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
    # every call timed runs its method (no NumPy first calls: numbaconv.firstcall)
    with config.override(compile_in_background=False):
        return _bench(quick, case, repeat, custom, progress)


def _bench(quick, case, repeat, custom, progress) -> list[dict]:
    cases = _select(quick, case, custom)
    from . import costs, rates

    rates.refresh()  # auto's estimates in this machine's units: its fastest reading so far
    costs.forget_loaded()
    torch_peer = _peer_torch()
    _settle_allocator()
    from .cpu import microkernel

    peak = {"gemm": gemm_peak_gflops(), "probe": microkernel.rate_probe()}
    rng = np.random.default_rng(0)
    results = []
    bar = _Progress(len(cases), progress)
    for name, op, xs, ws, kw in cases:
        results.extend(_run_case(name, op, xs, ws, kw, rng, torch_peer, repeat, peak).values())
        bar.step(name)
    return results


_COLUMNS = (
    "case",
    "op",
    "output_shape",
    "method",
    "choice",
    "first_call_s",
    "median_s",
    "gflops",
    "fraction_of_ukernel_peak",
    "fraction_of_gemm_peak",
    "peak_extra_bytes",
    "max_rel_err",
    "reference",
    "peer",
    "peer_ratio",
    "opencv_ratio",
    "regret",
    "fastest_forced",
    "ukernel_peak_gflops",
    "gemm_peak_gflops",
)


def write_csv(results: list[dict], path: str) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.DictWriter(fh, fieldnames=_COLUMNS, extrasaction="ignore")
        out.writeheader()
        for r in results:
            out.writerow({k: ("x".join(map(str, v)) if isinstance(v, list) else v) for k, v in r.items()})


def plot(results: list[dict], path: str) -> None:
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


def print_table(results: list[dict]) -> None:
    head = (
        f"{'case':22s} {'output shape':>22s} {'method':>14s} {'first s':>8s} "
        f"{'median ms':>10s} {'GFLOP/s':>8s} {'uk':>5s} {'blas':>5s} {'extra MiB':>9s} {'max err':>8s} "
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
            f"{r['fraction_of_ukernel_peak']:5.2f} {r['fraction_of_gemm_peak']:5.2f} "
            f"{r['peak_extra_bytes'] / 2**20:9.1f} "
            f"{r['max_rel_err']:8.1e} {ratio:>22s} {regret:>6s}"
        )
    if results:
        print(
            "uk / blas: GFLOP/s as a fraction of this machine's float32 micro-kernel rate, "
            "measured in a block right after each of the method's (its 1024^3 GEMM; "
            f"{min(r['ukernel_peak_gflops'] for r in results):.0f}-"
            f"{max(r['ukernel_peak_gflops'] for r in results):.0f} GFLOP/s in this run) / of NumPy's "
            f"float32 GEMM ({results[0]['gemm_peak_gflops']:.0f} GFLOP/s); "
            "extra MiB: peak memory beyond the result (tracemalloc); max err: max |y - ref| / max |ref| "
            f"against a float64 reference ({results[0]['reference']})"
        )
    print(
        "peer/nc: the peer's time / numbaconv's time (> 1 means numbaconv is faster); peers: "
        "PyTorch CPU (conv ops), scipy.signal.convolve method='auto' (signal ops), scipy.ndimage.correlate "
        "(filter ops), and OpenCV's cv2.filter2D / sepFilter2D (2-D signal and filter ops, when installed)\n"
        "regret: auto's time / the fastest forced method's time, in alternating blocks of the two"
    )
