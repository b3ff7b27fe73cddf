"""The ``numbaconv`` command: argument parsing for ``info``, ``bench``,
``explain``, ``calibrate`` and ``warmup``. The work is done by
:mod:`numbaconv.machine` (info), :mod:`numbaconv.benchmark`,
:mod:`numbaconv.explain`, :mod:`numbaconv.calibrate` and :mod:`numbaconv.warmup`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from . import __version__, benchmark, calibrate, costs, shapes, warmup
from .explain import explain
from .machine import info


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


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
    p.add_argument("--groups", type=_positive, default=1)
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


def _bias_shape(args):
    return (args.weight[0] if args.op == "conv" else args.weight[1] * args.groups,) if args.bias else None


def _check_case(args, parser, dtype="float32") -> None:
    """The case given on the command line, validated as the API would (exit 2)."""
    if args.op == "conv" and args.output_padding != 0:
        parser.error("--output-padding is for conv_transpose only")
    try:
        plan = shapes.make_plan(
            args.op, args.input, args.weight, _bias_shape(args), dtype=dtype, **_case_params(args)
        )
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if not all(plan.output_shape):
        parser.error(f"the case has an empty output {plan.output_shape}: nothing to time")


def _check_output_path(parser, flag: str, path: str | None) -> None:
    """``--csv``/``--plot`` into a directory that exists and takes files, checked before any work."""
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"{flag} {path!r}: the directory {folder!r} does not exist")
    if not os.access(folder, os.W_OK):
        parser.error(f"{flag} {path!r}: the directory {folder!r} is not writable")
    if os.path.isdir(path):
        parser.error(f"{flag} {path!r} is a directory; give a file name")


def _check_writable_dir(parser, what: str, folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        parser.error(
            f"cannot write {what} into {folder!r} ({exc}); set NUMBACONV_CACHE_DIR to a writable directory"
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numbaconv", description=__doc__)
    parser.add_argument("--version", action="version", version=f"numbaconv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, CPU, threads, CUDA status, cache directory")
    p_info.add_argument("--json", action="store_true")
    p_bench = sub.add_parser(
        "bench",
        help="compare every method and auto on the built-in workloads (or one case) beside the peers",
    )
    p_bench.add_argument("--quick", action="store_true", help=f"a small subset: {', '.join(benchmark.QUICK)}")
    p_bench.add_argument("--case", help="one built-in workload by name")
    p_bench.add_argument(
        "--op", choices=("conv", "conv_transpose"), help="one case given here (with --input, --weight, ...)"
    )
    _add_case_args(p_bench, required=False)
    p_bench.add_argument("--repeat", type=_positive, default=5, help="timed blocks per method (default 5)")
    p_bench.add_argument("--json", action="store_true", help="print the results as JSON")
    p_bench.add_argument("--csv", metavar="PATH", help="also write the results as CSV")
    p_bench.add_argument("--plot", metavar="PNG", help="also draw time per method per case (matplotlib)")
    p_bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p_bench.add_argument(
        "--dask",
        action="store_true",
        help="the out-of-core job instead: a float32 volume in Zarr, larger than its workers' memory, "
        "filtered on a LocalCluster of processes and written back (numbaconv[dask]; dask-image beside it)",
    )
    p_bench.add_argument("--dask-gb", type=float, default=8.0, help="the volume's size on disk (default 8)")
    p_bench.add_argument(
        "--dask-worker-memory", default="2GB", help="each worker's memory limit (default 2GB)"
    )
    p_bench.add_argument(
        "--dask-kernel", type=_positive, default=5, help="the filter's edge, k x k x k (default 5)"
    )
    p_bench.add_argument(
        "--dask-path", help="where the Zarr arrays go (default a temporary directory, removed)"
    )
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
    p_warm = sub.add_parser(
        "warmup", help="compile every CPU kernel ahead of time (for container builds and CI)"
    )
    p_warm.add_argument(
        "--dtype",
        action="append",
        choices=warmup.DTYPES,
        help="a dtype to compile for (repeatable; default float32 and float64)",
    )
    p_warm.add_argument("--json", action="store_true")
    p_warm.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return parser


def _info(args, parser) -> None:
    data = info()
    cache = warmup.cache_state()  # before the probes below compile theirs
    from .cpu import microkernel

    rate = microkernel.measure_rate()
    data["simd"] = f"{rate['lanes']} float32 lanes, register block {rate['block'][0]} x {rate['block'][1]}"
    data["microkernel_gflops"] = round(rate["ukernel_gflops"], 1)
    data["numpy_gemm_gflops"] = round(rate["numpy_gflops"], 1)
    from . import rates

    machine_rates = rates.refresh()  # a faster reading than the stored one replaces it
    costs.forget_loaded()
    data["cost_constants"] = costs.source()
    data["machine_rates"] = ", ".join(f"{u} {v:.3g}/s" for u, v in machine_rates.items())
    data["kernel_cache"] = (
        f"{cache['warm_kernels']} of {cache['kernels']} kernels compiled for this CPU in Numba's on-disk "
        f"cache ({cache['cached_signatures']} signatures); `numbaconv warmup` compiles the rest"
    )
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            print(f"{k:20s} {v}")


def _bench_dask(args, parser) -> None:
    from . import lazy, outofcore

    try:
        lazy.require_dask()
        import distributed  # noqa: F401
        import zarr  # noqa: F401
    except ImportError:
        parser.error("--dask needs dask, distributed and zarr: pip install 'numbaconv[dask]'")
    if args.dask_gb <= 0:
        parser.error(f"--dask-gb must be positive, got {args.dask_gb}")
    figures = outofcore.run(
        gb=args.dask_gb,
        worker_memory=args.dask_worker_memory,
        kernel=args.dask_kernel,
        path=args.dask_path,
        progress=not args.no_progress,
    )
    print(json.dumps(figures, indent=2, default=str) if args.json else outofcore.report(figures))


def _bench(args, parser) -> None:
    if args.dask:
        return _bench_dask(args, parser)
    custom = None
    given = [f for f, v in (("--input", args.input), ("--weight", args.weight)) if v is not None]
    if args.op is not None:
        if args.input is None or args.weight is None:
            parser.error("bench --op needs --input and --weight")
        if args.case or args.quick:
            parser.error("give a case with --op or by --case / --quick, not both")
        _check_case(args, parser)
        custom = ("custom", args.op, args.input, args.weight, _case_params(args))
    elif given:
        parser.error(f"{' and '.join(given)} need --op conv or --op conv_transpose")
    names = [w[0] for w in benchmark.WORKLOADS + benchmark.FILTER_WORKLOADS if w[1] in benchmark.OPS]
    if args.case and args.case not in names:
        parser.error(f"unknown case {args.case!r}; the cases are: {', '.join(names)}")
    _check_output_path(parser, "--csv", args.csv)
    _check_output_path(parser, "--plot", args.plot)
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            parser.error("--plot needs matplotlib: pip install 'numbaconv[bench]'")
    results = benchmark.bench(
        quick=args.quick, case=args.case, repeat=args.repeat, custom=custom, progress=not args.no_progress
    )
    if args.csv:
        benchmark.write_csv(results, args.csv)
    if args.plot:
        benchmark.plot(results, args.plot)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        benchmark.print_table(results)


def _explain(args, parser) -> None:
    _check_case(args, parser, args.dtype)
    e = explain(
        args.op,
        args.input,
        args.weight,
        _bias_shape(args),
        measure=args.measure,
        device=args.device,
        dtype=args.dtype,
        **_case_params(args),
    )
    print(json.dumps(e.as_dict(), indent=2) if args.json else e)


def _calibrate(args, parser) -> None:
    def step(i, n):
        sys.stderr.write(f"\rcalibrating: case {i}/{n}")
        sys.stderr.flush()

    _check_writable_dir(parser, "the calibration", os.path.dirname(costs.calibration_path()))
    cases = calibrate.CASES[::3] if args.quick else calibrate.CASES
    result = calibrate.calibrate(cases, progress=step)
    sys.stderr.write("\n")
    path = calibrate.save(result)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.ship:
        print(calibrate.shipped_literal(result))
    else:
        for key, q in result["fit"].items():
            print(f"{key:24s} relative rms error {q['rel_rms']:.2f} over {q['samples']} cases")
        print(f"stored in {path}; used from now on by numbaconv on this machine")


def _warmup(args, parser) -> None:
    result = warmup.warmup(tuple(args.dtype or ("float32", "float64")), progress=not args.no_progress)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"warmed {', '.join(result['dtypes'])} in {result['seconds']:.1f} s ({result['calls']} calls): "
            f"{result['warm_kernels']} of {result['kernels']} kernels, {result['cached_signatures']} "
            "signatures in Numba's on-disk cache for this CPU"
        )


_COMMANDS = {
    "info": _info,
    "bench": _bench,
    "explain": _explain,
    "calibrate": _calibrate,
    "warmup": _warmup,
}


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _COMMANDS[args.command](args, parser)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`numbaconv info | head -1`): no traceback
        # the rest of the output goes nowhere, as a closed pipe wants (Python's docs, "SIGPIPE")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
