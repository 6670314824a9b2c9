"""Quality of an LLM artifact against its fp32 torch model: greedy agreement and perplexity on held-out tokens.

The artifact side runs through the device-side decoder (`backends.llm`); the reference is the fp32 model's
own forward pass. Teacher forcing makes both see the same context at every position, so the top-1 agreement
is per position and not cut short by the first divergence; free-running greedy agreement (from the first half of
each of the first few sequences) is reported as well. Each figure has a 95% bootstrap interval over the sequences
(tokens of one sequence are not independent), with the seed and resample count of `sdk.core.metrics`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from backends.llm import Decoder
from sdk.agent.generate import generate_with, teacher_forced
from sdk.core.metrics import BOOTSTRAP_SAMPLES, SEED

__all__ = ["LlmQuality", "measure_quality", "torch_greedy"]


@dataclass(frozen=True)
class LlmQuality:
    perplexity_fp32: float
    perplexity_artifact: float
    perplexity_change: float  # relative: artifact / fp32 - 1
    top1_agreement: float  # teacher-forced next-token argmax, artifact vs fp32
    greedy_prefix_agreement: float  # free-running greedy: tokens equal before the first divergence / generated
    eval_tokens: int
    greedy_tokens: int  # generated per prompt (the most)
    sequences: int  # held-out sequences scored (the bootstrap's unit)
    greedy_prompts: int
    #: 95% bootstrap intervals over the sequences (greedy: over the prompts); None below 2 of them
    perplexity_change_ci: list[float] | None
    top1_agreement_ci: list[float] | None
    greedy_prefix_agreement_ci: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _torch_scores(model: torch.nn.Module, ids: np.ndarray) -> tuple[float, np.ndarray]:
    with torch.no_grad():
        logits = model(torch.from_numpy(ids).reshape(1, -1)).logits[0, :-1].double()
    target = torch.from_numpy(ids[1:])
    nll = torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
    return nll, logits.argmax(-1).numpy()


def torch_greedy(model: torch.nn.Module, prompt: np.ndarray, n: int) -> list[int]:
    """The fp32 torch model's greedy continuation of `prompt`: exactly `n` tokens (eos ignored)."""
    ids = torch.from_numpy(prompt).reshape(1, -1)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, prompt.size:].tolist()


def _interval(statistic: Callable[[np.ndarray], np.ndarray], n: int) -> list[float] | None:
    """95% percentile interval of `statistic(resampled indices [B, n])` over bootstrap resamples of n units."""
    if n < 2:
        return None
    low, high = np.percentile(statistic(np.random.default_rng(SEED).integers(0, n, (BOOTSTRAP_SAMPLES, n))),
                              [2.5, 97.5])
    return [float(low), float(high)]


def measure_quality(model: torch.nn.Module, decoder: Decoder, texts: Sequence[np.ndarray],
                    greedy_tokens: int = 32, greedy_prompts: int = 8) -> LlmQuality:
    """Score every held-out token sequence with both; greedy continuations from the first half of the first
    `greedy_prompts` sequences."""
    scores = []  # per sequence: fp32 nll, artifact nll, positions, agreeing positions
    for ids in texts:
        ref_nll, ref_top = _torch_scores(model, ids)
        art = teacher_forced(decoder, ids)
        scores.append((ref_nll, art.nll, ids.size - 1, int((art.predictions == ref_top).sum())))
    nll_ref, nll_art, count, agree = (np.array(column, np.float64) for column in zip(*scores))
    greedy = []  # per prompt: tokens equal before the first divergence, tokens generated
    for ids in texts[:greedy_prompts]:
        prompt = ids[: max(1, ids.size // 2)]
        n = min(greedy_tokens, decoder.spec.max_seq_len - prompt.size)
        ref = torch_greedy(model, prompt, n)
        got = generate_with(decoder, prompt, n, ignore_eos=True)[0]
        greedy.append((next((i for i, (a, b) in enumerate(zip(ref, got)) if a != b), min(len(ref), len(got))), n))
    prefix, generated = (np.array(column, np.float64) for column in zip(*greedy))
    ppl_ref, ppl_art = float(np.exp(nll_ref.sum() / count.sum())), float(np.exp(nll_art.sum() / count.sum()))
    return LlmQuality(
        perplexity_fp32=ppl_ref, perplexity_artifact=ppl_art, perplexity_change=ppl_art / ppl_ref - 1,
        top1_agreement=float(agree.sum() / count.sum()),
        greedy_prefix_agreement=float(prefix.sum() / max(1.0, generated.sum())), eval_tokens=int(count.sum()),
        greedy_tokens=int(generated.max()), sequences=len(texts), greedy_prompts=len(greedy),
        perplexity_change_ci=_interval(
            lambda i: np.exp((nll_art[i] - nll_ref[i]).sum(1) / count[i].sum(1)) - 1, len(texts)),
        top1_agreement_ci=_interval(lambda i: agree[i].sum(1) / count[i].sum(1), len(texts)),
        greedy_prefix_agreement_ci=_interval(lambda i: prefix[i].sum(1) / np.maximum(1, generated[i].sum(1)),
                                             len(greedy)))
