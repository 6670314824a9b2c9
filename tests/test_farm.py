"""The device farm on a real Ray cluster on 127.0.0.1: a head and two worker nodes (separate `ray start`
processes), four devices of two profiles, two behind real HTTP agents (`edge-sdk agent serve`, attached with
`edge-sdk farm host --agent URL --token T`) and two running LocalAgent inside their actor. Jobs are tiny real
ONNX bundles, so every result can be checked against the bundle that was sent."""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the farm needs Ray: pip install 'edge-sdk[farm]'")

import ray
from agent_bundles import AgentProcess, make_bundle, zip_bundle
from farm_cluster import LocalRayCluster

import sdk
from sdk.core.bundle import load_artifact
from sdk.farm import LocalConnection, NoDeviceError

EDGE_SDK = str(Path(sys.executable).with_name("edge-sdk"))
TOKEN = secrets.token_urlsafe(16)
NANO, AGX = "jetson-orin-nano", "jetson-agx-orin"
#: device name -> (profile, node, connection kind)
DEVICES = {"nano-a": (NANO, "worker-a", "local"), "agx-a": (AGX, "worker-a", "agent"),
           "nano-b": (NANO, "worker-b", "agent"), "agx-b": (AGX, "worker-b", "local")}
QUICK = {"warmup": 1, "iterations": 5, "idle_s": 0.0, "energy": False}


class Lab:
    def __init__(self, root: Path, cluster: LocalRayCluster, farm, bundles: dict[str, list[Path]], outputs: list[str]):
        self.root, self.cluster, self.farm, self.bundles, self.outputs = root, cluster, farm, bundles, outputs


def model_sha(bundle: Path) -> str:
    art = load_artifact(bundle)
    return next(f["sha256"] for f in art.manifest["files"] if f["path"] == art.manifest["model_file"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("farm")
    cluster = LocalRayCluster(root)
    agents = [AgentProcess(root / f"agent-{name}", token=TOKEN) for name, d in DEVICES.items() if d[2] == "agent"]
    try:
        with ThreadPoolExecutor(len(agents)) as pool:  # the agents start while the cluster does
            started = [pool.submit(agent.start) for agent in agents]
            cluster.start({"worker-a": 2, "worker-b": 2})
            for future in started:
                future.result()
        bundles = {profile: [make_bundle(root / "bundles", seed, name=f"{profile}-{seed}", device=profile,
                                         runtime="tensorrt") for seed in range(5 * i, 5 * i + 5)]
                   for i, profile in enumerate((NANO, AGX))}
        farm = sdk.farm.connect(cluster.address, store=root / "results.sqlite3")
        urls = iter(a.url for a in agents)
        hosts, outputs = [], []
        for name, (profile, node, kind) in sorted(DEVICES.items(), key=lambda d: d[1][2] != "agent"):
            if kind == "agent":  # through the CLI, as a lab host would, token from the environment
                hosts.append(subprocess.Popen(
                    [EDGE_SDK, "farm", "host", "--address", cluster.address, "--device", profile, "--agent", next(urls),
                     "--name", name, "--node", node], env={**cluster.env, "EDGE_SDK_AGENT_TOKEN": TOKEN},
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            else:
                sdk.farm.host(cluster.address, profile, LocalConnection(), name=name, node=node)
        for proc in hosts:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
            outputs.append(out)
        yield Lab(root, cluster, farm, bundles, outputs)
    finally:
        ray.shutdown()
        cluster.stop()
        for agent in agents:
            if agent.proc is not None:
                agent.stop()


def test_hundred_jobs_over_four_devices_of_two_profiles_all_come_back_right(lab):
    bundles = [b for _ in range(10) for profile in (NANO, AGX) for b in lab.bundles[profile]]
    zips = {b: zip_bundle(b, lab.root / f"{b.name}.zip") for b in set(bundles)}
    results = lab.farm.run_many([zips[b] for b in bundles], QUICK)

    assert len(results) == 100
    for bundle, result in zip(bundles, results):
        profile = load_artifact(bundle).device
        assert result.ran and result.parity.passed, result
        assert result["bundle"]["model_sha256"] == model_sha(bundle)  # this bundle's own result, not another's
        assert result.farm.labels["profile"] == profile and DEVICES[result.farm.device][0] == profile
        assert result.farm.host == DEVICES[result.farm.device][1]
    used = Counter(r.farm.device for r in results)
    assert set(used) == set(DEVICES) and sum(used.values()) == 100
    done = [r for r in lab.farm.jobs() if r.status == "done"]
    assert len(done) == 100 and {r.job for r in done} == {r.farm.job for r in results}
    assert {r.device for r in done} == set(DEVICES)
    rows = {row.name: row for row in lab.farm.devices()}
    assert all(row.state == "free" for row in rows.values()) and sum(r.jobs_done for r in rows.values()) == 100
    assert rows["nano-b"].labels["connection"] == "agent" and rows["nano-a"].labels["connection"] == "local"
    assert "onnxruntime" in rows["agx-a"].labels["runtimes"].split(",")  # the agent's /v1/device facts


def test_a_profile_without_a_device_fails_clearly(lab, tmp_path):
    bundle = make_bundle(tmp_path, 99, device="intel-cpu", runtime="openvino")
    with pytest.raises(NoDeviceError, match=r"no device in the farm matches profile=intel-cpu.*edge-sdk farm host"):
        lab.farm.benchmark(bundle, **QUICK)
    with pytest.raises(sdk.core.errors.UserInputError, match="invalid run spec: iterationz: unknown key"):
        lab.farm.benchmark(lab.bundles[NANO][0], iterationz=5)


def test_export_validates_on_a_farm_device(lab, tmp_path):
    import torch

    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU()).eval()
    result = sdk.export(model, "jetson", (torch.randn(1, 8),), output_dir=tmp_path, validate=lab.farm)
    validation = result.report["validation"]
    assert result.report["parity"]["passed"] is True
    assert validation["farm"]["device"] in ("nano-a", "nano-b") and validation["agent"].startswith("farm:nano-")


def test_device_suite_runs_on_every_matching_device_with_junit_each(lab, tmp_path):
    proc = subprocess.run([EDGE_SDK, "test", str(lab.bundles[AGX][0]), "--farm", lab.cluster.address,
                           "--junitxml", str(tmp_path / "junit.xml"), "--warmup", "1", "--iterations", "5",
                           "--soak-iterations", "20"], env=lab.cluster.env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for device in ("agx-a", "agx-b"):
        suite = ET.parse(tmp_path / f"junit-{device}.xml").getroot().find("testsuite")
        assert int(suite.get("tests")) >= 3 and suite.get("failures") == "0" and suite.get("errors") == "0"
    assert not (tmp_path / "junit-nano-a.xml").exists()  # other profile: not this bundle's device


def test_devices_table_and_the_token_is_never_logged(lab):
    proc = subprocess.run([EDGE_SDK, "farm", "devices", "--address", lab.cluster.address], env=lab.cluster.env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    for name, (profile, node, _) in DEVICES.items():
        line = next(line for line in proc.stdout.splitlines() if name in line)
        assert node in line and "free" in line, proc.stdout
    assert "profile=jetson-agx-orin" in proc.stdout.replace("\n", "").replace("│", "").replace(" ", "")
    logged = [p for p in lab.cluster.ray_dir.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not logged and not any(TOKEN in out for out in lab.outputs + [proc.stdout, proc.stderr])


def test_killing_a_host_mid_job_reruns_its_job_on_another_device_of_the_profile(lab):
    """Last: it takes worker-a down. Slow jobs (many iterations) so the kill lands while one runs on nano-a."""
    bundles = lab.bundles[NANO][:3]
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(lab.farm.run_many, bundles, {**QUICK, "iterations": 80_000})
        deadline = time.monotonic() + 60
        while not any(r.name == "nano-a" and r.state == "busy" for r in lab.farm.devices()):
            assert time.monotonic() < deadline and not future.done(), "no job reached nano-a"
            time.sleep(0.05)
        lab.cluster.kill("worker-a")
        results = future.result(timeout=180)

    assert [r["bundle"]["model_sha256"] for r in results] == [model_sha(b) for b in bundles]
    assert all(r.ran and r.parity.passed and r.farm.device == "nano-b" for r in results)
    lost = [r for r in lab.farm.jobs() if r.status == "lost"]
    assert [r.device for r in lost] == ["nano-a"]
    retried = [r for r in lab.farm.jobs(lost[0].job)]
    assert [(r.attempt, r.device, r.status) for r in retried] == [(1, "nano-a", "lost"), (2, "nano-b", "done")]
    assert next(r for r in results if r.farm.job == lost[0].job).farm.attempts == 2
    assert {r.name: r.state for r in lab.farm.devices()}["nano-a"] == "lost"
    assert json.loads(json.dumps(retried[1].result))["parity"]["passed"]
