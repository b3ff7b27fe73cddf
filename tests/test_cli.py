"""The command line and the on-disk kernel cache, in fresh processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from numbaconv import dispatch
from numbaconv import signal as ns
from numbaconv.shapes import make_plan


def _names(op):
    return [r.name for r in dispatch.rows(op)]


CACHE_PROBE = textwrap.dedent(
    """
    import json, time
    import numpy as np
    t0 = time.perf_counter()
    import numbaconv as nc
    x = np.ones((1, 16, 8, 8), np.float32); w = np.ones((4, 16, 3, 3), np.float32)
    y = nc.conv2d(x, w, padding=1)
    dt = time.perf_counter() - t0
    from numba.core.registry import CPUDispatcher
    from numbaconv.cpu import direct, fold, gather, gemm, igemm, scatter, winograd
    mods = (direct, fold, gather, gemm, igemm, scatter, winograd)
    kernels = [f for m in mods for f in vars(m).values() if isinstance(f, CPUDispatcher)]
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
    print(json.dumps({"seconds": dt, "hits": hits, "misses": misses, "value": float(y[0, 0, 4, 4])}))
    """
)


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, check=True)


def test_info_json():
    data = json.loads(_run("-m", "numbaconv.cli", "info", "--json").stdout)
    assert data["numba_threads"] >= 1
    assert data["threading_layer"] in ("omp", "tbb", "workqueue")
    assert isinstance(data["cuda_usable"], bool) and data["cuda_reason"]
    assert "float32 lanes" in data["simd"]
    assert data["microkernel_gflops"] > 0 and data["numpy_gemm_gflops"] > 0


def test_version():
    import numbaconv

    assert _run("-m", "numbaconv.cli", "--version").stdout.strip() == f"numbaconv {numbaconv.__version__}"


def test_a_closed_pipe_ends_quietly():
    """`numbaconv info | head -1`: the reader has closed the pipe; no
    BrokenPipeError traceback, exit status 1."""
    read, write = os.pipe()
    os.close(read)  # every write now fails with EPIPE
    try:
        run = subprocess.run(
            [sys.executable, "-m", "numbaconv.cli", "info"], stdout=write, stderr=subprocess.PIPE, timeout=600
        )
    finally:
        os.close(write)
    assert run.returncode == 1 and b"Traceback" not in run.stderr and b"BrokenPipe" not in run.stderr


def test_bench_quick_json():
    rows = json.loads(
        _run("-m", "numbaconv.cli", "bench", "--case", "depthwise_3x3_c32", "--repeat", "1", "--json").stdout
    )
    # one row per method that runs the case (random weights: not separable),
    # then auto (with the method it chose and its regret)
    assert [r["method"] for r in rows] == [n for n in _names("conv") if n != "separable"] + ["auto:direct"]
    assert all(r["case"] == "depthwise_3x3_c32" for r in rows)
    assert rows[0]["output_shape"] == [8, 32, 112, 112] and rows[0]["median_s"] > 0
    auto = rows[-1]
    assert auto["choice"] == "direct" and auto["fastest_forced"] in _names("conv")
    assert 0.2 < auto["regret"] < 50  # a ratio of two measured times
    assert all(r["max_rel_err"] < 1e-5 and r["reference"] for r in rows)


def test_bench_transposed_case_runs_every_method():
    rows = json.loads(
        _run("-m", "numbaconv.cli", "bench", "--case", "unet_up_2x2s2", "--repeat", "1", "--json").stdout
    )
    # auto's pick is the cost model's (the same constants in both processes)
    plan = make_plan("conv_transpose", (8, 64, 64, 64), (64, 32, 2, 2), None, dtype=np.float32, stride=2)
    pick = dispatch.resolve("conv_transpose", plan, "auto").name
    assert [r["method"] for r in rows] == [*_names("conv_transpose"), f"auto:{pick}"]
    assert all(r["output_shape"] == [8, 32, 128, 128] for r in rows)
    errs = [r["max_rel_err"] for r in rows]
    assert all(e < 1e-5 for e in errs), errs


def test_second_process_loads_kernels_from_the_cache():
    """The first process may compile; the second must load every kernel from disk."""
    _run("-c", CACHE_PROBE)
    second = json.loads(_run("-c", CACHE_PROBE).stdout)
    assert second["value"] == 16 * 9
    assert second["misses"] == 0 and second["hits"] >= 1, second


def test_bench_signal_case_against_scipy():
    rows = json.loads(
        _run("-m", "numbaconv.cli", "bench", "--case", "signal2d_5x5_same", "--repeat", "1", "--json").stdout
    )
    assert [r["method"] for r in rows][:-1] == list(ns.CONV_METHODS)
    assert rows[-1]["method"].startswith("auto:")
    assert all(r["peer"] == "scipy" and r["peer_ratio"] > 0 for r in rows)
    assert all(r["max_rel_err"] < 1e-10 and r["reference"] == "scipy" for r in rows)
    try:  # OpenCV's filter2D is the second peer of 2-D 'same' cases, when installed
        import cv2  # noqa: F401

        assert all(r["opencv_ratio"] > 0 for r in rows)
    except ImportError:
        assert all(r["opencv_ratio"] is None for r in rows)


def test_bench_one_case_from_the_command_line_csv_and_plot(tmp_path):
    csv_path, png = tmp_path / "b.csv", tmp_path / "b.png"
    args = ["-m", "numbaconv.cli", "bench", "--op", "conv", "--input", "1,3,20,20", "--weight", "4,3,3,3"]
    args += ["--padding", "1", "--padding-mode", "reflect", "--repeat", "1", "--json", "--csv", str(csv_path)]
    try:
        import matplotlib  # noqa: F401

        have_mpl = True
    except ImportError:
        have_mpl = False
    proc = subprocess.run(
        [sys.executable, *args, "--plot", str(png)], capture_output=True, text=True, timeout=600
    )
    if not have_mpl:  # a clear message, not a traceback
        assert proc.returncode != 0 and "--plot needs matplotlib" in proc.stderr
        cmd = [sys.executable, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    else:
        assert proc.returncode == 0, proc.stderr
        assert png.read_bytes()[:4] == b"\x89PNG"
    rows = json.loads(proc.stdout)
    assert [r["method"] for r in rows][:-1] == [n for n in _names("conv") if n != "separable"]
    assert all(r["case"] == "custom" and r["output_shape"] == [1, 4, 20, 20] for r in rows)
    # reflect padding: PyTorch's functional conv cannot take it, so no peer;
    # the reference is numbaconv's direct method in float64
    assert all(r["peer"] is None and r["reference"] == "numbaconv-direct-float64" for r in rows)
    assert all(r["max_rel_err"] < 1e-5 for r in rows)
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("case,op,output_shape,method") and len(lines) == len(rows) + 1
    assert "[" in proc.stderr and "1/1 custom" in proc.stderr  # the progress bar


def test_explain_json():
    out = _run(
        "-m", "numbaconv.cli", "explain", "conv", "--input", "1,8,256,256", "--weight", "8,8,31,31",
        "--padding", "15", "--json",
    ).stdout  # fmt: skip
    data = json.loads(out)
    assert data["method"] == "fft" and data["reason"].startswith("fft has the lowest estimated time")
    assert set(data["estimated_s"]) | set(data["unsupported"]) == set(_names("conv"))
    assert "kernel extents up to 5" in data["unsupported"]["winograd"] and data["measured_s"] == {}


def test_explain_measure_text():
    out = _run(
        "-m", "numbaconv.cli", "explain", "conv_transpose", "--input", "1,4,8,8", "--weight", "4,2,3,3",
        "--stride", "2", "--bias", "--measure",
    ).stdout  # fmt: skip
    assert "decision:" in out and "measured fastest:" in out
    for name in _names("conv_transpose"):
        assert name in out


def test_calibrate_quick_writes_the_calibration(tmp_path):
    env = dict(os.environ, NUMBACONV_CACHE_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "numbaconv.cli", "calibrate", "--quick", "--json"],
        capture_output=True, text=True, timeout=900, check=True, env=env,
    )  # fmt: skip
    result = json.loads(proc.stdout)
    stored = json.loads((tmp_path / "calibration.json").read_text())
    assert stored["constants"] == result["constants"]
    assert set(result["constants"]) == {r.price_key for r in dispatch.TABLE if r.device == "cpu"}
    assert all(v >= 0 for c in result["constants"].values() for v in c.values())
    assert all(q["samples"] >= 2 and q["rel_rms"] >= 0 for q in result["fit"].values())


C = ["--op", "conv", "--input", "1,3,8,8", "--weight", "4,3,3,3"]
MALFORMED = [
    [],
    ["frobnicate"],
    ["info", "--bogus"],
    ["bench", "--op", "conv", "--input", "1,2,3", "--weight", "x"],
    ["bench", "--op", "conv", "--input", "1,3,8,8", "--weight", "4,2,3,3"],  # channel mismatch
    ["bench", *C, "--stride", "0"],
    ["bench", "--op", "conv", "--input", "1,3,8,8"],
    ["bench", "--repeat", "0"],
    ["bench", "--repeat", "-1"],
    ["bench", "--repeat", "x"],
    ["bench", "--case", "nope"],
    ["bench", "--case", "resnet_3x3_c64", "--csv", "/nonexistent-dir/out.csv"],
    ["bench", "--case", "resnet_3x3_c64", "--plot", "/nonexistent-dir/out.png"],
    ["bench", "--case", "resnet_3x3_c64", "--csv", "/tmp"],
    ["bench", *C, "--padding", "-1"],
    ["bench", "--op", "conv", "--input", "1,3,8,8", "--weight", "4,3,9,9"],  # kernel over the input
    ["bench", "--op", "conv_transpose", "--input", "1,4,8,8", "--weight", "4,2,3,3", "--output-padding", "5"],
    ["bench", *C, "--groups", "0"],
    ["bench", *C, "--groups", "2"],
    ["bench", *C, "--dilation", "0"],
    ["bench", "--op", "conv", "--input", ",", "--weight", "4,3,3,3"],
    ["bench", *C, "--padding-mode", "mirror"],
    ["bench", *C, "--padding", "(1,2)"],
    ["bench", *C, "--padding-mode", "reflect", "--padding", "8"],
    ["bench", *C, "--stride", "1,1,1"],
    ["bench", "--input", "1,3,8,8", "--weight", "4,3,3,3"],  # no --op
    ["bench", *C, "--case", "resnet_3x3_c64"],
    ["bench", *C, "--output-padding", "1"],  # conv has none
    ["bench", "--op", "conv", "--input", "0,3,8,8", "--weight", "4,3,3,3"],  # nothing to time
    ["explain", "conv", "--input", "1,8,256,256", "--weight", ","],
    ["explain", "conv", "--input", "1,3,8,8", "--weight", "4,2,3,3"],
    ["explain", "conv", "--input", "1,3,8,8", "--weight", "4,3,3,3", "--stride", "0"],
    ["explain", "deconv", "--input", "1,3,8,8", "--weight", "4,3,3,3"],
    ["explain", "conv", "--input", "1,3,8,8", "--weight", "4,3,3,3", "--dtype", "int8"],
    ["explain", "conv", "--input", "1,3,8,8", "--weight", "4,3,3,3", "--device", "tpu"],
    ["explain", "conv_transpose", "--input", "1,4,8", "--weight", "4,2,3", "--padding", "same"],
    ["explain", "conv", "--input", "1,3,8,8,8,8,8", "--weight", "4,3,3,3"],
    ["explain", "conv", "--input", "1,3,8,8", "--weight", "4,3,3,3", "--groups", "x"],
    ["explain", "conv", "--weight", "4,3,3,3"],
    ["calibrate", "--bogus"],
]


@pytest.mark.parametrize("argv", MALFORMED, ids=lambda a: " ".join(a)[:60] or "(none)")
def test_malformed_invocations_exit_2_with_a_message(argv, capsys):
    """Every misuse: an argparse-style "error:" line and exit status 2, before
    any work, never a traceback."""
    from numbaconv import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "error:" in err and "Traceback" not in err, err


def test_calibrate_into_an_unwritable_cache_fails_before_the_work(tmp_path, monkeypatch, capsys):
    from numbaconv import cli, config

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(config, "cache_dir", str(blocker / "cache"))
    with pytest.raises(SystemExit) as info:
        cli.main(["calibrate", "--quick"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "cannot write the calibration" in err and "NUMBACONV_CACHE_DIR" in err
    assert "calibrating" not in err  # no case was timed


def test_warmup_compiles_every_kernel_and_info_says_so(tmp_path):
    """From an empty Numba cache (NUMBA_CACHE_DIR comes before the in-tree
    cache), `numbaconv warmup --dtype float32 --dtype complex64` (the direct
    path's own kernels serve complex dtypes only) leaves every CPU kernel with
    a cached signature for this CPU, and `info` reports it."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    cold = subprocess.run(
        [sys.executable, "-m", "numbaconv.cli", "info", "--json"],
        capture_output=True, text=True, timeout=600, check=True, env=env,
    )  # fmt: skip
    assert json.loads(cold.stdout)["kernel_cache"].startswith("0 of ")
    proc = subprocess.run(
        [sys.executable, "-m", "numbaconv.cli", "warmup", "--dtype", "float32", "--dtype", "complex64",
         "--json"],
        capture_output=True, text=True, timeout=1800, check=True, env=env,
    )  # fmt: skip
    result = json.loads(proc.stdout)
    assert result["kernels"] >= 10 and result["warm_kernels"] == result["kernels"], result
    assert result["calls"] > 0 and result["dtypes"] == ["float32", "complex64"]
    assert "[" in proc.stderr  # the progress bar
    warm = json.loads(
        subprocess.run(
            [sys.executable, "-m", "numbaconv.cli", "info", "--json"],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
            env=env,
        ).stdout  # fmt: skip
    )
    n = result["kernels"]
    assert warm["kernel_cache"].startswith(f"{n} of {n} kernels"), warm["kernel_cache"]
