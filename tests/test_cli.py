"""The edge-sdk command line, run as a real subprocess (what a user types)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = '''
import torch
def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
def example_inputs():
    return (torch.randn(1, 3, 12, 12),)
'''


def edge_sdk(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="160", NO_COLOR="1")
    return subprocess.run([sys.executable, "-m", "sdk.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "net.py"
    path.write_text(MODEL_FILE)
    # LazyLinear needs one forward to materialise; the SDK runs one before export.
    return path


def test_devices_list_and_show():
    out = edge_sdk("devices")
    assert out.returncode == 0, out.stderr
    for device_id in ("jetson-orin-nano", "apple-ane", "intel-npu", "android-litert"):
        assert device_id in out.stdout
    show = edge_sdk("devices", "show", "jetson")
    assert show.returncode == 0 and "jetson-orin-nano" in show.stdout and "https://" in show.stdout


def test_unknown_device_is_one_paragraph_without_traceback():
    out = edge_sdk("devices", "show", "jetsn")
    assert out.returncode == 1
    assert "Unknown device 'jetsn'" in out.stderr and "Traceback" not in out.stderr


def test_export_then_inspect(model_file, tmp_path):
    out = edge_sdk("export", f"{model_file}:build", "--device", "intel", "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "intel-cpu" in out.stdout and "pass" in out.stdout
    bundle = tmp_path / "intel-cpu"
    insp = edge_sdk("inspect", str(bundle))
    assert insp.returncode == 0 and "openvino" in insp.stdout and "sha256" in insp.stdout
    js = edge_sdk("inspect", str(bundle), "--json")
    assert json.loads(js.stdout)["manifest"]["device"] == "intel-cpu"


def test_export_with_shape_and_recipe(model_file, tmp_path):
    out = edge_sdk("export", f"{model_file}:build", "-d", "jetson", "--shape", "1x3x12x12", "--recipe", "fp32",
                   "--out", str(tmp_path))
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads((tmp_path / "jetson-orin-nano" / "manifest.json").read_text())["recipe"] == ["fp32"]


def test_bad_recipe_and_bad_model_spec(model_file, tmp_path):
    out = edge_sdk("export", f"{model_file}:build", "-d", "intel", "--recipe", "int9", "--out", str(tmp_path))
    assert out.returncode == 1 and "Valid entries" in out.stderr and "Traceback" not in out.stderr
    out = edge_sdk("export", f"{model_file}:nope", "-d", "intel", "--out", str(tmp_path))
    assert out.returncode == 1 and "no attribute 'nope'; it defines: build, example_inputs" in out.stderr


def test_inspect_detects_tampering(model_file, tmp_path):
    assert edge_sdk("export", f"{model_file}:build", "-d", "intel", "--out", str(tmp_path)).returncode == 0
    (tmp_path / "intel-cpu" / "model.bin").write_bytes(b"tampered")
    out = edge_sdk("inspect", str(tmp_path / "intel-cpu"))
    assert out.returncode == 1 and "sha256" in out.stderr


def test_debug_shows_traceback():
    out = edge_sdk("--debug", "devices", "show", "jetsn")
    assert out.returncode != 0 and "Traceback" in out.stderr
