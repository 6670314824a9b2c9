"""The fp16 program: a float16 copy of the model between float32 inputs and outputs, and its account.

XNNPACK has no "run in fp16" switch; it computes in float16 when the graph's tensors are float16. So the
model is cast with `.half()` and wrapped to cast its float inputs to fp16 and its fp16 outputs back to fp32: the
program's I/O stays float32 (the bundle's contract) and the two boundary casts run as ExecuTorch portable kernels
(XNNPACK does not take dtype conversions). BatchNorm after a conv or linear is folded into it by XNNPACK's
FuseBatchNormPass during lowering, in fp32 and fp16 alike.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.utils._pytree as pytree
from executorch.version import __version__ as EXECUTORCH_VERSION

from sdk.core.results import QuantAccount


class _Fp16Program(torch.nn.Module):
    """A float16 copy of `model` between float32 inputs and float32 outputs (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()

    def forward(self, *inputs: torch.Tensor) -> Any:
        halves = [x.half() if x.is_floating_point() else x for x in inputs]
        return pytree.tree_map_only(torch.Tensor, _to_fp32, self.model(*halves))


def _to_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype == torch.float16 else t


def _fp16_account() -> QuantAccount:
    """fp16 stores no integer layer; its account says how the float16 program was made."""
    return QuantAccount(scheme="model cast to float16 (torch .half()) before export; XNNPACK runs its fp16 kernels; "
                               "float32 program inputs and outputs, cast at the program boundary",
                        activations="float16", toolchain=f"executorch {EXECUTORCH_VERSION} XnnpackPartitioner")
