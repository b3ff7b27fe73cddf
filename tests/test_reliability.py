"""Reliability: forked workers after every method, parallel calls from several
threads under every threading layer this machine has. Each scenario runs in a
fresh interpreter with a timeout, so a hang or a killed process fails the test
instead of the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from numbaconv import dispatch

TIMEOUT = 300

FORK_SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing as mp, sys
    from concurrent.futures import ProcessPoolExecutor
    import numpy as np
    import numbaconv as nc
    from numbaconv import runtime

    op, method = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 9, 9))
    if method == "separable":  # a rank-one kernel per channel, depthwise
        w = rng.standard_normal((8, 1, 3, 1)) * rng.standard_normal((8, 1, 1, 3))
        call = lambda: nc.conv2d(x, w, padding=1, groups=8, method=method)
    elif op == "conv":
        w = rng.standard_normal((4, 8, 3, 3))
        call = lambda: nc.conv2d(x, w, padding=1, method=method)
    else:
        w = rng.standard_normal((8, 4, 3, 3))
        call = lambda: nc.conv_transpose2d(x, w, stride=2, method=method)
    ref = call()
    layer = runtime.threading_layer()

    def child(_=None):
        try:
            return float(np.max(np.abs(call() - ref)))
        except runtime.ForkedOpenMPError as exc:
            return "ForkedOpenMPError: " + str(exc)

    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=ctx) as pool:
        pooled = list(pool.map(child, range(2)))
    q = ctx.Queue()
    p = ctx.Process(target=lambda: q.put(child()))
    p.start()
    p.join(120)
    alive = p.is_alive()
    if alive:
        p.kill()
    print(json.dumps({"layer": layer, "pooled": pooled, "process": None if alive else q.get(timeout=10),
                      "exitcode": p.exitcode, "hung": alive}))
    """
)


def _run(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(os.environ, **(env or {})),
    )


@pytest.mark.parametrize(
    "op, method", [(r.op, r.name) for op in dispatch.OPS for r in dispatch.rows(op)], ids="-".join
)
def test_fork_after_every_method(op, method):
    """A child forked after a call (multiprocessing.Process and
    ProcessPoolExecutor, 'fork' start method) gets the right answer, or, where
    the parent ran GNU OpenMP (which cannot run in a forked child), a clear
    error that names the fix; never a hang or a killed worker."""
    proc = _run(FORK_SCRIPT, op, method)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not data["hung"] and data["exitcode"] == 0, data
    for got in data["pooled"] + [data["process"]]:
        if isinstance(got, str):  # refused: only where the runtime cannot allow it
            assert data["layer"] == "omp", data
            assert "spawn" in got and "tbb" in got, got
        else:
            assert got < 1e-12, data
    if method == "gemm" and op == "conv":  # the GEMM path starts no OpenMP: its children work
        assert all(not isinstance(g, str) for g in data["pooled"] + [data["process"]]), data


THREADS_SCRIPT = textwrap.dedent(
    """
    import json, threading, numpy as np, numba, numbaconv as nc
    from numbaconv import dispatch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    w = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    wt = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    ws = (rng.standard_normal((8, 1, 3, 1)) * rng.standard_normal((8, 1, 1, 3))).astype(np.float32)
    calls = [(f"conv/{r.name}", lambda m=r.name: nc.conv2d(x, w, padding=1, method=m))
             for r in dispatch.rows("conv") if r.name != "separable"]
    calls += [("conv/separable", lambda: nc.conv2d(x, ws, padding=1, groups=8, method="separable"))]
    calls += [(f"conv_transpose/{r.name}", lambda m=r.name: nc.conv_transpose2d(x, wt, stride=2, method=m))
              for r in dispatch.rows("conv_transpose")]
    calls += [("conv/auto", lambda: nc.conv2d(x, w, padding=1))]
    first = {name: call() for name, call in calls}
    bad = []

    def work(i):
        for name, call in calls[i % len(calls):] + calls[: i % len(calls)]:
            if not np.array_equal(call(), first[name]):
                bad.append(name)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"layer": numba.threading_layer(), "bad": bad}))
    """
)


def _layers() -> list[str]:
    """The threading layers this machine can load (workqueue always)."""
    layers = ["workqueue"]
    for name, mod in (("omp", "omppool"), ("tbb", "tbbpool")):
        try:
            __import__(f"numba.np.ufunc.{mod}")
            layers.append(name)
        except ImportError:
            pass
    return layers


@pytest.mark.parametrize("layer", _layers())
def test_eight_threads_every_method_every_layer(layer):
    """8 Python threads x every method at once: bit-identical results, no
    abort (workqueue is not thread-safe: numbaconv serializes its calls there)."""
    proc = _run(THREADS_SCRIPT, env={"NUMBA_THREADING_LAYER": layer})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data == {"layer": layer, "bad": []}


def test_override_is_per_thread():
    """Two threads with overlapping overrides each see their own value, a third
    sees the process-wide one throughout, and nothing is left behind."""
    import threading

    from numbaconv import config

    before = config.workspace_bytes
    barrier = threading.Barrier(3)
    seen: dict[str, list] = {"a": [], "b": [], "c": []}

    def with_override(name, value):
        with config.override(workspace_bytes=value):
            barrier.wait()  # all three inside at once
            seen[name].append(config.workspace_bytes)
            barrier.wait()
        seen[name].append(config.workspace_bytes)

    def plain():
        barrier.wait()
        seen["c"].append(config.workspace_bytes)
        barrier.wait()

    threads = [
        threading.Thread(target=with_override, args=("a", 1000)),
        threading.Thread(target=with_override, args=("b", 2000)),
        threading.Thread(target=plain),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": [1000, before], "b": [2000, before], "c": [before]}
    assert config.workspace_bytes == before


ENV_SCRIPT = (
    "import json, numbaconv; c = numbaconv.config; print(json.dumps([c.workspace_bytes, "
    "c.fft_kernel_cache_bytes, c.measure_cache, c.measure_time_s]))"
)


@pytest.mark.parametrize(
    "env, values, warns",
    [
        ({"NUMBACONV_WORKSPACE_BYTES": "64MiB"}, [64 * 2**20, 32 * 2**20, True, 2.0], None),
        ({"NUMBACONV_WORKSPACE_BYTES": "1e6"}, [10**6, 32 * 2**20, True, 2.0], None),
        ({"NUMBACONV_WORKSPACE_BYTES": " 2 GB "}, [2 * 10**9, 32 * 2**20, True, 2.0], None),
        ({"NUMBACONV_WORKSPACE_BYTES": ""}, [64 * 2**20, 32 * 2**20, True, 2.0], None),
        (
            {"NUMBACONV_WORKSPACE_BYTES": "abc"},
            [64 * 2**20, 32 * 2**20, True, 2.0],
            "NUMBACONV_WORKSPACE_BYTES",
        ),
        ({"NUMBACONV_WORKSPACE_BYTES": "-5"}, [64 * 2**20, 32 * 2**20, True, 2.0], "at least 1"),
        ({"NUMBACONV_WORKSPACE_BYTES": "0"}, [64 * 2**20, 32 * 2**20, True, 2.0], "at least 1"),
        ({"NUMBACONV_WORKSPACE_BYTES": "1.5"}, [64 * 2**20, 32 * 2**20, True, 2.0], "whole number"),
        ({"NUMBACONV_FFT_KERNEL_CACHE_BYTES": "0"}, [64 * 2**20, 0, True, 2.0], None),
        ({"NUMBACONV_FFT_KERNEL_CACHE_BYTES": "lots"}, [64 * 2**20, 32 * 2**20, True, 2.0], "FFT_KERNEL"),
        ({"NUMBACONV_MEASURE_CACHE": "off"}, [64 * 2**20, 32 * 2**20, False, 2.0], None),
        ({"NUMBACONV_MEASURE_CACHE": "maybe"}, [64 * 2**20, 32 * 2**20, True, 2.0], "MEASURE_CACHE"),
        ({"NUMBACONV_MEASURE_TIME_S": "0.5"}, [64 * 2**20, 32 * 2**20, True, 0.5], None),
        ({"NUMBACONV_MEASURE_TIME_S": "nan"}, [64 * 2**20, 32 * 2**20, True, 2.0], "MEASURE_TIME_S"),
        ({"NUMBACONV_MEASURE_TIME_S": "-1"}, [64 * 2**20, 32 * 2**20, True, 2.0], "MEASURE_TIME_S"),
    ],
)
def test_environment_values_are_validated(env, values, warns):
    """Import never fails on a bad NUMBACONV_ value: it is ignored with a
    warning naming the variable (sizes take units and 1e6)."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("NUMBACONV_") or k == "NUMBACONV_CACHE_DIR"
    }
    proc = subprocess.run(
        [sys.executable, "-c", ENV_SCRIPT],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**clean, **env},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == values
    if warns is None:
        assert "RuntimeWarning" not in proc.stderr, proc.stderr
    else:
        assert "RuntimeWarning" in proc.stderr and warns in proc.stderr, proc.stderr
        assert f"{next(iter(env))}=" in proc.stderr


READ_ONLY_SCRIPT = textwrap.dedent(
    """
    import numpy as np, numbaconv as nc
    from numbaconv import dispatch
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 4, 9, 9)); w = rng.standard_normal((4, 4, 3, 3))
    ref = nc.conv2d(x, w, padding=1, method="direct")
    ws = rng.standard_normal((4, 1, 3, 1)) * rng.standard_normal((4, 1, 1, 3))
    for r in dispatch.rows("conv"):
        if r.name == "separable":  # a rank-one kernel per channel
            want = nc.conv2d(x, ws, padding=1, groups=4, method="direct")
            assert np.allclose(nc.conv2d(x, ws, padding=1, groups=4, method=r.name), want), r.name
            continue
        assert np.allclose(nc.conv2d(x, w, padding=1, method=r.name), ref), r.name
    kw = dict(stride=2, padding_mode="reflect", padding=1)
    assert np.allclose(nc.conv_transpose2d(x, w, method="gather", **kw), nc.conv_transpose2d(x, w, **kw))
    print("ok")
    """
)


def test_read_only_install_compiles_without_the_cache(tmp_path):
    """Package directory, user cache and numbaconv's cache directory all
    read-only (bind mounts in a private mount namespace): every call works,
    compiled without Numba's on-disk cache, with one warning saying how to
    enable it."""
    import shutil

    import numbaconv

    pkg = os.path.dirname(numbaconv.__file__)
    home = tmp_path / "home"
    (home / ".cache").mkdir(parents=True)
    probe = (
        subprocess.run(["unshare", "-m", "true"], capture_output=True) if shutil.which("unshare") else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip(
            "no private mount namespace here (unshare -m needs root): cannot make a read-only install"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR",)}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), NUMBACONV_CACHE_DIR=str(home / "nc"))
    script = tmp_path / "probe.py"
    script.write_text(READ_ONLY_SCRIPT)
    shell = (
        f"mount -o bind,ro {pkg} {pkg} && mount -o bind,ro {home} {home} && "
        f"exec {sys.executable} -W default {script}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", shell], capture_output=True, text=True, timeout=900, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
    assert proc.stderr.count("no writable cache directory") == 1, proc.stderr[-3000:]
    assert "NUMBA_CACHE_DIR" in proc.stderr


@pytest.mark.parametrize(
    "content, why",
    [
        (b"[" * 100_000 + b"]" * 100_000, "maximum recursion depth"),  # nested too deep
        (b'{"entries": {}, "pad": "' + b"x" * (9 * 2**20) + b'"}', "larger than"),  # oversize
        (b'{"entries": [1, 2]}', "not a numbaconv autotune cache"),
    ],
    ids=["deep", "huge", "wrong-shape"],
)
def test_malformed_cache_files_are_ignored_with_a_warning(cache_dir, content, why):
    """autotune.json and calibration.json of any content: auto, measure and
    explain still work, each file ignored with a warning saying why."""
    import warnings

    import numpy as np

    import numbaconv as nc

    (cache_dir / "autotune.json").write_bytes(content)
    (cache_dir / "calibration.json").write_bytes(content)
    x, w = np.ones((1, 2, 9, 9)), np.ones((2, 2, 3, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_allclose(nc.conv2d(x, w), 18.0)  # auto: reads the calibration
        np.testing.assert_allclose(nc.conv2d(x, w, method="measure"), 18.0)
        assert nc.explain("conv", x, w).choice.method
    text = [str(c.message) for c in caught]
    assert any("calibration file" in t for t in text), text
    assert any("autotune cache" in t and why in t for t in text), text
    assert all(c.category is RuntimeWarning for c in caught), text


def test_autotune_file_stays_bounded_and_shareable(cache_dir, monkeypatch):
    """The file keeps the newest MAX_ENTRIES winners and is created with the
    umask's permissions (group-readable under 022), not 0600."""
    from numbaconv import autotune

    monkeypatch.setattr(autotune, "MAX_ENTRIES", 10)
    old = os.umask(0o022)
    try:
        for i in range(25):
            autotune.store(f"key-{i:02d}", "direct", {"direct": 1.0})
    finally:
        os.umask(old)
    path = cache_dir / "autotune.json"
    entries = json.loads(path.read_text())["entries"]
    assert sorted(entries) == [f"key-{i:02d}" for i in range(15, 25)]
    assert path.stat().st_mode & 0o777 == 0o644
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("pad", [10**8, 10**9])
def test_work_and_memory_follow_the_output_not_the_padding(pad):
    """3 outputs of a 5-sample signal with padding and stride 10**8..10**9: every
    conv method gives PyTorch's answer in well under 1 MB (or, the FFT, which
    computes every stride-1 position, says why not); the transposed op with a
    huge stride and padding and 4 outputs likewise."""
    import tracemalloc

    import numpy as np

    import numbaconv as nc
    from numbaconv import shapes

    def small(call):
        call()  # compile first
        tracemalloc.start()
        try:
            y = call()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2**20, peak
        return y

    x = np.arange(5.0).reshape(1, 1, 5)
    w = np.array([[[1.0, 2.0, 3.0]]])
    plan = shapes.make_plan("conv", x, w, padding=pad, stride=pad)
    for r in dispatch.rows("conv"):  # output 1 reads inputs 0, 1, 2 (PyTorch: [0, 8, 0])
        why = r.supports(plan)
        if why is not None:
            assert (r.name, "stride-1 position" in why or "stride 1" in why) in (
                ("fft", True),
                ("winograd", True),
                ("separable", False),  # one tap dim: nothing to separate
            )
            continue
        y = small(lambda r=r: nc.conv1d(x, w, padding=pad, stride=pad, method=r.name))
        np.testing.assert_array_equal(y, [[[0.0, 8.0, 0.0]]])
    xt = np.arange(1.0, 5.0).reshape(1, 1, 4)
    kw = dict(stride=pad, padding=((2 * pad - 1, pad),))  # outputs 1..3 = taps of input 2 (value 3)
    tplan = shapes.make_plan("conv_transpose", xt, w, **kw)
    assert tplan.output_shape == (1, 1, 4)
    for r in dispatch.rows("conv_transpose"):
        if r.supports(tplan) is not None:
            assert r.name == "fft"
            continue
        y = small(lambda r=r: nc.conv_transpose1d(xt, w, method=r.name, **kw))
        atol = 1e-12 if r.error == "norm" else 0.0  # an FFT's rounding is relative to the norms
        np.testing.assert_allclose(y, [[[0.0, 3.0, 6.0, 9.0]]], rtol=0, atol=atol)


SPAWN_SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    import numpy as np
    import numbaconv as nc

    def work(method):
        rng = np.random.default_rng(0)
        x, w = rng.standard_normal((2, 8, 9, 9)), rng.standard_normal((4, 8, 3, 3))
        return float(np.abs(nc.conv2d(x, w, padding=1, method=method)).sum())

    if __name__ == "__main__":
        ref = work("direct")  # the parent runs OpenMP first: spawned workers do not care
        with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
            got = list(pool.map(work, ["direct", "gemm", "fft", "auto"]))
        print(json.dumps({"ref": ref, "got": got}))
    """
)


def test_spawned_workers_after_every_kind_of_call(tmp_path):
    script = tmp_path / "spawn_probe.py"
    script.write_text(SPAWN_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(abs(g - data["ref"]) <= 1e-9 * data["ref"] for g in data["got"]), data
