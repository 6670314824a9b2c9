"""The zoo's fast subset (benchmarks/zoo.py runs all of it in `make bench`): real architectures from tiny
`transformers` configs exported with parity on the host-runnable targets, the captures that needed a fix on
their format, and the error a user gets where a toolchain cannot convert an op."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import sdk
from benchmarks.zoo import HOST_RUNNABLE, export_cell, table
from benchmarks.zoo_models import ZOO
from sdk.core.errors import ConversionError


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


@pytest.mark.parametrize("device", HOST_RUNNABLE)
@pytest.mark.parametrize("name", ["resnet", "distilbert"])
def test_fp32_parity_on_every_host_runnable_target(name, device, out):
    cell = export_cell(ZOO[name], device, "fp32", out / name)
    assert cell["passed"] is True and cell["min_cosine"] > 0.9999, cell


@pytest.mark.parametrize(("name", "device", "precision"), [
    ("resnet", "intel-cpu", "int8"),
    ("vit", "intel-cpu", "int8"),  # attention as fused SDPA: quantized as a transformer (weight layers only)
    ("efficientnet", "intel-cpu", "fp32"),  # a pool kernel beyond its input: OpenVINO refused it
    ("efficientnet", "android-litert", "int8"),  # litert-torch padded that pool up to its kernel: zero logits
    ("gpt2", "jetson-orin-nano", "fp32"),  # no attention_mask: torch.diff and a bool cumsum in the causal mask
])
def test_fixed_cells_pass_parity(name, device, precision, out):
    cell = export_cell(ZOO[name], device, precision, out / f"{name}-{precision}")
    assert cell["passed"] is True, cell
    assert cell["min_cosine"] > (0.99 if precision == "int8" else 0.9999), cell


@pytest.mark.parametrize("name", ["unet", "gru-kws", "distilbert", "gpt2"])
def test_core_ml_converts(name, out):
    """UNet: coremltools' torch.export frontend fails on a stride-less max_pool2d (TorchScript fallback); GRU and
    the transformers masks: ops it has no translation for (decomposed); GPT-2: an `aten.alias` (removed)."""
    cell = export_cell(ZOO[name], "apple-ane", "fp32", out / f"{name}-coreml")
    assert "error" not in cell, cell
    assert cell["passed"] is None  # converted and its spec checked; Core ML runs only on macOS


class _StringPadded(nn.Module):
    """Convolutions with `padding="valid"` / `"same"`, as all of Hugging Face EfficientNet's are: they export as
    `aten.conv2d.padding`, not `aten.conv2d.default`."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding="valid")
        self.body = nn.Conv2d(8, 8, 3, padding="same")
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(F.relu(self.stem(x))).mean(dim=(-2, -1)))


def test_executorch_int8_quantizes_string_padded_convs(out):
    """XNNPACKQuantizer quantized them, but the SDK's account knew only the `.default` overloads, so EfficientNet
    int8 was refused as leaving 36 of its 37 layers float."""
    calibration = [(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)),) for seed in range(8)]
    res = sdk.export(_StringPadded().eval(), "android-arm64", calibration[0], recipe=["int8"],
                     calibration=calibration, output_dir=out / "padded")
    account = res.report["quantization"]
    assert sorted(account["quantized_layers"]) == ["body", "head", "stem"] and account["float_layers"] == []
    assert account["weight_dtypes"] == {"int8": 3}  # read back from the .pte's XNNPACK payloads


class _VarArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat(parts, dim=-1))


def test_openvino_takes_a_varargs_forward(out):
    model = _VarArgs().eval()
    res = sdk.export(model, "intel-cpu", (torch.randn(1, 4), torch.randn(1, 4)), output_dir=out / "varargs")
    assert res.report["parity"]["passed"] is True


class _OversizedPool(nn.Module):
    """F.avg_pool2d (functional, so no module to rewrite) with a kernel larger than its 4x4 input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 8, ceil_mode=True)


def test_unsupported_op_error_names_op_format_and_advice(out):
    with pytest.raises(ConversionError) as caught:
        sdk.export(_OversizedPool().eval(), "intel-cpu", (torch.randn(1, 3, 4, 4),), output_dir=out / "pool")
    message = str(caught.value)
    assert caught.value.op == "aten.avg_pool2d.default" and caught.value.format == "openvino"
    assert "larger than the data shape" in message  # OpenVINO's own reason, not a guess
    assert "Try: give that op arguments" in message and "x.mean(" in message


def test_table_lists_errors_under_the_matrix():
    cells = [{"model": "resnet", "target": "intel-cpu", "precision": "fp32", "min_cosine": 1.0, "delegated": 1.0},
             {"model": "resnet", "target": "apple-ane", "precision": "fp32", "min_cosine": None},
             {"model": "resnet", "target": "intel-cpu", "precision": "int8", "min_cosine": 0.95,
              "error": "ParityError: cosine 0.95 < 0.99"}]
    text = table(cells)
    assert "| intel-cpu fp32 | intel-cpu int8 | apple-ane fp32 |" in text
    assert "| 1.0000 (100%) | 0.9500 fails [1] | converted (not run here) |" in text
    assert text.endswith("1. ParityError: cosine 0.95 < 0.99")
