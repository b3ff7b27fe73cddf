"""The dispatcher: the method table, supports() vs what each method accepts,
the cost model's choices, method="measure" and its on-disk cache, the
calibration file, explain()."""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

import numbaconv as nc
from numbaconv import autotune, calibrate, common, config, costs, dispatch, machine, rates, shapes

from .reference import conv_reference


def test_every_method_has_a_row_a_module_and_constants():
    """Each row's module exposes the method interface; its cost features and
    the row's shipped constants name the same counts (checked on plans of every
    kind); the constant tables have exactly the table's rows."""
    plans = [shapes.make_plan(op, xs, ws, None, **kw) for op, xs, ws, kw in CASES]
    for op in dispatch.OPS:
        names = [r.name for r in dispatch.rows(op)]
        assert len(names) == len(set(names)) >= 3
        assert dispatch.method_names(op) == ("auto", "measure", *names)
        assert [r.name for r in dispatch.rows(op, "cuda")] == names  # GPU twins of every method
        for r in dispatch.rows(op):
            assert callable(r.runner()), r
            for fn in ("supports", "cost_features", "workspace_bytes"):
                assert callable(getattr(r.module, fn)), (r, fn)
            for plan in (p for p in plans if p.op == op):
                assert set(r.cost_features(plan)) == set(costs.SHIPPED[r.price_key]), (r, plan)
                assert r.cost(plan) > 0 and r.workspace_bytes(plan) >= 0
    assert {r.price_key for r in dispatch.TABLE if r.device == "cpu"} == set(costs.SHIPPED)
    assert {r.price_key for r in dispatch.TABLE if r.device == "cuda"} == set(costs.SHIPPED_GPU)
    for key, consts in costs.SHIPPED_GPU.items():
        method = key.split("/")[1]
        assert set(consts) == set(common.gpu_roofline(method, plans[0])), key


def test_kernel_fastmath_flags_equal_config():
    """The kernels carry literal fastmath sets (numba's cache keys on each
    file's contents); each must equal config.FASTMATH, and no kernel may pass
    another set."""
    import pathlib
    import re

    from numbaconv.cpu import direct, scatter, sepfused

    for module in (direct, scatter, sepfused):
        assert module._FASTMATH == config.FASTMATH, module
    root = pathlib.Path(nc.__file__).parent
    for path in root.rglob("*.py"):
        for flags in re.findall(r"@(?:numba\.)?njit\([^)]*fastmath=([^,)]+)", path.read_text()):
            assert flags == "_FASTMATH", (path, flags)


CASES = [
    ("conv", (2, 4, 12, 12), (6, 4, 3, 3), dict(padding=1)),
    ("conv", (1, 6, 10, 9), (6, 2, 5, 4), dict(stride=2, padding=(2, 1), groups=3)),
    ("conv", (2, 3, 40), (4, 3, 9), dict(padding="same", padding_mode="reflect")),
    ("conv", (1, 2, 6, 7, 5), (2, 2, 3, 3, 2), dict(dilation=(1, 2, 1))),
    ("conv", (2, 8, 9, 9), (4, 8, 1, 1), dict()),
    ("conv_transpose", (2, 4, 7, 7), (4, 3, 4, 4), dict(stride=2, padding=1)),
    ("conv_transpose", (1, 6, 11), (6, 1, 5), dict(stride=3, groups=2, output_padding=1)),
    ("conv_transpose", (1, 2, 5, 4, 6), (2, 2, 2, 3, 2), dict(stride=(2, 1, 2), padding_mode="circular")),
]


@pytest.mark.parametrize("budget", [64 * 2**20, 3000, 300])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{len(c[1]) - 2}d-{c[1][1]}")
def test_supports_agrees_with_what_each_method_does(case, budget, monkeypatch):
    """A forced method runs (and gives the reference's answer) iff its
    supports() says it can; otherwise it raises UnsupportedMethodError with
    that reason. Small budgets make the workspace-bound methods refuse."""
    op, xs, ws, kw = case
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    plan = shapes.make_plan(op, x, w, **kw)
    fn = nc.conv if op == "conv" else nc.conv_transpose
    ref = fn(x, w, method="direct" if op == "conv" else "scatter", **kw)  # under the default budget
    monkeypatch.setattr(config, "workspace_bytes", budget)
    if op == "conv":
        pads = plan.padding[3 - plan.ndim :]
        r = conv_reference(
            x, w, None, list(plan.stride[3 - plan.ndim :]), list(pads), list(plan.dilation[3 - plan.ndim :]),
            plan.groups, plan.padding_mode,
        )  # fmt: skip
        np.testing.assert_allclose(ref, r, rtol=1e-10, atol=1e-10)
    ran = 0
    for row in dispatch.rows(op):
        why = row.supports(plan)
        if why is None:
            if row.workspace_bytes(plan) > budget:  # runs all the same, and says so
                with pytest.warns(RuntimeWarning, match="more than config.workspace_bytes"):
                    y = fn(x, w, method=row.name, **kw)
            else:
                y = fn(x, w, method=row.name, **kw)
            np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9)
            ran += 1
        else:
            with pytest.raises(nc.UnsupportedMethodError, match="cannot do this case") as info:
                fn(x, w, method=row.name, **kw)
            assert why in str(info.value)
    assert ran >= 1  # direct / scatter always run
    choice = dispatch.choose(op, plan)
    assert set(choice.estimates) | set(choice.unsupported) == {r.name for r in dispatch.rows(op)}
    assert set(choice.over_budget) <= set(choice.estimates)
    if choice.method in choice.over_budget:
        with pytest.warns(RuntimeWarning, match="more than config.workspace_bytes"):
            y = fn(x, w, **kw)
    else:
        y = fn(x, w, **kw)
    np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9)


def test_unknown_and_unsupported_methods_say_why(monkeypatch):
    x, w = np.ones((1, 2, 8, 8)), np.ones((2, 2, 3, 3))
    valid = "'auto', 'measure', 'direct', 'gemm', 'fft'"
    with pytest.raises(ValueError, match=f"unknown method 'toom'.*{valid}"):
        nc.conv2d(x, w, method="toom")
    with pytest.raises(ValueError, match="valid methods are 'auto', 'measure', 'scatter'"):
        nc.conv_transpose2d(x, w, method="direct")
    monkeypatch.setattr(config, "workspace_bytes", 100)
    unsupported = nc.UnsupportedMethodError
    with pytest.raises(unsupported, match=r"method='gemm' cannot do this case: the patch matrix"):
        nc.conv2d(x, w, method="gemm")
    # the FFT path is never refused for its workspace: it runs over the budget and says so
    assert "fft" in nc.choose_method("conv", x, w, method="fft").over_budget
    with pytest.warns(
        RuntimeWarning, match=r"method='fft' needs \d+ bytes .* more than config.workspace_bytes=100"
    ):
        np.testing.assert_allclose(
            nc.conv2d(x, w, method="fft"), nc.conv2d(x, w, method="direct"), atol=1e-12
        )


@pytest.mark.parametrize(
    "op, xs, ws, kw, want",
    [
        ("conv", (1, 8, 256, 256), (8, 8, 31, 31), dict(padding=15), {"fft"}),
        ("conv", (4, 1, 65536), (1, 1, 1025), dict(padding="same"), {"fft"}),
        ("conv", (1, 1, 512, 512), (1, 1, 65, 65), dict(padding=32), {"fft"}),
        # 1x1: BLAS on the Intel development machine; where the micro-kernel
        # outruns OpenBLAS (AMD Zen 5: 1.3-2x) the direct path ties it
        # (8.7 vs 8.5 ms, medians of 8 alternating blocks) and may be chosen
        ("conv", (8, 256, 56, 56), (64, 256, 1, 1), dict(), {"gemm", "direct"}),
        ("conv", (8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), {"winograd"}),
        ("conv", (8, 256, 14, 14), (256, 256, 3, 3), dict(padding=1), {"winograd"}),
        ("conv", (8, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32), {"direct"}),
        ("conv", (1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3), {"gemm", "direct"}),
        # batch 1 on 7x7 planes: the GEMM path's lowering copies 7-wide rows
        # (~16 ns a row); it took 2x the direct path's time (Zen 4)
        ("conv", (1, 128, 7, 7), (128, 128, 3, 3), dict(padding=1), {"direct"}),
        ("conv_transpose", (8, 64, 64, 64), (64, 32, 2, 2), dict(stride=2), {"gemm", "gather"}),
        ("conv_transpose", (2, 4, 64, 64), (4, 4, 3, 3), dict(padding=1), {"gather", "scatter"}),
    ],
)
def test_cost_model_choices(op, xs, ws, kw, want):
    choice = nc.choose_method(op, xs, ws, **kw)
    assert choice.method in want, choice
    assert choice.device == "cpu"
    assert choice.reason.startswith(f"{choice.method} has the lowest estimated time")
    assert all(v > 0 for v in choice.estimates.values())
    assert choice.estimates[choice.method] == min(choice.estimates.values())


def test_choose_method_takes_arrays_and_shapes():
    x = np.ones((2, 4, 16, 16), np.float64)
    w = np.ones((4, 4, 3, 3), np.float64)
    a = nc.choose_method("conv", x, w, padding=1)
    b = nc.choose_method("conv", x.shape, w.shape, padding=1, dtype=np.float64)
    assert a == b
    f32 = nc.choose_method("conv", x.shape, w.shape, padding=1)  # shapes: float32 assumed
    assert f32.estimates["direct"] < a.estimates["direct"]
    with pytest.raises(ValueError, match="op must be one of 'conv', 'conv_transpose'"):
        nc.choose_method("deconv", x, w)


def test_fit_recovers_known_constants():
    rng = np.random.default_rng(1)
    true = {"call": 2e-4, "flops": 1e-11, "outputs": 3e-9}
    samples = []
    for _ in range(30):
        f = {"call": 1.0, "flops": float(rng.uniform(1e6, 1e10)), "outputs": float(rng.uniform(1e3, 1e7))}
        samples.append((f, sum(true[k] * v for k, v in f.items())))
    got = calibrate.fit(samples)
    for k in true:
        assert got[k] == pytest.approx(true[k], rel=1e-6)


def test_calibration_file_is_used_for_this_machine_only(cache_dir, monkeypatch):
    """This machine's calibration replaces the shipped constants as they
    are; without one (or with another machine's) the shipped constants are
    scaled to this machine's rates (set here to twice the development
    machine's time per unit of work, whatever host runs the test)."""
    plan = shapes.make_plan("conv", (2, 8, 32, 32), (8, 8, 3, 3), padding=1)

    def cost_at(scale):
        monkeypatch.setattr(rates, "scales", lambda: {**dict.fromkeys(rates.UNITS, scale), "none": 1.0})
        costs.forget_loaded()
        return dispatch.row("conv", "direct").cost(plan)

    unscaled = cost_at(1.0)
    shipped = cost_at(2.0)
    assert shipped > 1.5 * unscaled
    consts = {k: dict(v) for k, v in costs.SHIPPED.items()}
    consts["conv/direct"] = {k: 10 * v for k, v in consts["conv/direct"].items()}
    calibrate.save({"fingerprint": machine.fingerprint(), "constants": consts, "fit": {}})
    assert dispatch.row("conv", "direct").cost(plan) == pytest.approx(10 * unscaled)
    other = dict(machine.fingerprint(), cpu="some other CPU")
    calibrate.save({"fingerprint": other, "constants": consts, "fit": {}})
    assert dispatch.row("conv", "direct").cost(plan) == pytest.approx(shipped)
    with open(costs.calibration_path(), "w") as fh:
        fh.write("{not json")
    costs.forget_loaded()
    with pytest.warns(RuntimeWarning, match="unreadable calibration file"):
        assert dispatch.row("conv", "direct").cost(plan) == pytest.approx(shipped)


def _count_runs(monkeypatch):
    """Record the method of every row measure() asks for (one per candidate run)."""
    runs = []
    real_row = dispatch.row

    def row(op, name, device="cpu"):
        runs.append(name)
        return real_row(op, name, device)

    monkeypatch.setattr(dispatch, "row", row)
    return runs


def test_measure_times_candidates_and_remembers_the_winner(cache_dir, monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 20, 20)).astype(np.float32)
    w = rng.standard_normal((6, 6, 5, 5)).astype(np.float32)
    ref = nc.conv2d(x, w, padding=2, method="direct")
    runs = _count_runs(monkeypatch)
    y = nc.conv2d(x, w, padding=2, method="measure")
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)
    timed = list(runs)
    assert len(set(timed)) >= 2  # several candidates were run
    data = json.loads((cache_dir / "autotune.json").read_text())
    plan = shapes.make_plan("conv", x, w, padding=2)
    key = autotune.cache_key("conv", plan)
    entry = data["entries"][key]
    assert entry["method"] in timed and set(entry["seconds"]) <= set(timed)
    assert entry["method"] == min(entry["seconds"], key=entry["seconds"].get)
    # a new process (memory forgotten) reads the file and runs the winner only
    autotune.forget()
    runs.clear()
    out = np.empty_like(ref)
    assert nc.conv2d(x, w, padding=2, method="measure", out=out) is out
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
    assert runs == [entry["method"]]
    # the key covers the parameters: another padding is a new measurement
    runs.clear()
    nc.conv2d(x, w, padding=1, method="measure")
    assert len(runs) >= 2


def test_measure_cache_can_be_turned_off(cache_dir, monkeypatch):
    monkeypatch.setattr(config, "measure_cache", False)
    x, w = np.ones((1, 2, 9, 9)), np.ones((2, 2, 3, 3))
    np.testing.assert_allclose(nc.conv2d(x, w, method="measure"), 18.0)
    assert not (cache_dir / "autotune.json").exists()


def test_corrupt_cache_file_is_ignored_with_a_warning(cache_dir):
    (cache_dir / "autotune.json").write_bytes(b"\x00\xffgarbage{")
    x, w = np.ones((1, 2, 9, 9)), np.ones((2, 2, 3, 3))
    with pytest.warns(RuntimeWarning, match="unreadable autotune cache"):
        y = nc.conv2d(x, w, method="measure")
    np.testing.assert_allclose(y, 18.0)
    data = json.loads((cache_dir / "autotune.json").read_text())  # rewritten whole
    assert len(data["entries"]) == 1
    (cache_dir / "autotune.json").write_text(json.dumps({"entries": {"k": {"method": 3}}, "format": 1}))
    autotune.forget()
    assert autotune.lookup("k") is None  # malformed entries are skipped


def _writer(args):
    path, start = args
    os.environ["NUMBACONV_CACHE_DIR"] = path
    from numbaconv import autotune as at
    from numbaconv import config as cfg

    cfg.cache_dir = path
    for i in range(start, start + 25):
        at.store(f"key-{i}", "direct", {"direct": float(i)})
    return True


def test_concurrent_writers_keep_every_entry(cache_dir):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        assert all(pool.map(_writer, [(str(cache_dir), 100 * k) for k in range(4)]))
    threads = [threading.Thread(target=_writer, args=((str(cache_dir), 1000 + 100 * k),)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = json.loads((cache_dir / "autotune.json").read_text())
    assert len(data["entries"]) == 8 * 25
    autotune.forget()
    assert autotune.lookup("key-324") == "direct"


def test_explain_shows_every_candidate():
    e = nc.explain("conv", (1, 8, 256, 256), (8, 8, 31, 31), padding=15)
    assert e.choice.method == "fft"
    text = str(e)
    for name in ("direct", "gemm", "fft"):
        assert name in text
    assert "decision: fft (cpu)" in text and "<- chosen" in text
    d = e.as_dict()
    assert d["output_shape"] == [1, 8, 256, 256] and set(d["estimated_s"]) == {"direct", "gemm", "fft"}


def test_explain_measures_on_request(monkeypatch):
    monkeypatch.setattr(config, "workspace_bytes", 2000)
    e = nc.explain("conv_transpose", (1, 4, 9, 9), (4, 2, 3, 3), stride=2, measure=True, dtype=np.float64)
    assert set(e.measured) == set(e.choice.estimates)  # every supported method was timed
    assert e.choice.unsupported  # the small budget rules some out, with a reason
    text = str(e)
    assert "unsupported" in text and "measured fastest" in text


def test_plans_from_shapes_match_the_api():
    plan = shapes.make_plan("conv_transpose", (2, 4, 7), (4, 3, 5), stride=2, output_padding=1)
    assert plan == shapes.make_conv_transpose_plan(
        (2, 4, 7), (4, 3, 5), None, stride=2, output_padding=1, dtype=np.float32
    )


def test_kept_estimates_follow_layout_and_threads():
    """The auto choice's kept estimates are per setting the geometries read:
    the direct path's estimate under direct_layout='pixels' is that
    layout's (not the one kept from the default layout), and a changed
    thread count is a new entry."""
    import numba

    plan = shapes.make_conv_plan(
        (8, 512, 7, 7), (512, 512, 3, 3), None, 1, 1, 1, 1, padding_mode="zeros",
        dtype=np.dtype("float32"), ndim=2,
    )  # fmt: skip
    auto = dispatch.estimate_all("conv", plan)[0]["direct"]
    with config.override(direct_layout="pixels"):
        pixels = dispatch.estimate_all("conv", plan)[0]["direct"]
    assert pixels != auto  # channels-last blocks under auto on 7x7 planes
    assert dispatch.estimate_all("conv", plan)[0]["direct"] == auto
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        key = dispatch._settings_key()
    finally:
        numba.set_num_threads(before)
    assert key != dispatch._settings_key() or before == 1


def test_kept_workspace_needs_follow_the_settings(monkeypatch):
    """dispatch.workspace_need (read on every call, for the over-budget
    warning) and igemm.fits keep their answers per plan and setting: a
    repeat asks the method's module nothing, another budget or thread count
    asks again, and every answer equals the one computed afresh."""
    import numba

    from numbaconv.cpu import direct, igemm

    plan = shapes.make_plan("conv", (1, 16, 40, 40), (32, 16, 3, 3), padding=1)
    r = dispatch.row("conv", "direct")
    asked = []
    real = direct.workspace_bytes
    monkeypatch.setattr(direct, "workspace_bytes", lambda p: asked.append(p) or real(p))
    first = dispatch.workspace_need(r, plan)
    assert first == real(plan) and len(asked) == 1
    assert dispatch.workspace_need(r, plan) == first and len(asked) == 1  # kept
    for budget in (first + 1, first - 1, 10**9):
        with config.override(workspace_bytes=budget):
            assert dispatch.workspace_need(r, plan) == real(plan)
            assert igemm.fits(plan) == (igemm.workspace_bytes(plan) <= budget)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        asked.clear()
        assert dispatch.workspace_need(r, plan) == real(plan)
        assert len(asked) == 1 or before == 1  # a new thread count: asked again
        assert igemm.fits(plan) == (igemm.workspace_bytes(plan) <= config.workspace_bytes)
    finally:
        numba.set_num_threads(before)


def test_measure_budget_does_not_count_compilation(cache_dir, monkeypatch):
    """A first candidate whose untimed call is slow (compiling, from a cold
    cache) does not use up config.measure_time_s: the others are timed too,
    and the winner is the fastest of them."""
    from numbaconv import api, autotune

    monkeypatch.setattr(autotune, "REST_S", 0.0)
    monkeypatch.setattr(config, "measure_time_s", 0.3)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 4, 12, 12)).astype(np.float32)
    w = rng.standard_normal((4, 4, 5, 5)).astype(np.float32)
    plan = shapes.make_plan("conv", x, w, padding=2)
    calls: list[str] = []

    def execute(row):
        if row.name not in calls:
            time.sleep(0.4)  # as a first call compiling would
        calls.append(row.name)
        return api._execute(row, plan, x, w, None, None)

    result, choice = autotune.measure("conv", plan, execute)
    assert len(choice.measured) >= 2, choice.measured
    assert choice.method == min(choice.measured, key=choice.measured.get)
    np.testing.assert_allclose(result, nc.conv2d(x, w, padding=2, method="direct"), rtol=1e-4, atol=1e-4)
