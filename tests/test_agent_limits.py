"""The agent as a job queue a lab can rely on, over real HTTP on 127.0.0.1: cancellation (queued and running,
the benchmark process killed), a bounded queue (429 + Retry-After), idempotent submissions, private files,
retention, a memory rlimit on the benchmark process, an audit log without status polls, TLS through
`edge-sdk agent serve --tls-cert/--tls-key`, the disk guard, and the token rules."""
from __future__ import annotations

import datetime as dt
import inspect
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
from agent_bundles import REPO, AgentProcess, free_port, make_bundle, zip_bundle
from typer.testing import CliRunner

from sdk.agent import Client
from sdk.agent.server import serve
from sdk.cli import app
from sdk.errors import AgentError, UserInputError

TOKEN = "limits-test-token-0123456789"
QUICK = {"warmup": 0, "iterations": 2, "idle_s": 0, "energy": False, "timeout_s": 60}
LONG = {**QUICK, "iterations": 10_000_000, "timeout_s": 600}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("limits"), 0)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    proc = AgentProcess(tmp_path_factory.mktemp("limits") / "data", token=TOKEN, max_queued=2,
                        retention_days=5 / 86400).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client(agent):
    with Client(agent.url, TOKEN) as c:
        yield c


def wait_for(client: Client, job_id: str, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.job(job_id))["status"] != status:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def benchmark_processes(agent: AgentProcess, timeout: float = 30) -> list[psutil.Process]:
    """The forked benchmark processes (children of the launcher, the agent's child), once there are any."""
    deadline = time.monotonic() + timeout
    while not (found := [p for launcher in psutil.Process(agent.proc.pid).children() for p in launcher.children()]):
        assert time.monotonic() < deadline, "no benchmark process appeared"
        time.sleep(0.05)
    return found


def test_cancel_queued_and_running_and_the_queue_bound(agent, client, bundle):
    running = client.submit(bundle, **LONG)
    wait_for(client, running, "running")
    queued = [client.submit(bundle, **QUICK) for _ in range(2)]
    with pytest.raises(AgentError) as full:  # two waiting: the third is refused, with when to come back
        client.submit(bundle, **QUICK)
    assert full.value.status_code == 429 and "queue is full" in str(full.value)
    r = httpx.post(agent.url + "/v1/jobs", headers={"Authorization": f"Bearer {TOKEN}"},
                   files={"bundle": ("b.zip", zip_bundle(bundle).read_bytes())}, data={"spec": json.dumps(QUICK)})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1

    assert client.cancel(queued[0])["status"] == "cancelled"
    children = benchmark_processes(agent)
    assert client.cancel(running)["cancelling"] is True
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, "the cancelled job's benchmark process is still alive"
    job = wait_for(client, running, "cancelled")
    assert "killed" in job["error"] and job["result"] is None
    with pytest.raises(AgentError) as again:
        client.cancel(running)
    assert again.value.status_code == 409
    assert client.wait(queued[1], timeout=60)["status"] == "done"  # the queue moves on


def test_idempotency_key_returns_the_same_job(agent, client, bundle):
    first = client.submit(bundle, idempotency_key="retry-me-1", **QUICK)
    assert client.submit(bundle, idempotency_key="retry-me-1", **QUICK) == first
    with pytest.raises(AgentError) as other:
        client.submit(bundle, idempotency_key="retry-me-1", **{**QUICK, "iterations": 3})
    assert other.value.status_code == 409 and "different" in str(other.value)
    assert client.wait(first, timeout=60)["status"] == "done"


def test_wait_has_a_default_timeout(client, bundle):
    assert inspect.signature(Client.wait).parameters["timeout"].default == 3600.0
    job_id = client.submit(bundle, **LONG)
    with pytest.raises(AgentError, match="still (queued|running)"):
        client.wait(job_id, timeout=0.2)
    client.cancel(job_id)
    wait_for(client, job_id, "cancelled")


def test_memory_limit_fails_the_job_with_the_reason(client, bundle):
    job = client.wait(client.submit(bundle, max_memory_mb=32, **QUICK), timeout=60)
    assert job["status"] == "failed" and "32 MiB" in job["error"] and "memory limit" in job["error"]


def test_files_are_private_and_old_results_are_removed(agent, client, bundle):
    old = client.submit(bundle, **QUICK)
    client.wait(old, timeout=60)
    for path in [agent.data_dir, *agent.data_dir.rglob("*")]:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:  # a finished job's folder the worker is removing right now
            continue
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"  # dirs 0700, files 0600
    assert stat.S_IMODE(agent.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((agent.data_dir / "jobs.sqlite3").stat().st_mode) == 0o600
    deadline = time.monotonic() + 30  # retention is 5 s on this agent; the worker purges at least every second
    while True:
        try:
            client.job(old)
        except AgentError as exc:
            assert exc.status_code == 404
            break
        assert time.monotonic() < deadline, "a result older than the retention limit is still there"
        time.sleep(0.2)


def test_audit_log_names_the_client_and_status_polls_are_not_logged(agent, client, bundle):
    job_id = client.submit(bundle, **QUICK)
    for _ in range(20):
        client.job(job_id)
    httpx.get(agent.url + "/v1/device", headers={"Authorization": "Bearer wrong-token-wrong-token"})
    entries = [json.loads(line) for line in (agent.data_dir / "audit.log").read_text().splitlines()]
    submitted = [e for e in entries if e["job"] == job_id]
    assert submitted and submitted[0]["method"] == "POST" and submitted[0]["status"] == 202
    assert submitted[0]["client"].startswith("127.0.0.1:") and len(submitted[0]["token_sha256"]) == 12
    assert TOKEN not in (agent.data_dir / "audit.log").read_text()
    assert any(e["status"] == 401 and e["path"] == "/v1/device" for e in entries)
    assert not any(e["method"] == "GET" and e["status"] == 200 for e in entries)
    assert f"GET /v1/jobs/{job_id}" not in agent.read_log()


def self_signed(tmp: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return tmp / "cert.pem", tmp / "key.pem"


def test_tls_flags_and_the_disk_guard_through_the_cli(tmp_path, bundle):
    cert, key = self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sdk.cli", "agent", "serve", "--port", str(port), "--token", TOKEN,
                             "--data-dir", str(tmp_path / "data"), "--tls-cert", str(cert), "--tls-key", str(key),
                             "--min-free-mb", str(10 ** 12)],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        with Client(f"https://127.0.0.1:{port}", TOKEN, verify=str(cert)) as c:
            deadline = time.monotonic() + 60
            while True:
                try:
                    info = c.device()
                    break
                except AgentError:
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.2)
            assert info["limits"]["min_free_mb"] == 10 ** 12
            with pytest.raises(AgentError) as full:  # nowhere has a petabyte free: the disk guard refuses
                c.submit(bundle, **QUICK)
            assert full.value.status_code == 507 and "disk free" in str(full.value)
        with pytest.raises(httpx.ConnectError):  # the certificate is not in the system's trust store
            httpx.get(f"https://127.0.0.1:{port}/v1/device")
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"http://127.0.0.1:{port}/v1/device")  # plain HTTP is not served
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("token", ["a", "short-token-15ch"[:15]])
def test_serve_refuses_short_tokens(tmp_path, token):
    with pytest.raises(UserInputError, match="at least 16"):
        serve("127.0.0.1", 8765, token, tmp_path)


def test_agent_token_prints_a_strong_token():
    tokens = {CliRunner().invoke(app, ["agent", "token"]).output.strip() for _ in range(3)}
    assert len(tokens) == 3 and all(len(t) >= 43 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)
