"""The ``numbaconv`` command: argument parsing for ``info``, ``bench``,
``explain`` and ``calibrate``. The work is done by :mod:`numbaconv.machine`
(info), :mod:`numbaconv.benchmark`, :mod:`numbaconv.explain` and
:mod:`numbaconv.calibrate`."""

from __future__ import annotations

import argparse
import json
import sys

from . import benchmark, calibrate
from .explain import explain
from .machine import info


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="numbaconv", description=__doc__)
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
    return parser


def _info(args, parser) -> None:
    data = info()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for k, v in data.items():
            print(f"{k:20s} {v}")


def _bench(args, parser) -> None:
    custom = None
    if args.op is not None:
        if args.input is None or args.weight is None:
            parser.error("bench --op needs --input and --weight")
        custom = ("custom", args.op, args.input, args.weight, _case_params(args))
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
    bias = (args.weight[0] if args.op == "conv" else args.weight[1] * args.groups,) if args.bias else None
    e = explain(
        args.op,
        args.input,
        args.weight,
        bias,
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


_COMMANDS = {"info": _info, "bench": _bench, "explain": _explain, "calibrate": _calibrate}


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _COMMANDS[args.command](args, parser)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
