"""Core ML target: conversion with coremltools and a check of the saved spec (Core ML cannot run on Linux)."""
from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from target_helpers import make_job
from torch import nn

ct = pytest.importorskip("coremltools")

import backends  # noqa: E402
import converters  # noqa: E402
from sdk.core.readers.coreml import spec_summary  # noqa: E402
from sdk import devices  # noqa: E402
from sdk.core.errors import ConversionError, ProfileError  # noqa: E402
from sdk.core.results import Unavailable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class TwoInTwoOut(nn.Module):
    """Two inputs; a nested tuple of outputs that the SDK flattens to out_0..out_2."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 5), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor, y: torch.Tensor):
        h = self.a(x) + self.b(y)
        return h.relu(), (h * 2, h.sum(-1))


class Passthrough(nn.Module):
    def forward(self, x: torch.Tensor):
        return x * 3, x


def convert(model: nn.Module, inputs: tuple, device: str, recipe: str | None, workdir: Path, n_out: int = 1,
            profile: devices.DeviceProfile | None = None):
    job = make_job(model.eval(), inputs, profile or devices.get(device), workdir, recipe, n_out)
    return converters.get("coreml").convert(job)


@pytest.fixture(scope="module", params=["fp16", "fp32"])
def cnn(request, tmp_path_factory):
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # non-trivial BN statistics, so folding it into the conv changes the weights
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    workdir = tmp_path_factory.mktemp(f"cnn_{request.param}")
    result = convert(model, (torch.randn(1, 3, 16, 16),), "apple-ane", request.param, workdir)
    return request.param, result, spec_summary(workdir / result.model_file), workdir


def test_cnn_spec_matches_request(cnn):
    precision, result, spec, workdir = cnn
    assert result.model_file == "model.mlpackage" and (workdir / result.model_file).is_dir()
    assert spec["specification_version"] == ct.target.iOS17.value  # apple-ane: minimum_deployment_target = iOS17
    assert spec["opset"] == "CoreML7"
    assert spec["inputs"] == [{"name": "in_0", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    assert spec["outputs"] == [{"name": "out_0", "shape": [1, 4], "dtype": "float32"}]
    weight_dtype = {"fp16": "float16", "fp32": "float32"}[precision]
    # conv 8x3x3x3 + 8 bias (BatchNorm folded in: no gamma/beta/mean/var left) + fc 4x8 + 4
    assert spec["weight_dtypes"] == {weight_dtype: 216 + 8 + 32 + 4}


def test_batchnorm_is_folded_into_conv(cnn):
    _, _, spec, _ = cnn
    assert "batch_norm" not in spec["ops"]
    assert spec["ops"]["conv"] == 1 and spec["ops"]["linear"] == 1


def test_result_reports_no_coverage_with_reason_and_op_histogram(cnn):
    precision, result, spec, _ = cnn
    assert isinstance(result.coverage, Unavailable) and "MLComputePlan" in result.coverage.reason
    assert any("conv x1" in note and "linear x1" in note for note in result.notes)
    if precision == "fp16":
        assert set(result.quantization.weight_dtypes) == set(spec["weight_dtypes"])  # tensors vs elements, by dtype
        assert result.quantization.activations == "float16"
    else:
        assert result.quantization is None


def test_two_inputs_nested_outputs_on_mac_target(tmp_path):
    inputs = (torch.randn(2, 6), torch.randn(2, 4))
    result = convert(TwoInTwoOut(), inputs, "apple-mac-ane", "fp16", tmp_path, n_out=3)
    spec = spec_summary(tmp_path / result.model_file)
    assert spec["specification_version"] == ct.target.macOS15.value  # apple-mac-ane: macOS15
    assert spec["opset"] == "CoreML8"
    assert [(f["name"], f["shape"]) for f in spec["inputs"]] == [("in_0", [2, 6]), ("in_1", [2, 4])]
    assert [(f["name"], f["shape"], f["dtype"]) for f in spec["outputs"]] == [
        ("out_0", [2, 5], "float32"), ("out_1", [2, 5], "float32"), ("out_2", [2], "float32")]
    assert set(spec["weight_dtypes"]) == {"float16"}


def test_bad_deployment_target_is_a_profile_error(tmp_path):
    profile = devices.get("apple-ane")
    bad = dataclasses.replace(profile, converter={**profile.converter, "minimum_deployment_target": "iOS99"})
    with pytest.raises(ProfileError, match="iOS99"):
        convert(SmallCNN(), (torch.randn(1, 3, 8, 8),), "apple-ane", "fp16", tmp_path, profile=bad)


@pytest.mark.skipif(platform.system() == "Darwin", reason="checks the non-macOS answer")
def test_backend_unavailable_off_macos():
    reason = backends.get("coreml").unavailable_reason()
    assert reason is not None and "only on macOS" in reason and platform.system() in reason


def test_spec_summary_works_without_torch(cnn):
    """The device side reads a bundle's spec with coremltools alone."""
    _, result, spec, workdir = cnn
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from sdk.core.readers.coreml import spec_summary\n"
            f"print(json.dumps(spec_summary({str(workdir / result.model_file)!r})))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == spec


def test_input_returned_unchanged_is_explained(tmp_path):
    with pytest.raises(ConversionError, match="out_1 is input in_0 returned unchanged"):
        convert(Passthrough(), (torch.rand(1, 8),), "apple-ane", "fp16", tmp_path, n_out=2)
