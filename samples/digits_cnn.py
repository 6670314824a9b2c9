"""A small CNN for scikit-learn's 8x8 handwritten digits, in plain torch.

Small enough to train in seconds on a laptop CPU, yet with the layers compression passes act on:
a 3x3 stem, two dense 3x3 convolutions with BatchNorm, pooling and a linear classifier.

>>> import torch
>>> build()(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["DigitsCNN", "accuracy", "build", "calibration", "labeled", "load_data", "train", "trained"]


class DigitsCNN(nn.Module):
    """conv(1->16) -> conv(16->32) -> pool -> conv(32->64) -> global pool -> linear(64->10)."""

    def __init__(self, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width), *block(width, 2 * width), nn.MaxPool2d(2), *block(2 * width, 4 * width),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(width: int = 16) -> DigitsCNN:
    """The model, randomly initialised (train it with `train`)."""
    return DigitsCNN(width)


def load_data(seed: int = 0, test_size: float = 0.2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as (x_train, y_train, x_test, y_test); images scaled to [0, 1], shape (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=test_size, random_state=seed,
                                           stratify=digits.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 15, batch_size: int = 64,
          lr: float = 3e-3, seed: int = 0) -> nn.Module:
    """Plain supervised training with Adam and cross-entropy; returns the model in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean())



def trained(width: int = 8, epochs: int = 3) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """A quickly trained model and its batch-1 example input (for `edge-sdk optimize samples/digits_cnn.py:trained`).

    Trains on one thread: on a busy 2-core machine, two threads on this tiny network are several times slower."""
    x_train, y_train, x_test, _ = load_data()
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(build(width), x_train, y_train, epochs=epochs), (x_test[:1],)
    finally:
        torch.set_num_threads(threads)


def calibration(n: int = 32) -> list[tuple[torch.Tensor]]:
    """`n` unlabeled training images, one per batch (the exported graph has batch 1)."""
    x_train = load_data()[0]
    return [(x_train[i:i + 1],) for i in range(n)]


def labeled(n: int = 96, batch_size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first `n` test images with their labels, as (images, labels) batches."""
    _, _, x_test, y_test = load_data()
    return [(x_test[i:i + batch_size], y_test[i:i + batch_size]) for i in range(0, n, batch_size)]

if __name__ == "__main__":
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_data()
    net = train(build(), x_train, y_train)
    print(f"test accuracy: {accuracy(net, x_test, y_test):.4f}")
