"""sdk.export end to end: every profile, real toolchains, real runtimes, bundles on disk."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import sdk
from sdk.core.bundle import REQUIRED_KEYS
from sdk.core.errors import (ConversionError, InvalidInputsError, OutputDirError, ParityError, UnknownDeviceError,
                        UnsupportedRecipeError)

HOST_RUNNABLE = {"android-arm64", "android-litert", "intel-cpu", "intel-npu", "jetson-orin-nano", "jetson-agx-orin"}
FP32_PROFILES = ["android-arm64", "android-litert", "intel-cpu", "jetson-orin-nano", "apple-ane"]


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="module")
def default_exports(tiny_cnn, tiny_input, out_dir):
    """Every built-in profile with its default recipe (shared by several tests)."""
    return {p.id: sdk.export(tiny_cnn, p.id, tiny_input, output_dir=out_dir / "default") for p in sdk.devices.list()}


@pytest.fixture(scope="module")
def fp32_exports(tiny_cnn, tiny_input, out_dir):
    return {d: sdk.export(tiny_cnn, d, tiny_input, recipe="fp32", output_dir=out_dir / "fp32") for d in FP32_PROFILES}


def test_every_profile_exports_a_complete_bundle(default_exports):
    for device_id, res in default_exports.items():
        path = res.artifact.path
        assert path.name == device_id and path.is_dir()
        manifest = json.loads((path / "manifest.json").read_text())
        assert set(REQUIRED_KEYS) <= set(manifest)
        assert manifest["device"] == device_id and manifest["inputs"][0]["shape"] == [1, 3, 16, 16]
        assert (path / manifest["model_file"]).exists()
        assert json.loads((path / "report.json").read_text())["device"] == device_id
        res.artifact.verify()
        ref = np.load(path / "reference.npz")
        assert sorted(ref.files) == ["in_0", "out_0"]


def test_parity_runs_wherever_the_runtime_exists(default_exports):
    for device_id, res in default_exports.items():
        parity = res.report["parity"]
        if device_id in HOST_RUNNABLE:
            assert parity["passed"] is True, (device_id, parity)
            assert parity["ran_on"], device_id
        else:  # Core ML: converted and spec-checked, not run on Linux
            assert parity["passed"] is None and "macOS" in parity["reason"], parity


def test_fp32_parity_is_tight(fp32_exports):
    for device_id, res in fp32_exports.items():
        if device_id in HOST_RUNNABLE:
            cos = res.report["parity"]["outputs"][0]["cosine"]
            assert cos >= 0.9999, (device_id, cos)


def test_report_has_sizes_coverage_roofline_and_verdict(default_exports):
    rep = default_exports["android-arm64"].report
    assert rep["artifact"]["size_bytes"] > 0 and rep["model"]["macs"] > 0
    assert rep["coverage"]["fraction"] > 0.5 and rep["coverage"]["delegate"] == "XnnpackBackend"
    assert rep["roofline"]["bound_ms"] > 0
    assert rep["verdict"]["checks"]["parity"] is True
    assert rep["validation"]["latency_ms"]["p50"] > 0
    jetson = default_exports["jetson-orin-nano"].report
    assert "TensorRT" in jetson["coverage"]["unavailable"]


def test_multi_input_multi_output(two_in_two_out, two_inputs, out_dir):
    for device_id in ["android-arm64", "android-litert", "intel-cpu", "jetson-orin-nano", "apple-ane"]:
        res = sdk.export(two_in_two_out, device_id, two_inputs, recipe="fp32", output_dir=out_dir / "multi")
        assert [o["shape"] for o in res.artifact.manifest["outputs"]] == [[1, 8], [1, 4]]
        assert len(res.artifact.manifest["inputs"]) == 2
        if res.report["parity"]["passed"] is not None:
            assert res.report["parity"]["passed"], (device_id, res.report["parity"])


def test_validate_false_is_reported(tiny_cnn, tiny_input, tmp_path):
    res = sdk.export(tiny_cnn, "intel-cpu", tiny_input, validate=False, output_dir=tmp_path)
    assert res.report["parity"]["passed"] is None
    assert "validate=False" in res.report["parity"]["reason"]


def test_export_does_not_touch_the_callers_model(tiny_cnn, tiny_input, tmp_path):
    tiny_cnn.train()
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    try:
        sdk.export(tiny_cnn, "intel-cpu", tiny_input, output_dir=tmp_path)
        assert tiny_cnn.training
        assert all(torch.equal(before[k], v) for k, v in tiny_cnn.state_dict().items())
    finally:
        tiny_cnn.eval()


def _no_partial(out: Path) -> None:
    leftovers = [p.name for p in out.iterdir()] if out.exists() else []
    assert not leftovers, leftovers


def test_parity_failure_leaves_no_bundle(tiny_cnn, tiny_input, tmp_path):
    with pytest.raises(ParityError) as info:
        sdk.export(tiny_cnn, "intel-cpu", tiny_input, recipe="fp16", output_dir=tmp_path,
                   tolerance=sdk.Tolerance(min_cosine=0.9, max_abs_err=1e-12))
    assert "max_abs_err" in str(info.value) and "intel-cpu" in str(info.value)
    assert info.value.parity["passed"] is False
    _no_partial(tmp_path)


def test_reexport_replaces_previous_bundle(tiny_cnn, tiny_input, tmp_path):
    first = sdk.export(tiny_cnn, "intel-cpu", tiny_input, output_dir=tmp_path)
    (first.artifact.path / "stale.txt").write_text("old")
    second = sdk.export(tiny_cnn, "intel-cpu", tiny_input, recipe="fp16", output_dir=tmp_path)
    assert not (second.artifact.path / "stale.txt").exists()
    assert second.artifact.manifest["recipe"] == ["fp16"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["intel-cpu"]


@pytest.mark.parametrize("inputs,match", [
    (None, "example_inputs is required"),
    (torch.randn(1, 3, 16, 16), "single tensor"),
    ((torch.randn(1, 3, 16, 16), "text"), "not a tensor"),
    ((torch.randn(1, 5, 16, 16),), "does not accept example_inputs"),
])
def test_bad_example_inputs(tiny_cnn, tmp_path, inputs, match):
    with pytest.raises(InvalidInputsError, match=match):
        sdk.export(tiny_cnn, "intel-cpu", inputs, output_dir=tmp_path)
    _no_partial(tmp_path)


def test_unknown_device(tiny_cnn, tiny_input, tmp_path):
    with pytest.raises(UnknownDeviceError, match="Did you mean 'jetson'"):
        sdk.export(tiny_cnn, "jetsonn", tiny_input, output_dir=tmp_path)


def test_unsupported_recipe(tiny_cnn, tiny_input, tmp_path):
    with pytest.raises(UnsupportedRecipeError, match="android-litert"):
        sdk.export(tiny_cnn, "android-litert", tiny_input, recipe="int4", output_dir=tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; covered by the file-in-the-way case")
def test_output_dir_not_writable(tiny_cnn, tiny_input, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(OutputDirError):
        sdk.export(tiny_cnn, "intel-cpu", tiny_input, output_dir=locked)


def test_output_dir_is_a_file(tiny_cnn, tiny_input, tmp_path):
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    with pytest.raises(OutputDirError, match="output folder"):
        sdk.export(tiny_cnn, "intel-cpu", tiny_input, output_dir=blocker / "sub")


class Inverse(torch.nn.Module):
    """torch.linalg.inv is outside the Core ATen opset that ExecuTorch lowers."""

    def forward(self, x):
        return torch.linalg.inv(x)


class ErfInv(torch.nn.Module):
    """coremltools has no conversion for erfinv."""

    def forward(self, x):
        return torch.erfinv(x.clamp(-0.5, 0.5))


@pytest.mark.parametrize("device_id,model,inputs,op", [
    ("android-arm64", Inverse(), (torch.eye(4) + 0.1,), "linalg_inv"),
    ("apple-ane", ErfInv(), (torch.rand(1, 8),), "erfinv"),
])
def test_unconvertible_op_names_op_and_format(device_id, model, inputs, op, tmp_path):
    with pytest.raises(ConversionError) as info:
        sdk.export(model.eval(), device_id, inputs, recipe="fp32", output_dir=tmp_path)
    msg = str(info.value)
    assert sdk.devices.get(device_id).format in msg and op in msg and "Try" in msg, msg
    assert device_id in msg
    _no_partial(tmp_path)


def test_calibration_of_the_wrong_shape_is_named(tiny_cnn, tiny_input, tmp_path):
    wrong = [(torch.randn(1, 3, 32, 32),)]
    with pytest.raises(InvalidInputsError, match=r"calibration item 0, input 0: shape \[1, 3, 32, 32\]"):
        sdk.export(tiny_cnn, "intel-cpu", tiny_input, recipe="int8", calibration=wrong, output_dir=tmp_path)
    _no_partial(tmp_path)


def test_bf16_asks_the_openvino_cpu_plugin_for_bf16_and_says_what_ran(tiny_cnn, tiny_input, tmp_path):
    """bf16 is OpenVINO's CPU default where the CPU has AVX512_BF16/AMX; the bundle asks for it explicitly (the
    backend otherwise pins f32), and ran_on says whether this CPU computed bf16 or fell back to f32."""
    import openvino as ov

    res = sdk.export(tiny_cnn, "intel-cpu", tiny_input, recipe=["bf16"], output_dir=tmp_path)
    assert res.artifact.manifest["runtime_options"]["inference_precision"] == "bf16"
    assert res.report["quantization"]["activations"] == "bfloat16" and res.report["parity"]["passed"]
    has_bf16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert ("CPU bf16" if has_bf16 else "bf16 asked; this CPU lacks it") in res.report["parity"]["ran_on"]
    with pytest.raises(UnsupportedRecipeError, match="bf16"):
        sdk.export(tiny_cnn, "android-arm64", tiny_input, recipe=["bf16"], output_dir=tmp_path / "arm")
