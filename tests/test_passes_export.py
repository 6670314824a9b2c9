"""Issue 4's 'done when': transformed models export through all five converters with host parity,
passes compose with quantization in one recipe, and the CLI takes the same recipe strings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import samples.digits_cnn as digits
import samples.mobilenet_v2 as mobilenet_v2
import samples.transformer_encoder as transformer
import sdk
from samples.images import sample_images

ROOT = Path(__file__).resolve().parents[1]
FORMAT_DEVICES = ["android-arm64", "android-litert", "intel-cpu", "jetson-orin-nano", "apple-ane"]
PASSES = ["depthwise", "lowrank:0.5", "prune:0.3", "distill:5"]


def _bn_calibrated(model: torch.nn.Module, batches: list[tuple]) -> torch.nn.Module:
    """Set BatchNorm running statistics from real inputs, so a random-init network has sane activations."""
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(*batch)
    return model.eval()


def _models():
    torch.manual_seed(0)
    images = [(x,) for x in sample_images(8, 64)]
    mnv2 = _bn_calibrated(mobilenet_v2.MobileNetV2(num_classes=10, width_mult=0.35), images)
    tx = transformer.build(small=True)
    tx_in = [transformer.example_inputs(tx) for _ in range(8)]
    dcnn = _bn_calibrated(digits.build(width=8), [(torch.rand(16, 1, 8, 8),) for _ in range(4)])
    return {
        "mobilenet_v2": (mnv2, images),
        "transformer": (tx, tx_in),
        "digits_cnn": (dcnn, [(torch.rand(1, 1, 8, 8),) for _ in range(8)]),
    }


@pytest.fixture(scope="module")
def compressed():
    """Each model with all four passes applied once (shared by the per-format exports)."""
    out = {}
    for name, (model, calib) in _models().items():
        small = sdk.compress(model, PASSES, example_inputs=calib[0], calibration=calib)
        out[name] = (model, small, calib)
    return out


@pytest.mark.parametrize("name", ["mobilenet_v2", "transformer", "digits_cnn"])
def test_all_passes_reduce_cost(compressed, name):
    model, small, calib = compressed[name]
    report = small.edge_sdk_report
    assert [p["pass"] for p in report["passes"]] == PASSES
    before, after = report["passes"][0]["macs_before"], report["passes"][-1]["macs_after"]
    assert after < before, (name, before, after)
    assert small(*calib[0]).shape == model(*calib[0]).shape


@pytest.mark.parametrize("device_id", FORMAT_DEVICES)
@pytest.mark.parametrize("name", ["mobilenet_v2", "transformer", "digits_cnn"])
def test_compressed_model_exports_with_parity(compressed, name, device_id, tmp_path):
    _, small, calib = compressed[name]
    res = sdk.export(small, device_id, calib[0], recipe="fp32", output_dir=tmp_path)
    parity = res.report["parity"]
    if device_id == "apple-ane":
        assert parity["passed"] is None and (res.artifact.path / "model.mlpackage").is_dir()
    else:
        assert parity["passed"] is True, (name, device_id, parity)
        assert parity["outputs"][0]["cosine"] >= 0.9999, (name, device_id, parity)


def test_passes_and_quantization_in_one_recipe(tmp_path):
    model, calib = _models()["mobilenet_v2"]
    res = sdk.export(model, "intel-cpu", calib[0], recipe=["lowrank:0.5", "distill:5", "int8"],
                     calibration=calib, output_dir=tmp_path)
    rep = res.report
    assert [p["pass"] for p in rep["passes"]["passes"]] == ["lowrank:0.5", "distill:5"]
    assert rep["model"]["macs_after_passes"] < rep["model"]["macs"]
    assert rep["quantization"]["heldout"]["outputs"] and rep["parity"]["passed"] is True
    assert res.artifact.manifest["recipe"] == ["lowrank:0.5", "distill:5", "int8"]


def test_cli_takes_recipe_and_calibration(tmp_path):
    model_file = tmp_path / "small_mnv2.py"
    model_file.write_text(
        "import torch, samples.mobilenet_v2 as m\nfrom samples.calib import loader\n"
        "def build():\n    torch.manual_seed(0)\n    model = m.MobileNetV2(num_classes=10, width_mult=0.35).train()\n"
        "    with torch.no_grad():  # BatchNorm statistics from real photos\n"
        "        for (x,) in loader(n=8, size=64):\n            model(x)\n    return model.eval()\n")
    calib_file = tmp_path / "calib64.py"
    calib_file.write_text("from samples.calib import loader as _l\ndef loader():\n    return _l(n=10, size=64)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    proc = subprocess.run([sys.executable, "-m", "sdk.cli", "export", f"{model_file}:build", "--device", "intel-cpu",
                           "--shape", "1x3x64x64", "--recipe", "lowrank:0.5,distill:3,int8", "--min-cosine", "0.98",
                           "--calibration", f"{calib_file}:loader", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "intel-cpu" / "manifest.json").read_text())
    assert manifest["recipe"] == ["lowrank:0.5", "distill:3", "int8"]


def test_cli_bad_recipe_lists_valid_ones(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sdk.cli", "export", "samples/mobilenet_v2.py:build", "-d", "android",
                           "--recipe", "lowrank:0.5,distil,int8", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1
    assert "Did you mean 'distill'" in proc.stderr and "palettize" in proc.stderr
