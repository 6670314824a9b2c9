"""Test models and inputs the per-target quantization tests share, so that every toolchain is held to the same
models: a ~0.4M-parameter conv net (big enough that an INT8 file's size is about its weights, not its headers),
an MLP that per-channel INT8 breaks in one known layer, and image-like inputs."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

#: What every quantized export's report carries: the converter's account and the driver's checks.
REPORT_KEYS = frozenset({"toolchain", "scheme", "quantized_layers", "float_layers", "weight_dtypes",
                         "heldout", "sensitivity", "fallback"})


class Net(nn.Module):
    """~0.4M parameters: conv-BN-ReLU blocks, plain convs and a linear head. features.6 and features.8 have no
    BatchNorm after them, so their float weights reach a file unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def with_bn_statistics(model: nn.Module, spread: float) -> nn.Module:
    """`model` (a Net or subclass) in eval mode with random, non-trivial BatchNorm statistics (running means in
    [-spread, spread]), so folding BatchNorm into the convs before quantizing is exercised."""
    model.eval()
    with torch.no_grad():
        for bn in (model.features[1], model.features[4]):
            bn.running_mean.uniform_(-spread, spread)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def trained_bn(model: nn.Module, samples: Iterable[tuple[torch.Tensor, ...]]) -> nn.Module:
    """`model` in eval mode after `samples` ran through it in train mode: real BatchNorm statistics, so folding
    changes the conv weights."""
    model.train()
    with torch.no_grad():
        for sample in samples:
            model(*sample)
    return model.eval()


class DeadInputOutlier(nn.Module):
    """`mid` has a huge weight on an input that is always zero: harmless in float, but it sets every
    per-channel INT8 scale, so all its other weights round to zero. Only keeping `mid` in float fixes it.
    `inputs` and `outputs` set the widths of the first and last layers."""

    def __init__(self, inputs: int = 16, outputs: int = 8) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(inputs, 64), nn.Linear(64, 64), nn.Linear(64, outputs)
        with torch.no_grad():
            self.inp.weight[0].zero_()
            self.inp.bias[0] = -1.0  # ReLU makes input 0 of `mid` zero for every sample
            self.mid.weight[:, 0] = 50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.mid(torch.relu(self.inp(x)))))


def images(n: int, seed: int) -> list[tuple[torch.Tensor]]:
    """Smooth image-like 32 x 32 inputs (upsampled noise), so activations have realistic ranges."""
    g = torch.Generator().manual_seed(seed)
    return [(nn.functional.interpolate(torch.randn(1, 3, 8, 8, generator=g), size=32, mode="bilinear")
             + 0.1 * torch.randn(1, 3, 32, 32, generator=g),) for _ in range(n)]


def noise_images(n: int, seed: int, size: int) -> list[tuple[torch.Tensor]]:
    """Uniform noise in [-1, 1), `size` x `size`."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(1, 3, size, size, generator=g) * 2 - 1,) for _ in range(n)]
