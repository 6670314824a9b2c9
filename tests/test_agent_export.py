"""sdk.export validated by the in-process agent and by a real agent process over HTTP; `edge-sdk bench`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import sdk
from agent_bundles import AgentProcess

HOST_RUNNABLE = ["android-arm64", "android-litert", "intel-cpu", "jetson-orin-nano"]
TOKEN = "export-test-token"


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    proc = AgentProcess(tmp_path_factory.mktemp("agent") / "data", token=TOKEN, max_upload_mb=64).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("device_id", HOST_RUNNABLE)
def test_host_validation_fills_measurements(tiny_cnn, tiny_input, device_id, tmp_path):
    rep = sdk.export(tiny_cnn, device_id, tiny_input, recipe="fp32", output_dir=tmp_path).report
    assert rep["measured_on"]["mode"] == "host"
    assert set(rep["latency_ms"]) >= {"p50", "p90", "p99", "mean", "std", "min"}
    assert rep["latency_ms"]["p50"] > 0 and rep["load_ms"] > 0 and rep["peak_rss_mb"] > 10
    assert rep["energy"]["value"] is not None or rep["energy"]["reason"]
    on_disk = json.loads((tmp_path / device_id / "report.json").read_text())
    assert on_disk["latency_ms"] == rep["latency_ms"]


@pytest.mark.parametrize("device_id", HOST_RUNNABLE)
def test_validate_on_a_remote_agent(tiny_cnn, tiny_input, agent, device_id, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_SDK_AGENT_TOKEN", TOKEN)
    rep = sdk.export(tiny_cnn, device_id, tiny_input, recipe="fp32", output_dir=tmp_path, validate=agent.url).report
    assert rep["measured_on"] == {"mode": "agent", "where": agent.url, "ran_on": rep["parity"]["ran_on"]}
    assert rep["parity"]["passed"] is True and rep["latency_ms"]["p90"] > 0
    # measured on the (pretend) device: the latency budget is now a real pass/fail check
    assert isinstance(rep["verdict"]["checks"]["latency_p90_ms"], bool)


def test_remote_agent_without_token_is_a_clear_error(tiny_cnn, tiny_input, agent, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGE_SDK_AGENT_TOKEN", raising=False)
    with pytest.raises(sdk.core.errors.AgentError, match="401"):
        sdk.export(tiny_cnn, "intel-cpu", tiny_input, output_dir=tmp_path, validate=agent.url)
    assert not any(tmp_path.iterdir())


def test_cli_bench_against_agent(tiny_cnn, tiny_input, agent, tmp_path):
    sdk.export(tiny_cnn, "intel-cpu", tiny_input, output_dir=tmp_path)
    env = dict(os.environ, EDGE_SDK_AGENT_TOKEN=TOKEN, COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "sdk.cli", "bench", str(tmp_path / "intel-cpu"), "--agent", agent.url,
                           "--iterations", "20", "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)[0]
    assert result["ran"] and result["iterations"] == 20 and result["parity"]["passed"]
    table = subprocess.run([sys.executable, "-m", "sdk.cli", "bench", str(tmp_path / "intel-cpu"), "--agent", agent.url,
                            "--iterations", "20"], capture_output=True, text=True, timeout=300, env=env)
    assert table.returncode == 0 and "p90 ms" in table.stdout and "openvino" in table.stdout
