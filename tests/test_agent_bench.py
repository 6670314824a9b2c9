"""The measurement, in-process and isolated in a child process, and LocalAgent (no server)."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from agent_bundles import PLUGINS, REPO, make_bundle, onnx_model, zip_bundle

from sdk.agent import BenchmarkFailed, BenchmarkResult, LocalAgent, bench
from sdk.agent.intake import content_problem
from sdk.artifact import load_artifact


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bench"), 11)


def test_agent_imports_without_torch(bundle):
    """Every sdk.agent module imports, and a benchmark runs, with torch made unimportable."""
    code = f"""
import sys, pkgutil, importlib
sys.modules['torch'] = None
import sdk.agent
names = [m.name for m in pkgutil.walk_packages(sdk.agent.__path__, 'sdk.agent.')]
for name in names:
    importlib.import_module(name)
from sdk.agent import bench
r = bench.run({str(bundle)!r}, warmup=1, iterations=3, probes=[])
assert r['ran'] and r['parity']['passed'], r
print(len(names), 'modules')
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) >= 12


def test_run_in_process(bundle):
    r = bench.run(bundle, warmup=2, iterations=30, probes=[])
    assert r["ran"] and r["ran_on"].startswith("onnxruntime") and r["parity"]["passed"]
    assert r["parity"]["tolerance"] == {"min_cosine": 0.9999}  # from the manifest
    lat = r["latency_ms"]
    assert lat["n"] == 30 and 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["throughput_ips"] == pytest.approx(1e3 / lat["mean"])
    assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
    assert r["energy"] is None and r["energy_reason"] == "energy measurement not requested"
    manifest = load_artifact(bundle).manifest
    assert r["bundle"]["model_sha256"] == next(f["sha256"] for f in manifest["files"] if f["path"] == "model.onnx")


def test_parity_failure_is_reported_not_raised(tmp_path):
    wrong = make_bundle(tmp_path, 12, reference_scale=-1.0)
    r = bench.run(wrong, warmup=0, iterations=2, probes=[])
    assert r["ran"] and not r["parity"]["passed"] and "cosine" in r["parity"]["failures"][0]


def test_runtime_missing_here(tmp_path):
    r = bench.run(make_bundle(tmp_path, 13, runtime="coreml"), probes=[])
    assert r == {"ran": False, "runtime": "coreml", "reason": r["reason"], "bundle": r["bundle"]}
    assert "macOS" in r["reason"]


def test_run_isolated(bundle):
    r = bench.run_isolated(bundle, warmup=2, iterations=10, energy=False)
    assert r["ran"] and r["parity"]["passed"] and r["latency_ms"]["n"] == 10
    assert "benchmark process" in r["rss_scope"]
    assert r["energy"] is None and r["energy_reason"] == "energy measurement not requested"


def test_isolated_error_names_phase_and_cause(tmp_path):
    b = make_bundle(tmp_path, 14)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["inputs"][0]["dtype"] = "float64"  # the runtime will be fed float32 from reference.npz
    (b / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BenchmarkFailed) as err:
        bench.run_isolated(b, warmup=0, iterations=1, energy=False)
    assert err.value.kind == "error" and err.value.phase == "first-inference"
    assert "InputMismatchError" in str(err.value) and "float64" in str(err.value)


@pytest.fixture
def plugin_launcher(monkeypatch):
    """A launcher whose processes also load the misbehaving test runtimes (tests/fixtures/agent_plugins)."""
    monkeypatch.setenv("PYTHONPATH", str(PLUGINS))
    monkeypatch.setenv("EDGE_SDK_TEST_PLUGINS", "1")
    launcher = bench._Launcher()
    monkeypatch.setattr(bench, "_launcher", launcher)
    yield
    launcher.close()


def test_crash_and_hang_fail_only_that_benchmark(tmp_path, bundle, plugin_launcher):
    with pytest.raises(BenchmarkFailed, match="SIGSEGV during 'load'") as err:
        bench.run_isolated(make_bundle(tmp_path, 15, runtime="test-crash"), energy=False)
    assert err.value.kind == "crash"
    with pytest.raises(BenchmarkFailed, match="timed out after 1 s during 'load'") as err:
        bench.run_isolated(make_bundle(tmp_path, 16, runtime="test-hang"), energy=False, timeout_s=1)
    assert err.value.kind == "timeout"
    assert bench.run_isolated(bundle, warmup=0, iterations=2, energy=False)["parity"]["passed"]


def test_local_agent_takes_folder_zip_or_artifact(bundle, tmp_path):
    agent = LocalAgent()
    for source in (bundle, zip_bundle(bundle, tmp_path / "b.zip"), load_artifact(bundle)):
        r = agent.benchmark(source, warmup=1, iterations=5, idle_s=0)
        assert isinstance(r, BenchmarkResult) and r.parity.passed and r.latency_ms.n == 5 and r.agent == "local"
    assert agent.device()["runtimes"]["onnxruntime"]["available"]


def test_benchmark_result_access():
    r = BenchmarkResult({"ran": True, "latency_ms": {"p90": 1.5}, "energy": None, "parity": {"passed": True}})
    assert r.latency_ms.p90 == 1.5 and r["latency_ms"]["p90"] == 1.5 and r.energy is None
    with pytest.raises(AttributeError, match="no field 'latency'"):
        _ = r.latency
    with pytest.raises(AttributeError, match="read-only"):
        r.ran = False
    d = r.to_dict()
    d["latency_ms"]["p90"] = 9
    assert r.latency_ms.p90 == 1.5
    assert "p90=1.500ms" in repr(r)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickles_are_recognised_by_content(protocol):
    assert "pickle" in content_problem("weights.bin", pickle.dumps({"w": [1.0, 2.0]}, protocol=protocol))


def test_model_formats_are_plain_data(tmp_path):
    weights = np.random.default_rng(0).standard_normal(4096).astype(np.float32).tobytes()
    assert content_problem("model.onnx", onnx_model(0).SerializeToString()) is None
    assert content_problem("model.xml", b'<?xml version="1.0"?>\n<net name="m" version="11">') is None
    assert content_problem("model.bin", weights) is None
    assert content_problem("model.tflite", b"\x1c\x00\x00\x00TFL3" + weights[:64]) is None
    assert content_problem("model.pte", b"\x18\x00\x00\x00ET12" + weights[:64]) is None
    np.savez(tmp_path / "ok.npz", a=np.ones(3))
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    assert content_problem("reference.npz", (tmp_path / "ok.npz").read_bytes()[:64], tmp_path / "ok.npz") is None
    assert "object arrays" in content_problem("reference.npz", b"PK\x03\x04", tmp_path / "objects.npz")


def test_store_recovers_after_a_crash(tmp_path):
    from sdk.agent.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    done, running, queued = (store.add({"n": i}, {"device": "d"}) for i in range(3))
    assert store.take(done) and not store.take(done)  # queued -> running once
    store.finish(done, {"latency_ms": {"p50": 1.0}})
    assert store.take(running)
    store = JobStore(tmp_path / "jobs.sqlite3")  # a new agent process opens the same file
    assert store.recover() == [queued]
    assert store.get(done)["result"] == {"latency_ms": {"p50": 1.0}}
    assert store.get(running)["status"] == "failed" and "agent restarted" in store.get(running)["error"]
    assert store.get(queued)["queue_position"] == 0 and store.counts() == {"queued": 1, "running": 0, "done": 1, "failed": 1,
                                                                                  "cancelled": 0}
