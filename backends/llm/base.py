"""The decoder contract the generation loop drives: reset the cache, feed tokens at a position, get logits."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["Decoder", "LlmSpec"]


@dataclass(frozen=True)
class LlmSpec:
    """manifest["llm"]: the numbers a tokenizer-free loop needs to size the cache and stop."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int
    eos_ids: tuple[int, ...]
    bos_id: int | None = None

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> LlmSpec:
        llm = manifest["llm"]
        return cls(n_layers=int(llm["n_layers"]), n_heads=int(llm["n_heads"]), n_kv_heads=int(llm["n_kv_heads"]),
                   head_dim=int(llm["head_dim"]), vocab_size=int(llm["vocab_size"]),
                   max_seq_len=int(llm["max_seq_len"]), eos_ids=tuple(int(t) for t in llm["eos_ids"]),
                   bos_id=llm.get("bos_id"))

    def cache_shape(self) -> tuple[int, ...]:
        return (self.n_layers, 1, self.n_kv_heads, self.max_seq_len, self.head_dim)


class Decoder(Protocol):
    """A loaded decoder. `step(tokens, pos)` writes `tokens` (int64, 1-D) into the KV cache at `pos..` and returns
    the logits after the last one (float32, [vocab]); `reset()` starts a new sequence."""

    ran_on: str
    spec: LlmSpec

    def reset(self) -> None: ...

    def step(self, tokens: np.ndarray, pos: int) -> np.ndarray: ...
