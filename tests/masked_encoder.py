"""A small sentence encoder built the way Hugging Face BERT is, with the two things that broke static INT8 on
all-MiniLM-L6-v2: position ids from integer arithmetic (`arange + offset`) and an additive attention mask at
float32's minimum on padded positions; its output is the mean-pooled, L2-normalised residual stream."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

SEQ, VOCAB = 16, 128


class MaskedEncoder(nn.Module):
    def __init__(self, d: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.tokens, self.positions, self.norm = nn.Embedding(VOCAB, d), nn.Embedding(SEQ, d), nn.LayerNorm(d)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "qkv": nn.Linear(d, 3 * d), "proj": nn.Linear(d, d), "norm1": nn.LayerNorm(d),
            "up": nn.Linear(d, 4 * d), "down": nn.Linear(4 * d, d), "norm2": nn.LayerNorm(d)}) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        n, length = input_ids.shape
        x = self.norm(self.tokens(input_ids) + self.positions(torch.arange(length) + 0))
        bias = (1 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for b in self.blocks:
            q, k, v = b["qkv"](x).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
            attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, -1)
            x = b["norm1"](x + b["proj"](attended))
            x = b["norm2"](x + b["down"](F.gelu(b["up"](x))))
        mask = attention_mask[..., None].float()
        return F.normalize((x * mask).sum(1) / mask.sum(1), dim=-1)


def sentences(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Token ids with 4 to SEQ real tokens each, the rest padding (mask 0)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        real = int(torch.randint(4, SEQ + 1, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (1, SEQ), generator=g)
        mask = (torch.arange(SEQ) < real).long()[None]
        out.append((ids * mask, mask))
    return out


def encoder() -> MaskedEncoder:
    torch.manual_seed(0)
    return MaskedEncoder().eval()
