"""The agent as a real server process on 127.0.0.1: many jobs, concurrent submissions, hostile uploads,
auth, SIGKILL mid-job and restart. Bundles are tiny ONNX models run by ONNX Runtime (no torch)."""
from __future__ import annotations

import io
import json
import os
import pickle
import stat
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from agent_bundles import AgentProcess, make_bundle, zip_bundle

from sdk.agent import Client
from sdk.agent.server import serve
from sdk.errors import AgentError, UserInputError

TOKEN = "test-token-5b1c9f"
QUICK = {"warmup": 1, "iterations": 5, "idle_s": 0, "energy": False, "timeout_s": 60}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("bundles")
    return [make_bundle(out, seed) for seed in range(10)]


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    proc = AgentProcess(tmp_path_factory.mktemp("agent") / "data", token=TOKEN, max_upload_mb=2, max_queued=500).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(agent) -> Client:
    with Client(agent.url, TOKEN) as c:
        yield c


def expected_sha(bundle: Path) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return next(f["sha256"] for f in manifest["files"] if f["path"] == manifest["model_file"])


def assert_matches(job: dict, bundle: Path, iterations: int) -> None:
    assert job["status"] == "done", job["error"]
    result = job["result"]
    assert result["bundle"]["model_sha256"] == expected_sha(bundle)
    assert result["parity"]["passed"], result["parity"]  # this bundle's model reproduced this bundle's reference
    assert result["latency_ms"]["n"] == iterations


def test_device_reports_runtimes_and_power(client):
    info = client.device()
    assert info["runtimes"]["onnxruntime"]["available"] is True
    assert "coreml" in info["runtimes"]
    power = info["power"]
    assert set(power["unavailable"]) | {p["name"] for p in power["working"]} >= {"rapl", "nvml", "jetson-ina3221", "powermetrics"}
    for reason in power["unavailable"].values():
        assert reason  # every absent probe says why


def test_token_required(agent):
    r = httpx.get(agent.url + "/v1/device")
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = httpx.get(agent.url + "/v1/jobs", headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401 and "wrong token" in r.json()["detail"]
    with pytest.raises(AgentError) as err:
        Client(agent.url, "nope").device()
    assert err.value.status_code == 401
    assert isinstance(err.value.__cause__, httpx.HTTPStatusError)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "jetson.local"])
def test_refuses_non_loopback_without_token(host, tmp_path):
    with pytest.raises(UserInputError, match="without a token"):
        serve(host, 8765, None, tmp_path)


def test_unreachable_agent_is_an_agent_error():
    with pytest.raises(AgentError, match="cannot reach") as err:
        Client("http://127.0.0.1:9", TOKEN).device()
    assert isinstance(err.value.__cause__, httpx.TransportError)


def test_200_sequential_jobs(client, bundles):
    submitted = [(client.submit(bundles[i % len(bundles)], **QUICK), bundles[i % len(bundles)]) for i in range(200)]
    assert len({job_id for job_id, _ in submitted}) == 200
    for job_id, bundle in submitted:
        assert_matches(client.wait(job_id, timeout=300), bundle, QUICK["iterations"])
    listed = {j["id"] for j in client.jobs(limit=1000)}
    assert {job_id for job_id, _ in submitted} <= listed


def test_20_concurrent_submissions(client, bundles):
    def submit(i: int) -> tuple[str, Path, int]:
        iterations = 3 + i  # a per-job spec, so a mix-up of specs would show too
        return client.submit(bundles[i % len(bundles)], **{**QUICK, "iterations": iterations}), bundles[i % len(bundles)], iterations

    with ThreadPoolExecutor(20) as pool:
        submitted = list(pool.map(submit, range(20)))
    assert len({s[0] for s in submitted}) == 20
    for job_id, bundle, iterations in submitted:
        assert_matches(client.wait(job_id, timeout=120), bundle, iterations)


def test_benchmark_result_attributes(client, bundles):
    r = client.benchmark(bundles[0], warmup=2, iterations=20, idle_s=0, check_bad_input=True)
    assert r.ran and r.parity.passed
    assert 0 < r.latency_ms.p50 <= r.latency_ms.p90 <= r.latency_ms.p99
    assert r.load_ms > 0 and r.peak_rss_mb > 10
    assert r.energy is None and r.energy_reason
    assert r.ran_on.startswith("onnxruntime")
    assert r.to_dict()["latency_ms"]["n"] == 20 and r.agent == client.url
    assert r.bad_input.rejected and r.bad_input.input_shape == [1, 9]
    assert r.bad_input.error.startswith("InputMismatchError: input 'in_0' must have shape [1, 8]")


# -- hostile and malformed uploads ----------------------------------------------------------------------


def _zip(entries: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def _bundle_entries(bundle: Path) -> dict[str, bytes]:
    return {p.relative_to(bundle).as_posix(): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}


class Evil:
    """Unpickling this runs a shell command: what the agent must never do."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/edge-sdk-agent-pwned",))


def _edited_manifest(bundle: Path, edit) -> dict[str, bytes]:
    entries = _bundle_entries(bundle)
    manifest = json.loads(entries["manifest.json"])
    edit(manifest)
    entries["manifest.json"] = json.dumps(manifest).encode()
    return entries


def malformed_cases(bundle: Path, tmp: Path) -> dict[str, tuple[bytes, int, str]]:
    good = _bundle_entries(bundle)
    pickled = make_bundle(tmp, 91, "pickled", extra_files={"weights.bin": pickle.dumps(Evil(), protocol=0)})
    pickled5 = make_bundle(tmp, 92, "pickled5", extra_files={"extra/weights.bin": pickle.dumps({"w": [1.0]}, protocol=5)})
    torch_zip = _zip({"archive/data.pkl": pickle.dumps({"w": 1}, protocol=2), "archive/version": b"3"})
    torchscript = make_bundle(tmp, 93, "torchscript", extra_files={"weights.bin": torch_zip})
    pt_file = make_bundle(tmp, 94, "ptfile", extra_files={"model.pt": b"\x08\x01"})
    elf = make_bundle(tmp, 95, "elf", extra_files={"libcustom_op.bin": b"\x7fELF\x02\x01\x01" + bytes(64)})
    tampered = dict(good, **{"model.onnx": good["model.onnx"] + b"\x00"})
    return {
        "not a zip": (b"this is not a zip archive", 400, "not a zip"),
        "zip-slip ..": (_zip({**good, "../../evil.txt": b"x"}), 400, "zip-slip"),
        "zip-slip absolute": (_zip({**good, "/tmp/evil.txt": b"x"}), 400, "absolute"),
        "symlink": (_zip(good, symlinks={"link": "/etc/passwd"}), 400, "symbolic link"),
        "oversize": (_zip({**good, "noise.bin": os.urandom(3 << 20)}), 413, "limit"),
        "pickle protocol 0": (zip_bundle(pickled).read_bytes(), 415, "pickle"),
        "pickle protocol 5": (zip_bundle(pickled5).read_bytes(), 415, "pickle"),
        "torch.save/TorchScript zip": (zip_bundle(torchscript).read_bytes(), 415, "nested zip"),
        ".pt by name": (zip_bundle(pt_file).read_bytes(), 415, ".pt files"),
        "native code": (zip_bundle(elf).read_bytes(), 415, "ELF"),
        "sha256 mismatch": (_zip(tampered), 422, "sha256"),
        "manifest/inputs mismatch": (_zip(_edited_manifest(bundle, lambda m: m["inputs"][0].update(shape=[1, 9]))),
                                     422, "disagree"),
        "output missing from reference": (_zip(_edited_manifest(bundle, lambda m: m["outputs"].append(
            {"name": "out_1", "shape": [1], "dtype": "float32"}))), 422, "no such array"),
        "file not in manifest": (_zip({**good, "extra.txt": b"hello"}), 422, "not listed"),
        "no manifest": (_zip({"model.onnx": good["model.onnx"]}), 422, "manifest.json"),
        "unknown runtime": (_zip(_edited_manifest(bundle, lambda m: m.update(runtime="tvm"))), 422, "no backend"),
    }


def test_malformed_uploads_are_refused_and_agent_keeps_serving(agent, client, bundles, tmp_path):
    marker = Path("/tmp/edge-sdk-agent-pwned")
    marker.unlink(missing_ok=True)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for case, (payload, status, words) in malformed_cases(bundles[0], tmp_path).items():
        r = httpx.post(agent.url + "/v1/jobs", headers=headers, files={"bundle": ("b.zip", payload, "application/zip")},
                       data={"spec": json.dumps(QUICK)}, timeout=30)
        assert r.status_code == status, (case, r.status_code, r.text)
        assert words.lower() in r.json()["detail"].lower(), (case, r.json()["detail"])
    assert not marker.exists(), "a pickle in an upload was executed"
    assert client.jobs(status="queued") == [] and not any((agent.data_dir / "jobs").iterdir())
    assert_matches(client.wait(client.submit(bundles[1], **QUICK), timeout=60), bundles[1], QUICK["iterations"])


def test_chunked_upload_without_length_is_capped_while_streaming(agent, client):
    """No Content-Length to check up front: the agent stops reading at the limit."""
    boundary = "edge-sdk-test"

    def body():
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="bundle"; filename="b.zip"\r\n'
               "Content-Type: application/zip\r\n\r\n").encode()
        for _ in range(30):
            yield os.urandom(100_000)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = httpx.post(agent.url + "/v1/jobs", content=body(), timeout=30,
                   headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "2 MiB" in r.json()["detail"] and "limit" in r.json()["detail"]
    assert client.device()["queue"]["queued"] == 0


@pytest.mark.parametrize("spec, status, words", [
    ({"iterations": 0}, 422, "iterations"),
    ({"iteratons": 5}, 422, "iteratons: unknown key"),
    ({"tolerance": {"min_cos": 0.9}}, 422, "min_cos"),
    ({"target": "phone"}, 400, "no phone"),
])
def test_bad_run_spec(agent, bundles, spec, status, words):
    r = httpx.post(agent.url + "/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                   files={"bundle": ("b.zip", zip_bundle(bundles[0]).read_bytes())}, data={"spec": json.dumps(spec)})
    assert r.status_code == status and words in r.json()["detail"], r.text


def test_missing_parts(agent):
    headers = {"Authorization": f"Bearer {TOKEN}"}
    r = httpx.post(agent.url + "/v1/jobs", headers=headers, data={"spec": "{}"})
    assert r.status_code == 400
    r = httpx.post(agent.url + "/v1/jobs", headers=headers, content=b"{}", )
    assert r.status_code == 400 and "multipart" in r.json()["detail"]
    assert httpx.get(agent.url + "/v1/jobs/nope", headers=headers).status_code == 404


# -- crashes, hangs, SIGKILL ----------------------------------------------------------------------------


def test_crashing_and_hanging_runtimes_fail_only_their_job(client, bundles, tmp_path):
    crash = make_bundle(tmp_path, 7, "crash", runtime="test-crash")
    hang = make_bundle(tmp_path, 8, "hang", runtime="test-hang")
    crash_job = client.wait(client.submit(crash, **QUICK), timeout=60)
    assert crash_job["status"] == "failed" and "SIGSEGV" in crash_job["error"] and "'load'" in crash_job["error"]
    hang_job = client.wait(client.submit(hang, **{**QUICK, "timeout_s": 2}), timeout=60)
    assert hang_job["status"] == "failed" and "timed out after 2 s" in hang_job["error"]
    with pytest.raises(AgentError, match="SIGSEGV"):
        client.benchmark(crash, **QUICK)
    assert_matches(client.wait(client.submit(bundles[2], **QUICK), timeout=60), bundles[2], QUICK["iterations"])


def test_sigkill_mid_job_then_restart(tmp_path, bundles):
    agent = AgentProcess(tmp_path / "data", token=TOKEN).start()
    try:
        client = Client(agent.url, TOKEN)
        finished = [client.submit(bundles[i], **QUICK) for i in range(3)]
        before = {job_id: client.wait(job_id, timeout=60) for job_id in finished}
        long_job = client.submit(bundles[3], **{**QUICK, "iterations": 10_000_000, "timeout_s": 3600})
        queued = [client.submit(bundles[i], **QUICK) for i in (4, 5)]
        deadline = time.monotonic() + 30
        while client.job(long_job)["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        children = psutil.Process(agent.proc.pid).children(recursive=True)
        assert children, "the running job should be in a child process"
        agent.kill()
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, "benchmark child outlived the killed agent"
    finally:
        agent.stop()

    agent = AgentProcess(tmp_path / "data", token=TOKEN).start()
    try:
        client = Client(agent.url, TOKEN)
        for job_id, job in before.items():
            assert client.job(job_id) == job  # finished results intact, byte for byte
        failed = client.job(long_job)
        assert failed["status"] == "failed" and "agent restarted" in failed["error"]
        for job_id, i in zip(queued, (4, 5)):  # queued jobs survive the restart and run
            assert_matches(client.wait(job_id, timeout=60), bundles[i], QUICK["iterations"])
    finally:
        agent.stop()
