"""A small pre-norm transformer encoder (sequence classifier), in plain torch.

Attention is written out (separate q/k/v/out `nn.Linear`s, matmul, softmax) rather than with
`nn.MultiheadAttention`, so every projection is a plain Linear that compression passes can see and
every exporter lowers it to ops it knows. `build()` is 4 layers at d=384 (6 heads, MLP 4x);
`build(small=True)` is 2 layers at d=64 for tests.

>>> import torch
>>> model = build(small=True)
>>> model(*example_inputs(model)).shape
torch.Size([1, 10])
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["TransformerEncoder", "build", "example_inputs"]


class Attention(nn.Module):
    """Multi-head self-attention; the head size follows the q/k/v widths, so width changes stay consistent."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = (proj(x).reshape(b, s, self.heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        attn = torch.softmax((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, s, -1))


class EncoderLayer(nn.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """(batch, seq, in_dim) features -> input projection + learned positions -> layers -> mean pool -> logits."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, seq_len: int, num_classes: int) -> None:
        super().__init__()
        self.seq_len, self.in_dim = seq_len, in_dim
        self.embed = nn.Linear(in_dim, dim)
        self.pos = nn.Parameter(torch.randn(1, seq_len, dim) * 0.02)
        self.layers = nn.Sequential(*(EncoderLayer(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.embed(x) + self.pos)
        return self.head(self.norm(x).mean(dim=1))


def build(small: bool = False, num_classes: int = 10, seed: int | None = 0) -> TransformerEncoder:
    """Random init, seeded when `seed` is given: 4 layers, d=384, 6 heads, 64 tokens (small: 2, 64, 4, 16)."""
    if seed is not None:
        torch.manual_seed(seed)
    if small:
        return TransformerEncoder(in_dim=32, dim=64, depth=2, heads=4, seq_len=16, num_classes=num_classes).eval()
    return TransformerEncoder(in_dim=128, dim=384, depth=4, heads=6, seq_len=64, num_classes=num_classes).eval()


def example_inputs(model: TransformerEncoder | None = None, batch: int = 1) -> tuple[torch.Tensor]:
    """One random input batch of the shape `model` takes (default: the full-size `build()`)."""
    seq_len, in_dim = (model.seq_len, model.in_dim) if model is not None else (64, 128)
    return (torch.randn(batch, seq_len, in_dim),)
