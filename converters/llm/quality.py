"""Quality of an LLM artifact against its fp32 torch model: greedy agreement and perplexity on held-out tokens.

The artifact side runs through the device-side decoder (`backends.llm`); the reference is the fp32 model's
own forward pass. Teacher forcing makes both see the same context at every position, so the top-1 agreement
is per position and not cut short by the first divergence; free-running greedy agreement is reported as well.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from backends.llm import Decoder
from sdk.agent.generate import generate_with, teacher_forced

__all__ = ["LlmQuality", "measure_quality"]


@dataclass(frozen=True)
class LlmQuality:
    perplexity_fp32: float
    perplexity_artifact: float
    perplexity_change: float  # relative: artifact / fp32 - 1
    top1_agreement: float  # teacher-forced next-token argmax, artifact vs fp32
    greedy_prefix_agreement: float  # free-running greedy: tokens equal before the first divergence / generated
    eval_tokens: int
    greedy_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torch_scores(model: torch.nn.Module, ids: np.ndarray) -> tuple[float, np.ndarray]:
    with torch.no_grad():
        logits = model(torch.from_numpy(ids).reshape(1, -1)).logits[0, :-1].double()
    target = torch.from_numpy(ids[1:])
    nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
    return nll, logits.argmax(-1).numpy()


def _torch_greedy(model: torch.nn.Module, prompt: np.ndarray, n: int) -> list[int]:
    ids = torch.from_numpy(prompt).reshape(1, -1)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, prompt.size:].tolist()


def measure_quality(model: torch.nn.Module, decoder: Decoder, texts: Sequence[np.ndarray],
                    greedy_tokens: int = 32) -> LlmQuality:
    """Score every held-out token sequence with both; greedy continuation from the first half of the first one."""
    nll_ref = nll_art = 0.0
    agree = count = 0
    for ids in texts:
        ref_nll, ref_top = _torch_scores(model, ids)
        art = teacher_forced(decoder, ids)
        nll_ref += ref_nll
        nll_art += art.nll
        agree += int((art.predictions == ref_top).sum())
        count += ids.size - 1
    prompt = texts[0][: max(1, texts[0].size // 2)]
    n = min(greedy_tokens, decoder.spec.max_seq_len - prompt.size)
    ref = _torch_greedy(model, prompt, n)
    got = generate_with(decoder, prompt, n, ignore_eos=True)[0]
    prefix = next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got)))
    ppl_ref, ppl_art = float(np.exp(nll_ref / count)), float(np.exp(nll_art / count))
    return LlmQuality(perplexity_fp32=ppl_ref, perplexity_artifact=ppl_art, perplexity_change=ppl_art / ppl_ref - 1,
                      top1_agreement=agree / count, greedy_prefix_agreement=prefix / max(1, n), eval_tokens=count,
                      greedy_tokens=n)
