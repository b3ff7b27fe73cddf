"""Time every GPU method against PyTorch (cuDNN) and CuPy on the workloads.

Usage (on a machine with a CUDA GPU and numba-cuda; PyTorch with CUDA and
CuPy are used as peers when installed)::

    python bench/gpu_bench.py [--case NAME] [--repeat 5] [--json]

Prints the same table as ``numbaconv bench``: median time over blocks,
GFLOP/s, max error against a float64 CPU reference, the peer's time / ours,
and on the ``auto`` row the dispatcher's choice and its regret (auto's time /
the fastest method's, in alternating blocks). The arrays live on the GPU
(Numba device arrays, shared zero-copy with the peers); every timed call is
followed by a device synchronization. Without a usable GPU it says why and
exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _sync():
    from numba import cuda

    cuda.synchronize()


def _block(fn, calls=3, rest=0.05):
    time.sleep(rest)
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _peers(op, xd, wd, kw, ws):
    """(name, callable) of the GPU peers available for this case."""
    out = []
    try:
        import torch
        import torch.nn.functional as F

        if torch.cuda.is_available() and op in ("conv", "conv_transpose"):
            fns = {
                "conv": (F.conv1d, F.conv2d, F.conv3d),
                "conv_transpose": (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d),
            }
            fn = fns[op][len(ws) - 3]
            tx = torch.as_tensor(xd, device="cuda")
            tw = torch.as_tensor(wd, device="cuda")
            torch.backends.cudnn.benchmark = True
            out.append(("torch-cudnn", lambda: (fn(tx, tw, **kw), torch.cuda.synchronize())))
    except ImportError:
        pass
    try:
        import cupy as cp
        import cupyx.scipy.signal as csig

        if op == "signal":
            cx, cw = cp.asarray(xd), cp.asarray(wd)
            out.append(("cupy", lambda: csig.convolve(cx, cw, **kw)))
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    from numba import cuda

    import numbaconv as nc
    from numbaconv import dispatch, shapes
    from numbaconv.workloads import WORKLOADS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    usable, why = nc.cuda.status()
    if not usable or nc.cuda.simulated():
        print(f"gpu_bench: no usable GPU here ({why}); nothing was timed", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    rows = [
        w for w in WORKLOADS if w[1] in ("conv", "conv_transpose") and (not args.case or w[0] == args.case)
    ]
    results = []
    for name, op, xs, ws, kw in rows:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        fn = nc.conv if op == "conv" else nc.conv_transpose
        ref = fn(
            x.astype(np.float64), w.astype(np.float64), method="direct" if op == "conv" else "scatter", **kw
        )
        xd, wd = cuda.to_device(x), cuda.to_device(w)
        plan = shapes.make_plan(op, x, w, **kw)
        calls = {}
        for r in dispatch.rows(op, "cuda"):
            if r.supports(plan) is None:
                calls[r.name] = lambda m=r.name, fn=fn, xd=xd, wd=wd, kw=kw: fn(xd, wd, method=m, **kw)
        calls["auto"] = lambda fn=fn, xd=xd, wd=wd, kw=kw: fn(xd, wd, **kw)
        choice = dispatch.choose(op, plan, "auto", "cuda").method
        peers = _peers(op, xd, wd, kw, ws)
        case_rows = {}
        for m, call in calls.items():
            y = call().copy_to_host()
            err = float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))
            times = [_block(call) for _ in range(args.repeat)]
            med = float(np.median(times))
            row = {
                "case": name,
                "method": f"auto:{choice}" if m == "auto" else m,
                "median_s": med,
                "gflops": plan.flops / med / 1e9,
                "max_rel_err": err,
                "peers": {
                    pn: float(np.median([_block(pf) for _ in range(args.repeat)])) / med for pn, pf in peers
                },
                "regret": None,
            }
            case_rows[m] = row
        forced = {m: r for m, r in case_rows.items() if m != "auto"}
        best = min(forced, key=lambda m: forced[m]["median_s"])
        pairs = [_block(calls["auto"]) / _block(calls[best]) for _ in range(2 * args.repeat)]
        case_rows["auto"]["regret"] = float(np.median(pairs))
        results.extend(case_rows.values())
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"{'case':22s} {'method':>14s} {'median ms':>10s} {'GFLOP/s':>9s} {'max err':>8s} "
        f"{'peers (peer/nc)':>28s} {'regret':>6s}"
    )
    for r in results:
        peers = " ".join(f"{k} {v:.2f}" for k, v in r["peers"].items()) or "n/a"
        regret = "" if r["regret"] is None else f"{r['regret']:.2f}"
        print(
            f"{r['case']:22s} {r['method']:>14s} {r['median_s'] * 1e3:10.3f} {r['gflops']:9.1f} "
            f"{r['max_rel_err']:8.1e} {peers:>28s} {regret:>6s}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
