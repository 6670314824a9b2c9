"""Shared fixtures: tiny models and a session-wide output folder."""
from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv + BN + ReLU + pool + linear: small, but exercises BN folding and a classifier head."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class TwoInTwoOut(nn.Module):
    """Two inputs, a tuple of two outputs with different shapes."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 8)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.a(x) + self.a(y))
        return h, self.b(x * y)


def _trained_bn(model: nn.Module) -> nn.Module:
    """Give BatchNorm non-trivial running statistics, so folding it is actually tested."""
    torch.manual_seed(0)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(4, 3, 16, 16) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _trained_bn(TinyCNN())


@pytest.fixture(scope="session")
def tiny_input() -> tuple[torch.Tensor]:
    return (torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)),)


@pytest.fixture(scope="session")
def two_in_two_out() -> nn.Module:
    torch.manual_seed(0)
    return TwoInTwoOut().eval()


@pytest.fixture(scope="session")
def two_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)
