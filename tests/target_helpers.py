"""What the per-target tests share: a small CNN, torch's reference outputs, the manifest entries a backend
reads, and a ConversionJob named as `sdk.export` names it (in_0.., out_0..)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree
from torch import nn

from converters import ConversionJob
from sdk import recipes
from sdk.devices import DeviceProfile


class SmallCNN(nn.Module):
    """conv + BN + ReLU + linear on 3 x 8 x 8 inputs: every op has an XNNPACK kernel, BN folds into the conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def small_cnn(spread: float, batch: int) -> tuple[SmallCNN, tuple[torch.Tensor]]:
    """SmallCNN (seed 0) with random, non-trivial BatchNorm statistics (running means in [-spread, spread]), so
    folding BN into the conv is exercised, and an input of `batch` samples."""
    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-spread, spread)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model, (torch.randn(batch, 3, 8, 8),)


def outputs_of(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """torch's outputs, flattened in order as the SDK flattens them into out_0, out_1, ..."""
    with torch.no_grad():
        return [t.numpy() for t in pytree.tree_leaves(model(*inputs))]


def specs(prefix: str, arrays: Any) -> list[dict]:
    """Manifest entries ({prefix}_i, shape, dtype) for numpy arrays or CPU tensors."""
    return [{"name": f"{prefix}_{i}", "shape": list(a.shape), "dtype": str(np.asarray(a).dtype)}
            for i, a in enumerate(arrays)]


def make_job(model: nn.Module, inputs: tuple[torch.Tensor, ...], profile: DeviceProfile, workdir: Path,
             recipe: Any = None, n_out: int | None = None, **fields: Any) -> ConversionJob:
    """A job for `profile` with `recipe` resolved as sdk.export resolves it; `n_out` defaults to the number of
    outputs torch gives. `fields`: the job's optional fields (calibration, keep_float)."""
    n_out = len(outputs_of(model, inputs)) if n_out is None else n_out
    return ConversionJob(model=model, example_inputs=inputs, recipe=recipes.resolve(profile, recipe), profile=profile,
                         workdir=workdir, input_names=[f"in_{i}" for i in range(len(inputs))],
                         output_names=[f"out_{i}" for i in range(n_out)], **fields)
