"""The on-device test runner (device_tests/): the built-in suite against a real agent process on 127.0.0.1 with
bundles of every host-runnable format, broken bundles failing the right test, `edge-sdk test`, and the
plugin staying inert in a pytest session without --bundle."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from agent_bundles import AgentProcess

import sdk
from device_tests import checks
from device_tests.config import Budget, read_config, resolve
from sdk.agent import Client, bench
from sdk.artifact import sha256_file
from sdk.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]
HOST_RUNNABLE = ("android-arm64", "android-litert", "intel-cpu", "jetson-orin-nano")
TOKEN = "device-tests-token"
SMALL = ["--warmup", "3", "--iterations", "30", "--soak-iterations", "200"]
SUITE_TESTS = ("test_loads", "test_parity", "test_latency_p90", "test_peak_memory", "test_energy_per_inference",
               "test_soak_no_drift", "test_soak_no_memory_growth", "test_bad_input_refused_and_agent_keeps_serving")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    out = tmp_path_factory.mktemp("device-tests") / "out"
    return {d: sdk.export(model, d, (torch.randn(1, 16),), output_dir=out, validate=False).artifact.path
            for d in HOST_RUNNABLE}


@pytest.fixture(scope="module")
def agent_process(tmp_path_factory):
    data = tmp_path_factory.mktemp("agent") / "data"
    data.mkdir()
    proc = AgentProcess(data, token=TOKEN, max_upload_mb=64).start()
    yield proc
    proc.stop()


def run(*args: str, token: str | None = TOKEN, module: str = "pytest") -> subprocess.CompletedProcess:
    """`python -m pytest -p device_tests.plugin ...` (or `-m sdk.cli`) from the repo root, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if k != "EDGE_SDK_AGENT_TOKEN"}
    env.update(COLUMNS="200", NO_COLOR="1", PYTHONPATH=str(ROOT), **({"EDGE_SDK_AGENT_TOKEN": token} if token else {}))
    plugin = ["-p", "device_tests.plugin", "-p", "no:cacheprovider"] if module == "pytest" else []
    return subprocess.run([sys.executable, "-m", module, *plugin, *args], cwd=ROOT, capture_output=True, text=True,
                          check=False, timeout=600, env=env)


def junit(path: Path) -> dict[str, dict]:
    """test name -> {"outcome", "message", "properties"} from a JUnit XML file."""
    cases = {}
    for case in ET.parse(path).iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, message = tag, node.get("message", "")
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases[case.get("name")] = {"outcome": outcome, "message": message, "properties": props}
    return cases


def test_suite_passes_on_every_host_runnable_format(bundles, agent_process, tmp_path):
    xml = tmp_path / "results.xml"
    args = [a for d in HOST_RUNNABLE for a in ("--bundle", str(bundles[d]))]
    done = run("device_tests", "--agent", agent_process.url, *args, *SMALL, "--junitxml", str(xml))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    cases = junit(xml)
    assert set(cases) == {f"{t}[{d}]" for t in SUITE_TESTS for d in HOST_RUNNABLE}
    for name, case in cases.items():
        if name.startswith("test_energy_per_inference"):  # no probe here, or a probe but no energy budget
            assert case["outcome"] == "skipped" and "energy" in case["message"], case
        elif name.startswith(("test_latency_p90", "test_peak_memory")) and not name.endswith("[intel-cpu]"):
            # the profile's budget is for a Jetson or a phone: on this host's stand-in it is neither met nor missed
            assert case["outcome"] == "skipped" and case["message"].startswith("not verified here"), case
        else:
            assert case["outcome"] == "passed", (name, case)
    for d in HOST_RUNNABLE:
        assert cases[f"test_loads[{d}]"]["properties"]["measured"].startswith("cold load ")
        assert cases[f"test_peak_memory[{d}]"]["properties"]["budget"] == (  # recorded, judged or not
            f"{sdk.devices.get(d).memory_budget_mb:g} MB (profile {d})")
        assert "over 200 iterations" in cases[f"test_soak_no_memory_growth[{d}]"]["properties"]["measured"]
    assert "edge-sdk device tests" in done.stdout and "cold load" in done.stdout  # the plugin's summary
    # one measurement per bundle however many tests read it: main, soak, bad input and its follow-up
    with Client(agent_process.url, TOKEN) as client:
        jobs = client.jobs(limit=100)
    assert len(jobs) == 4 * len(HOST_RUNNABLE) and {j["status"] for j in jobs} == {"done"}


def test_unreachable_or_unauthorised_agent_fails_the_load_test_only(bundles, agent_process, tmp_path):
    xml = tmp_path / "results.xml"
    done = run("device_tests", "--agent", agent_process.url, "--bundle", str(bundles["intel-cpu"]), *SMALL,
               "--junitxml", str(xml), token=None)
    assert done.returncode == 1
    cases = junit(xml)
    assert cases["test_loads[intel-cpu]"]["outcome"] == "failure"
    assert "401" in cases["test_loads[intel-cpu]"]["message"] and "EDGE_SDK_AGENT_TOKEN" in done.stdout
    failed = {name for name, case in cases.items() if case["outcome"] == "failure"}
    assert failed == {"test_loads[intel-cpu]"}  # the rest are skipped: not measured


def broken_reference(src: Path, dest: Path) -> Path:
    """A copy of the bundle whose reference outputs are negated, with the manifest's sha256 made to match, so
    only the numbers are wrong: what a device silently computing the wrong thing looks like."""
    shutil.copytree(src, dest)
    ref = dest / "reference.npz"
    with np.load(ref) as data:
        arrays = {k: (-v if k.startswith("out_") else v) for k, v in data.items()}
    np.savez(ref, **arrays)
    manifest = json.loads((dest / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "reference.npz":
            entry.update(bytes=ref.stat().st_size, sha256=sha256_file(ref))
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


def test_broken_bundles_fail_the_right_tests_through_edge_sdk_test(bundles, agent_process, tmp_path):
    lab = tmp_path / "lab"
    bad = broken_reference(bundles["intel-cpu"], lab / "bad-reference")
    slow = shutil.copytree(bundles["jetson-orin-nano"], lab / "slow")
    (lab / "device_tests.toml").write_text("soak_rss_growth_mb = 16\n\n[slow]\nlatency_p90_ms = 0.000001\n"
                                           "memory_budget_mb = 1\n")
    xml = tmp_path / "results.xml"
    done = run("test", str(bad), str(slow), "--agent", agent_process.url, "--junitxml", str(xml), "--warmup", "2",
               "--iterations", "20", "--soak-iterations", "50", module="sdk.cli")
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    cases = junit(xml)
    failed = {name: case["message"] for name, case in cases.items() if case["outcome"] != "passed"
              and not name.startswith("test_energy")}
    assert set(failed) == {"test_parity[bad-reference]", "test_latency_p90[slow]", "test_peak_memory[slow]"}
    assert f"{bad} (intel-cpu): outputs do not match reference.npz within tolerance min_cosine 0.9999: " \
           "out_0: cosine -1.000000 < 0.9999" in failed["test_parity[bad-reference]"]
    assert f"{slow} (jetson-orin-nano): latency p90 " in failed["test_latency_p90[slow]"]
    assert f"ms > budget 1e-06 ms ({lab / 'device_tests.toml'} [slow])" in failed["test_latency_p90[slow]"]
    assert f"{slow} (jetson-orin-nano): peak memory " in failed["test_peak_memory[slow]"]
    assert f"MB > budget 1 MB ({lab / 'device_tests.toml'} [slow])" in failed["test_peak_memory[slow]"]
    soak = cases["test_soak_no_memory_growth[bad-reference]"]["properties"]["budget"]
    assert soak == f"16 MB ({lab / 'device_tests.toml'})"  # the file's top level applies to every bundle beside it
    for title in (f"{bad} (intel-cpu) on {agent_process.url}", f"{slow} (jetson-orin-nano) on {agent_process.url}"):
        assert title in done.stdout
    assert done.stdout.count("FAIL") >= 3 and "cold load" in done.stdout


def test_plugin_is_inert_without_bundle_and_leaves_own_fixtures_alone(bundles, tmp_path):
    (tmp_path / "test_mine.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef bundle():\n    return 'mine'\n\n"
        "def test_own_fixture_wins(bundle):\n    assert bundle == 'mine'\n")
    (tmp_path / "test_plugin_fixture.py").write_text("def test_needs_a_bundle(device_profile):\n    pass\n")
    done = run(str(tmp_path), "-rs", token=None)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 1 skipped" in done.stdout and "no bundle to test: pass --bundle PATH" in done.stdout
    assert "edge-sdk device tests" not in done.stdout  # no header, no summary, no agent
    with_bundle = run(str(tmp_path / "test_mine.py"), "--bundle", str(bundles["intel-cpu"]), token=None)
    assert with_bundle.returncode == 0 and "1 passed" in with_bundle.stdout  # not parametrized over --bundle
    assert "--soak-iterations" in run("--help", token=None).stdout  # no option clashes with the installed plugins


def test_usage_errors_are_reported_before_anything_runs(bundles, tmp_path):
    done = run("device_tests", "--bundle", str(tmp_path), token=None)
    assert done.returncode == 4 and "is not an artifact bundle" in done.stderr
    done = run("device_tests", "--bundle", str(bundles["intel-cpu"]), "--device", "jetsn", token=None)
    assert done.returncode == 4 and "jetsn" in done.stderr


def test_user_side_sample_uses_the_fixtures(bundles):
    done = run("samples/device_test_example.py", "--agent", "local", "--bundle", str(bundles["intel-cpu"]), token=None)
    assert done.returncode == 0 and "2 passed" in done.stdout, done.stdout[-3000:]


def test_budget_precedence_and_config_errors(bundles, tmp_path):
    lab = tmp_path / "lab"
    bundle = shutil.copytree(bundles["intel-cpu"], lab / "intel-cpu")
    profile = sdk.devices.get("intel-cpu")
    plain = resolve(bundle, profile)
    assert plain["latency_p90_ms"] == Budget("latency_p90_ms", 30.0, "profile intel-cpu")
    assert plain["energy_mj_per_inference"].value is None and str(plain["energy_mj_per_inference"]) == "none set"
    assert plain["soak_rss_growth_mb"].source == "default"
    config = lab / "device_tests.toml"
    config.write_text("latency_p90_ms = 20\nenergy_mj_per_inference = 3.5\n\n[intel-cpu]\nlatency_p90_ms = 8\n")
    assert read_config(config) == {None: {"latency_p90_ms": 20.0, "energy_mj_per_inference": 3.5},
                                   "intel-cpu": {"latency_p90_ms": 8.0}}
    from_file = resolve(bundle, profile)
    assert from_file["latency_p90_ms"] == Budget("latency_p90_ms", 8.0, f"{config} [intel-cpu]")
    assert from_file["energy_mj_per_inference"] == Budget("energy_mj_per_inference", 3.5, str(config))
    cli = resolve(bundle, profile, {"latency_p90_ms": 5.0, "memory_budget_mb": None})
    assert cli["latency_p90_ms"] == Budget("latency_p90_ms", 5.0, "--latency-budget-ms")
    assert cli["memory_budget_mb"] == Budget("memory_budget_mb", 4096.0, "profile intel-cpu")
    for text, error in (("latency_p90 = 3\n", "unknown budget 'latency_p90' (did you mean 'latency_p90_ms'?)"),
                        ("[intel-cpuu]\nlatency_p90_ms = 3\n", "table [intel-cpuu] names no bundle folder"),
                        ("memory_budget_mb = 0\n", "memory_budget_mb must be a positive number")):
        config.write_text(text)
        with pytest.raises(UserInputError, match=re.escape(error)):
            read_config(config)


def test_soak_and_bad_input_verdicts_catch_leaks_drift_and_silent_acceptance(bundles):
    """The verdicts on a real result (measured here, in process) with one figure changed at a time."""
    real = bench.run(bundles["intel-cpu"], warmup=2, iterations=50, probes=[], check_bad_input=True)
    soak = real["soak"]
    assert soak["rss_before_loop_mb"] > 0 and soak["parity_after_loop"]["passed"]
    assert soak["drift"][0]["max_abs_change"] == 0.0 and soak["drift"][0]["max_abs_first"] > 0
    label, threshold = "out/intel-cpu (intel-cpu)", Budget("soak_rss_growth_mb", 5.0, "default")
    drift_budget = Budget("soak_max_drift", 1e-4, "default")
    assert checks.soak_memory(label, checks.Outcome(real), threshold).status == "passed"
    assert checks.soak_drift(label, checks.Outcome(real), drift_budget).status == "passed"

    def changed(**soak_changes) -> checks.Outcome:
        return checks.Outcome({**real, "soak": {**soak, **soak_changes}})

    leak = checks.soak_memory(label, changed(rss_after_loop_mb=soak["rss_before_loop_mb"] + 40), threshold)
    assert leak.failure.startswith(f"{label}: resident memory grew 40.00 MB over 50 iterations")
    assert leak.failure.endswith("> threshold 5 MB (default)")
    first = soak["drift"][0]["max_abs_first"]
    moved = checks.soak_drift(label, changed(drift=[{**soak["drift"][0], "max_abs_change": first / 100}]), drift_budget)
    assert f"{label}: output out_0 drifted over 50 iterations" in moved.failure and "0.01 of its largest" in moved.failure
    lost = checks.soak_drift(label, changed(parity_after_loop={**soak["parity_after_loop"], "passed": False,
                                                               "failures": ["out_0: cosine 0.5 < 0.9999"]}), drift_budget)
    assert "after 50 iterations the outputs no longer match reference.npz" in lost.failure

    assert real["bad_input"]["rejected"]
    inputs = [{"name": "in_0", "shape": [1, 16]}]
    ok = checks.bad_input(label, checks.Outcome(real), inputs, None, checks.Outcome(real), drift_budget)
    assert ok.status == "passed" and "refused shape [1, 17]" in ok.measured
    accepted = checks.Outcome({**real, "bad_input": {"input_shape": [1, 17], "rejected": False, "error": "..."}})
    assert checks.bad_input(label, accepted, inputs, None, None, drift_budget).failure == (
        f"{label}: the runtime accepted an input of shape [1, 17] (the model takes in_0 of shape [1, 16]) without an error")
    vague = checks.Outcome({**real, "bad_input": {"input_shape": [1, 17], "rejected": True, "error": "RuntimeError: 7"}})
    assert "its error does not say what is wrong" in checks.bad_input(label, vague, inputs, None, None, drift_budget).failure
    gone = checks.bad_input(label, checks.Outcome(real), inputs, "connection refused", None, drift_budget)
    assert "afterwards the agent stopped answering: connection refused" in gone.failure
