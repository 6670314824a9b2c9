"""A forward that branches on a tensor's value is refused by sdk.export at int8 on every host-runnable format (the
fp32 capture's refusal, on all five formats, is test_conformance's): a graph captured at the example's value
would be wrong for inputs on the branch's other side. torch.export-based captures (ExecuTorch, OpenVINO, LiteRT)
refuse it themselves; ONNX's TorchScript trace would freeze it, so the driver checks a trace that read a tensor's
value with torch.export."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sdk
from sdk.core.errors import ConversionError

HOST_RUNNABLE = ["android-arm64", "android-litert", "intel-cpu", "jetson-orin-nano"]


class SignBranch(nn.Module):
    """Doubles the projection for inputs with a positive sum, negates it otherwise."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return y * 2 if x.sum() > 0 else -y


@pytest.mark.parametrize("device_id", HOST_RUNNABLE)
def test_a_branch_on_the_data_is_refused_at_int8(device_id, tmp_path):
    torch.manual_seed(0)
    example = (torch.rand(1, 16),)  # sum > 0: the reference sits on one side of the branch
    calibration = [(torch.randn(1, 16),) for _ in range(8)]
    with pytest.raises(ConversionError, match=r"depends on a tensor's value.*torch\.where") as err:
        sdk.export(SignBranch().eval(), device_id, example, recipe="int8", calibration=calibration,
                   output_dir=tmp_path)
    assert err.value.device == device_id and "data-dependent" in str(err.value)
    assert not any(tmp_path.iterdir())


def test_the_same_choice_as_tensor_ops_exports(tmp_path):
    """torch.where keeps both sides in the graph: the ONNX trace, which the branch version refuses, matches torch
    on held-out inputs on both sides of it."""

    class SignWhere(SignBranch):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.fc(x)
            return torch.where(x.sum() > 0, y * 2, -y)

    torch.manual_seed(0)
    calibration = [(torch.randn(1, 16),) for _ in range(20)]
    both_sides = [(sign * torch.rand(1, 16),) for sign in (1, -1) for _ in range(4)]
    res = sdk.export(SignWhere().eval(), "jetson-orin-nano", (torch.rand(1, 16),), recipe="int8",
                     calibration=calibration, eval_data=both_sides, output_dir=tmp_path)
    assert res.report["quantization"]["heldout"]["passed"] is True
    assert res.report["quantization"]["heldout"]["samples"] == 8
