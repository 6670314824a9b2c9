"""Phones over adb, against tests/fake_adb.py (an adb + phone stand-in; no real phone was used)."""
from __future__ import annotations

import sys
from pathlib import Path

import fake_adb
import pytest
from agent_bundles import make_bundle

from sdk.agent import bench
from sdk.agent.adb import AdbError, Phone, devices, parse_executor_runner, run_on_phone

FAKE_ADB = (sys.executable, str(Path(fake_adb.__file__)))

NEW_RUNNER_LOG = """\
I 00:00:00.000241 executorch:executor_runner.cpp:181] Model file model.pte is loaded.
I 00:00:00.000262 executorch:executor_runner.cpp:190] Using method forward
I 00:00:00.000270 executorch:executor_runner.cpp:237] Setting up CPU planned buffer 0, size 1536.
I 00:00:00.001933 executorch:executor_runner.cpp:301] Model loaded in 1.643000 ms.
I 00:00:00.003011 executorch:executor_runner.cpp:488] Iteration 1 of 3: 1.041000 ms
I 00:00:00.003802 executorch:executor_runner.cpp:488] Iteration 2 of 3: 0.761000 ms
I 00:00:00.004571 executorch:executor_runner.cpp:488] Iteration 3 of 3: 0.742000 ms
I 00:00:00.004590 executorch:executor_runner.cpp:497] Model executed successfully 3 time(s) in 2.544000 ms.
I 00:00:00.004598 executorch:executor_runner.cpp:506] 1 outputs:
OutputX 0: tensor(sizes=[1, 4], [0.114, -0.552, 1.203, 0.087])
"""
OLD_RUNNER_LOG = """\
I 00:00:00.000512 executorch:executor_runner.cpp:82] Model file model.pte is loaded.
I 00:00:00.000901 executorch:executor_runner.cpp:165] Inputs prepared.
I 00:00:00.013345 executorch:executor_runner.cpp:173] Model executed successfully 20 time(s) in 12.420000 ms.
"""


def test_parse_executor_runner_logs():
    new = parse_executor_runner(NEW_RUNNER_LOG)
    assert new == {"executions": 3, "total_ms": 2.544, "per_iteration_ms": [1.041, 0.761, 0.742], "load_ms": 1.643}
    old = parse_executor_runner(OLD_RUNNER_LOG)
    assert old["per_iteration_ms"] == [] and old["total_ms"] == 12.42 and old["load_ms"] is None
    with pytest.raises(AdbError, match="did not report"):
        parse_executor_runner("E 00:00:00.000100 executorch:executor_runner.cpp:90] Loading of method forward failed")


@pytest.fixture
def phone(tmp_path, monkeypatch):
    def make(status: str = "Discharging", **kwargs) -> Phone:
        root = fake_adb.make_phone(tmp_path / "phone", status=status)
        monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
        runner = fake_adb.write_runner(tmp_path / "executor_runner")
        return Phone(runner=str(runner), serial=fake_adb.SERIAL, adb=FAKE_ADB, runtimes=("onnxruntime",), **kwargs)
    return make


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("phone-bundle"), 21)


def test_devices_lists_the_phone(phone):
    assert devices(phone().adb) == [{"serial": "FAKE0001", "state": "device", "product": "shiba", "model": "Pixel_8",
                                     "device": "shiba", "transport_id": "1"}]


def test_benchmark_on_phone_on_battery(phone, bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_AWAIT_SAMPLE", "1")  # the loop window holds a busy sample, whatever the load
    r = run_on_phone(bundle, phone(), warmup=3, iterations=150, idle_s=0.6)
    assert r["ran"] and r["parity"]["passed"]  # outputs pulled back from the phone match the reference
    assert r["ran_on"] == "executor_runner on Pixel 8 (Android 15, serial FAKE0001)"
    assert r["latency_ms"]["n"] == 150 and r["latency_ms"]["p50"] >= 4.0  # the runner's own per-iteration times
    assert r["load_ms"] > 0 and r["first_inference_ms"] > 0
    assert r["peak_rss_mb"] is None and r["peak_rss_reason"]
    e = r["energy"]
    assert e["probe"] == "android-battery" and e["idle_w"] == pytest.approx(0.310 * 3.897, rel=0.01)
    assert e["loop_w"] > e["idle_w"] and e["per_inference_mj"] > 0
    assert any("whole process" in w for w in e["warnings"])
    assert not list((tmp_path / "phone/data/local/tmp/edge-sdk").iterdir())  # cleaned up on the phone


def test_charging_phone_measures_time_but_not_energy(phone, bundle):
    r = run_on_phone(bundle, phone(status="Charging"), warmup=1, iterations=5, idle_s=0.2)
    assert r["parity"]["passed"] and r["energy"] is None and "'Charging'" in r["energy_reason"]


def test_wrong_serial_and_wrong_runtime(phone, bundle, tmp_path):
    p = phone()
    with pytest.raises(AdbError, match="device 'R58M' not found"):
        run_on_phone(bundle, Phone(runner=p.runner, serial="R58M", adb=FAKE_ADB, runtimes=p.runtimes))
    with pytest.raises(AdbError, match="runs executorch bundles, not 'onnxruntime'"):
        run_on_phone(bundle, Phone(runner=p.runner, serial=p.serial, adb=FAKE_ADB))


def test_phone_benchmark_through_the_isolated_worker(phone, bundle, monkeypatch):
    p = phone()
    assert Phone.from_dict(p.to_dict()) == p
    launcher = bench._Launcher()  # started now, so its processes see this test's FAKE_ADB_ROOT
    monkeypatch.setattr(bench, "_launcher", launcher)
    try:
        r = bench.run_isolated(bundle, warmup=1, iterations=20, idle_s=0, phone=p.to_dict())
    finally:
        launcher.close()
    assert r["ran_on"].startswith("executor_runner on Pixel 8") and r["parity"]["passed"]
    assert r["energy"] is None and "idle_s=0" in r["energy_reason"]
