"""A Hugging Face Llama-family decoder rewritten around a static KV cache, for the formats that export a graph.

`StaticCacheDecoder(model, max_seq_len)` calls the model's own embedding, norms, rotary embedding, MLPs and
projections; only attention is re-expressed: keys and values are written into a fixed `[layers, 1, kv_heads,
max_seq_len, head_dim]` cache at `pos..pos+T-1` and read back under a causal mask, so one graph serves prefill
(T tokens) and decode (T = 1). The cache is an explicit input and output (ONNX, OpenVINO before it is made
stateful); `BufferCacheDecoder` keeps it in registered buffers updated in place (Core ML states).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["BufferCacheDecoder", "DecoderShape", "StaticCacheDecoder", "decoder_shape"]


@dataclass(frozen=True)
class DecoderShape:
    """What the device loop needs to size the cache and stop: no tokenizer, only numbers."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    max_seq_len: int
    bos_id: int | None
    eos_ids: tuple[int, ...]

    def cache_shape(self) -> tuple[int, ...]:
        return (self.n_layers, 1, self.n_kv_heads, self.max_seq_len, self.head_dim)


def decoder_shape(model: nn.Module, max_seq_len: int) -> DecoderShape:
    cfg = model.config
    eos = cfg.eos_token_id
    eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return DecoderShape(n_layers=cfg.num_hidden_layers, n_heads=cfg.num_attention_heads,
                        n_kv_heads=cfg.num_key_value_heads or cfg.num_attention_heads, head_dim=head_dim,
                        hidden_size=cfg.hidden_size, vocab_size=cfg.vocab_size, max_seq_len=max_seq_len,
                        bos_id=cfg.bos_token_id, eos_ids=eos_ids)


def _rotate_half(x: torch.Tensor, half: int) -> torch.Tensor:
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class StaticCacheDecoder(nn.Module):
    """forward(input_ids [1, T] int64, pos [1] int64, k_cache, v_cache) -> (last logits [1, V], k_cache, v_cache)."""

    def __init__(self, model: nn.Module, max_seq_len: int):
        super().__init__()
        self.model = model
        self.shape = decoder_shape(model, max_seq_len)
        self.register_buffer("_slots", torch.arange(max_seq_len, dtype=torch.int64), persistent=False)

    def _layer_caches(self, k_cache: torch.Tensor, v_cache: torch.Tensor, layer: int, positions: torch.Tensor,
                      k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys/values at `positions` and return the layer's whole cache (functional)."""
        return k_cache[layer].index_copy(2, positions, k), v_cache[layer].index_copy(2, positions, v)

    def _decode(self, input_ids: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor):
        s, base = self.shape, self.model.model
        steps = input_ids.shape[1]
        positions = pos + torch.arange(steps, dtype=torch.int64)
        hidden = base.embed_tokens(input_ids)
        cos, sin = base.rotary_emb(hidden, positions.unsqueeze(0))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        allowed = self._slots.unsqueeze(0) <= positions.unsqueeze(1)  # [T, S] causal over the whole cache
        mask = torch.where(allowed, 0.0, float("-inf")).to(hidden.dtype)
        new_k, new_v = [], []
        for i, layer in enumerate(base.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(1, -1, s.n_heads, s.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(1, -1, s.n_kv_heads, s.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(1, -1, s.n_kv_heads, s.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q, s.head_dim // 2) * sin
            k = k * cos + _rotate_half(k, s.head_dim // 2) * sin
            keys, values = self._layer_caches(k_cache, v_cache, i, positions, k, v)
            new_k.append(keys)
            new_v.append(values)
            groups = s.n_heads // s.n_kv_heads
            out = torch.nn.functional.scaled_dot_product_attention(
                q, keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1), attn_mask=mask,
                scale=attn.scaling)
            hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(1, -1, s.n_heads * s.head_dim))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        logits = self.model.lm_head(base.norm(hidden[:, -1:, :]))[:, 0, :]
        return logits, new_k, new_v

    def forward(self, input_ids: torch.Tensor, pos: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor):
        logits, new_k, new_v = self._decode(input_ids, pos, k_cache, v_cache)
        return logits, torch.stack(new_k), torch.stack(new_v)


class BufferCacheDecoder(StaticCacheDecoder):
    """forward(input_ids, pos) -> last logits; the cache lives in buffers `k_cache`/`v_cache`, updated in place."""

    def __init__(self, model: nn.Module, max_seq_len: int):
        super().__init__(model, max_seq_len)
        self.register_buffer("k_cache", torch.zeros(self.shape.cache_shape()))
        self.register_buffer("v_cache", torch.zeros(self.shape.cache_shape()))

    def _layer_caches(self, k_cache, v_cache, layer, positions, k, v):
        start = positions[:1].squeeze(0)
        end = start + k.shape[2]
        k_cache[layer:layer + 1, :, :, start:end, :] = k.unsqueeze(0)
        v_cache[layer:layer + 1, :, :, start:end, :] = v.unsqueeze(0)
        return k_cache[layer], v_cache[layer]

    def forward(self, input_ids: torch.Tensor, pos: torch.Tensor):  # type: ignore[override]
        return self._decode(input_ids, pos, self.k_cache, self.v_cache)[0]
