"""The cost model's machine units (numbaconv/rates.py): every feature has a
kind of work, the shipped constants scale by the development machine's rate
over this one's (not on the development machine's own fingerprint, not for
calibrated rows), the probe's result is kept per fingerprint."""

from __future__ import annotations

import json

import numpy as np
import pytest

from numbaconv import calibrate, config, costs, dispatch, machine, rates


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "cache_dir", str(tmp_path))
    rates.forget()
    costs.forget_loaded()
    yield tmp_path
    rates.forget()
    costs.forget_loaded()


def test_every_feature_has_a_kind_of_work():
    for r in dispatch.TABLE:
        if r.device == "cpu":
            for name in costs.SHIPPED[r.price_key]:
                assert rates.UNIT_OF.get(name) in rates.UNITS + ("none",), (r.key, name)


def test_the_probe_measures_positive_rates():
    got = rates.probe()
    assert set(got) == set(rates.UNITS)
    assert all(np.isfinite(v) and v > 0 for v in got.values())


def test_shipped_constants_scale_to_this_machine(fresh, monkeypatch):
    here = {"flop": 2 * rates.SHIPPED_RATES["flop"], "gemm": rates.SHIPPED_RATES["gemm"] / 4,
            "mem": rates.SHIPPED_RATES["mem"], "fft": 100 * rates.SHIPPED_RATES["fft"],
            "call": rates.SHIPPED_RATES["call"] / 2}  # fmt: skip
    monkeypatch.setattr(rates, "rates", lambda: here)
    monkeypatch.setattr(rates, "SHIPPED_FINGERPRINT", {"cpu": "another"})
    assert rates.scales() == {
        "flop": 0.5, "gemm": 4.0, "mem": 1.0, "fft": 1 / rates.MAX_SCALE, "call": 2.0, "none": 1.0
    }  # fmt: skip
    # the two kinds of arithmetic apart: the micro-kernel paths' FLOPs and the BLAS GEMM's
    table = costs.constants()
    assert table["conv/direct"]["flops_px"] == pytest.approx(costs.SHIPPED["conv/direct"]["flops_px"] / 2)
    assert table["conv/winograd"]["point_flops"] == pytest.approx(
        costs.SHIPPED["conv/winograd"]["point_flops"] / 2
    )
    assert table["conv/gemm"]["gemm_flops"] == pytest.approx(costs.SHIPPED["conv/gemm"]["gemm_flops"] * 4)
    table = costs.constants()
    for key, consts in costs.SHIPPED.items():
        for name, value in consts.items():
            want = value * rates.scales()[rates.UNIT_OF[name]]
            assert table[key][name] == pytest.approx(want), (key, name)
    assert "scaled to this machine's measured rates" in costs.source()


def test_no_scaling_on_the_development_machines_fingerprint(fresh, monkeypatch):
    monkeypatch.setattr(rates, "SHIPPED_FINGERPRINT", machine.fingerprint())
    monkeypatch.setattr(rates, "rates", lambda: pytest.fail("no probe needed"))
    assert rates.scales() == dict.fromkeys(rates.UNITS + ("none",), 1.0)
    assert costs.constants() == costs.SHIPPED
    assert "shipped" in costs.source()


def test_calibrated_rows_are_not_scaled(fresh, monkeypatch):
    monkeypatch.setattr(rates, "SHIPPED_FINGERPRINT", {"cpu": "another"})
    monkeypatch.setattr(rates, "rates", lambda: {u: 2 * v for u, v in rates.SHIPPED_RATES.items()})
    mine = {k: dict.fromkeys(v, 1e-9) for k, v in costs.SHIPPED.items() if k == "conv/direct"}
    calibrate.save({"fingerprint": machine.fingerprint(), "constants": mine, "fit": {}, "samples": {}})
    table = costs.constants()
    assert table["conv/direct"] == mine["conv/direct"]
    assert table["conv/gemm"]["call"] == pytest.approx(costs.SHIPPED["conv/gemm"]["call"] / 2)
    assert "this machine's calibration" in costs.source()


def test_rates_are_measured_once_per_machine(fresh, monkeypatch):
    calls = []

    def fake():
        calls.append(1)
        return {u: 1.0 + len(calls) for u in rates.UNITS}

    monkeypatch.setattr(rates, "probe", fake)
    first = rates.rates()
    assert rates.rates() == first and len(calls) == 1
    rates.forget()  # a new process: read from the file
    assert rates.rates() == first and len(calls) == 1
    data = json.loads((fresh / "rates.json").read_text())
    assert data["fingerprint"] == machine.fingerprint()
    data["fingerprint"] = {"cpu": "another machine"}  # another machine's file: measured again
    (fresh / "rates.json").write_text(json.dumps(data))
    rates.forget()
    assert rates.rates() != first and len(calls) == 2
    (fresh / "rates.json").write_text("{not json")
    rates.forget()
    with pytest.warns(RuntimeWarning, match="unreadable rates file"):
        rates.rates()
    assert len(calls) == 3
    # a file of an earlier version, with other units (no "gemm"): measured
    # again, silently (no unit left unmeasured)
    data["fingerprint"] = machine.fingerprint()
    data["rates"] = {"flop": 1.0, "mem": 1.0, "fft": 1.0, "call": 1.0}
    (fresh / "rates.json").write_text(json.dumps(data))
    rates.forget()
    assert set(rates.rates()) == set(rates.UNITS) and len(calls) == 4


def test_cpu_types_of_one_model_name_are_other_machines(fresh, monkeypatch):
    """Virtual machines report one model name ("AMD EPYC") for CPU
    generations whose vector units differ (AVX2 on Zen 3, AVX-512 on Zen 4
    and 5): the fingerprint tells them apart by LLVM's CPU type, so one's
    rates are not used on the other."""
    monkeypatch.setattr(machine, "cpu_arch", lambda: "znver5")
    monkeypatch.setattr(rates, "probe", lambda: dict.fromkeys(rates.UNITS, 1e9))
    assert rates.rates()["flop"] == 1e9
    monkeypatch.setattr(machine, "cpu_arch", lambda: "znver3")
    monkeypatch.setattr(rates, "probe", lambda: dict.fromkeys(rates.UNITS, 2e9))
    rates.forget()
    assert rates.rates()["flop"] == 2e9
    assert machine.fingerprint()["arch"] == "znver3"
    # the development machine is recognised by the keys it was recorded with
    monkeypatch.setattr(
        rates, "SHIPPED_FINGERPRINT", {k: v for k, v in machine.fingerprint().items() if k != "arch"}
    )
    assert rates.is_development_machine()


def test_block_costs_follow_the_hosts_register_block(monkeypatch):
    """The register blocks' cost is counted in accumulator values: a host
    with 8 lanes and 16 registers (AVX2) runs the same FLOPs in blocks of a
    quarter to a sixth of an AVX-512 block's values, each loading and storing
    that much less, so the count must not grow with the number of blocks
    (it did: Winograd was estimated 3x too slow on an AVX2 host)."""
    from numbaconv.explain import _plan_of

    x = np.zeros((8, 64, 56, 56), np.float32)
    w = np.zeros((64, 64, 3, 3), np.float32)
    got = {}
    for lanes in (16, 8):
        monkeypatch.setattr(config, "simd_lanes", lanes)
        plan = _plan_of("conv", x, w, None, {"padding": 1})
        direct = dispatch.row("conv", "direct").cost_features(plan)["block_values"]
        wino = dispatch.row("conv", "winograd").cost_features(plan)["block_values"]
        got[lanes] = direct, wino
    # the same pixels x output channels in every block layout: within what
    # padded blocks and tiles add
    assert got[8][0] == pytest.approx(got[16][0], rel=0.25)
    assert got[8][1] == pytest.approx(got[16][1], rel=0.25)


def test_refresh_keeps_the_faster_reading_per_unit(fresh, monkeypatch):
    """A probe taken under load is not kept for good: refresh() probes again
    and stores, per unit, the faster of the two readings."""
    slow = {"flop": 1e11, "gemm": 2e11, "mem": 3e10, "fft": 1e9, "call": 4e7}
    fast = {"flop": 2e11, "gemm": 1e11, "mem": 2e10, "fft": 2e9, "call": 3e7}
    monkeypatch.setattr(rates, "probe", lambda: dict(slow))
    assert rates.rates() == slow  # measured and stored
    monkeypatch.setattr(rates, "probe", lambda: dict(fast))
    want = {"flop": 2e11, "gemm": 2e11, "mem": 3e10, "fft": 2e9, "call": 4e7}
    assert rates.refresh() == want and rates.rates() == want
    rates.forget()
    monkeypatch.setattr(rates, "probe", lambda: pytest.fail("stored: no probe"))
    assert rates.rates() == want


def test_the_micro_kernel_rate_probe(monkeypatch):
    """peak_rate: the in-cache FMA rate of the micro-kernel, all threads;
    (its operands in L1) not below a tenth of the micro-kernel GEMM's rate on
    a product streaming from L2 and not above the hardware's ceiling (a probe
    that timed nothing, or the wrong count of FLOPs, would be far off)."""
    import numba

    from numbaconv.cpu import microkernel

    got = microkernel.peak_rate(0.02)
    gemm = microkernel.measure_rate(256, repeat=3)["ukernel_gflops"] * 1e9
    assert np.isfinite(got) and got > 0.1 * gemm
    # and under any CPU's ceiling: 4 vector FMAs a cycle at 6 GHz on every thread
    lanes = microkernel.lanes_for(np.float32)
    assert got < numba.get_num_threads() * lanes * 2 * 4 * 6e9
