"""A config-defined Llama decoder (random weights, fixed seed) and token-id prompts, for `task="text-generation"`.

No weights are downloaded: `build()` is 2 layers at d=64 with a 128-token vocabulary (tests, docs);
`build(large=True)` is a ~56M-parameter Llama shape for benchmarks. `token_lists()` are seeded random
token-id prompts (calibration / held-out data for a tokenizer-free model).

>>> model = build()
>>> model.config.num_hidden_layers, len(token_lists())
(2, 5)
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["build", "token_lists"]


def build(large: bool = False, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if large:
        config = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                             num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                             bos_token_id=1, eos_token_id=2)
    else:
        config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(config).eval()


def token_lists(n: int = 5, length: int = 24, vocab: int = 128) -> list[np.ndarray]:
    return [np.random.default_rng(i).integers(3, vocab, size=length) for i in range(n)]
