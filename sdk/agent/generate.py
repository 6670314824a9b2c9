"""The LLM generation loop on the device side: prefill + decode over a bundle's static KV cache (no torch).

`generate` runs one prompt (greedy, or seeded temperature/top-k sampling; stops at an eos id, at
`max_new_tokens` or at the cache's end). `benchmark` measures what an app feels, over several prompt lengths:
load time, time to first token (TTFT, excluding load), prefill and decode tokens/s, per-token latency
percentiles, peak RSS, file size and idle-subtracted energy per generated token where a power probe works.
`teacher_forced` scores held-out tokens through the same step function (teacher forcing, one token a step).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import backends.llm
from backends.llm import Decoder
from sdk.agent import bench, power
from sdk.artifact import load_artifact
from sdk.errors import RuntimeUnavailableError, UserInputError

__all__ = [
    "GenerationResult",
    "LlmBenchmark",
    "PromptTiming",
    "TokenScores",
    "benchmark",
    "generate",
    "generate_with",
    "open_decoder",
    "teacher_forced",
]


@dataclass(frozen=True)
class PromptTiming:
    """One prompt's timings: TTFT = the prefill call that yields the first new token (load excluded)."""

    prompt_len: int
    new_tokens: int
    ttft_ms: float
    prefill_tok_s: float
    decode_tok_s: float | None
    token_latency_ms: dict[str, float] | None  # p50/p90/p99/mean/std/min/max/n of decode steps

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationResult:
    """New tokens (prompt excluded), why generation stopped ('eos', 'max_new_tokens', 'max_seq_len'), timings."""

    tokens: list[int]
    stop_reason: str
    ran_on: str
    load_s: float
    timing: PromptTiming
    peak_rss_mb: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GenerationResult:
        return cls(**{**d, "timing": PromptTiming(**d["timing"])})


@dataclass(frozen=True)
class LlmBenchmark:
    """What `benchmark` measured. `energy_per_token_mj` is None with `energy_reason` when no probe could say."""

    ran_on: str
    load_s: float
    prompts: list[PromptTiming]
    peak_rss_mb: float
    size_bytes: int
    energy_per_token_mj: float | None
    energy_reason: str | None
    energy: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_decoder(bundle_dir: str | Path) -> tuple[Decoder, float]:
    """Verify and load an LLM bundle; returns the decoder and the load time in seconds."""
    artifact = load_artifact(bundle_dir)
    artifact.verify()
    if "llm" not in artifact.manifest:
        raise UserInputError(f"{artifact.path} is not an LLM bundle: export it with sdk.export(..., "
                             "task='text-generation') (use agent.benchmark for single-call models)")
    if artifact.runtime not in backends.llm.runtimes():
        raise RuntimeUnavailableError(f"no LLM decoder for runtime {artifact.runtime!r} in this agent (LLM runtimes: "
                                      f"{', '.join(backends.llm.runtimes())})")
    start = time.perf_counter()
    try:
        decoder = backends.llm.load(artifact.path, artifact.manifest)
    except ImportError as exc:
        raise RuntimeUnavailableError(f"runtime {artifact.runtime!r} for {artifact.path} is not installed here: "
                                      f"{exc}") from exc
    return decoder, time.perf_counter() - start


def _check_prompt(prompt_tokens: Sequence[int], max_new_tokens: int, decoder: Decoder) -> np.ndarray:
    prompt = np.asarray(list(prompt_tokens), dtype=np.int64)
    spec = decoder.spec
    if prompt.ndim != 1 or prompt.size == 0:
        raise UserInputError("prompt_tokens must be a non-empty list of token ids")
    if prompt.min() < 0 or prompt.max() >= spec.vocab_size:
        raise UserInputError(f"prompt token ids must be in [0, {spec.vocab_size}) (the model's vocabulary), got "
                             f"{int(prompt.min())}..{int(prompt.max())}")
    if max_new_tokens < 1:
        raise UserInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prompt.size >= spec.max_seq_len:
        raise UserInputError(f"a {prompt.size}-token prompt does not fit the bundle's KV cache of {spec.max_seq_len} "
                             "positions (leave room for new tokens): shorten it or export with a larger max_seq_len")
    return prompt


def _pick(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    if not np.all(np.isfinite(logits)):
        raise RuntimeError("the model produced NaN/Inf logits")
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    if 0 < top_k < scaled.size:
        cut = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled >= cut, scaled, -np.inf)
    probs = np.exp(scaled - scaled.max())
    return int(rng.choice(scaled.size, p=probs / probs.sum()))


def generate_with(decoder: Decoder, prompt_tokens: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
                  top_k: int = 0, seed: int = 0, stop_tokens: Sequence[int] | None = None,
                  ignore_eos: bool = False) -> tuple[list[int], str, PromptTiming]:
    """Prefill the prompt in one call, then decode one token a step; `stop_tokens` default to the bundle's eos ids."""
    prompt = _check_prompt(prompt_tokens, max_new_tokens, decoder)
    stops = set() if ignore_eos else set(decoder.spec.eos_ids if stop_tokens is None else stop_tokens)
    rng = np.random.default_rng(seed)
    decoder.reset()
    start = time.perf_counter()
    token = _pick(decoder.step(prompt, 0), temperature, top_k, rng)
    ttft = time.perf_counter() - start
    tokens, steps, reason = [token], [], "max_new_tokens"
    pos = prompt.size
    while True:
        if token in stops:
            reason = "eos"
            break
        if len(tokens) >= max_new_tokens:
            break
        if pos >= decoder.spec.max_seq_len:
            reason = "max_seq_len"
            break
        t = time.perf_counter()
        token = _pick(decoder.step(np.array([token], np.int64), pos), temperature, top_k, rng)
        steps.append(time.perf_counter() - t)
        tokens.append(token)
        pos += 1
    timing = PromptTiming(
        prompt_len=int(prompt.size), new_tokens=len(tokens), ttft_ms=ttft * 1e3, prefill_tok_s=prompt.size / ttft,
        decode_tok_s=len(steps) / sum(steps) if steps else None,
        token_latency_ms=bench.latency_stats([s * 1e3 for s in steps]) if steps else None)
    return tokens, reason, timing


def generate(bundle_dir: str | Path, prompt_tokens: Sequence[int], max_new_tokens: int = 128, *,
             temperature: float = 0.0, top_k: int = 0, seed: int = 0,
             stop_tokens: Sequence[int] | None = None) -> GenerationResult:
    """Load an LLM bundle and generate after `prompt_tokens` (greedy unless `temperature` > 0)."""
    decoder, load_s = open_decoder(bundle_dir)
    tokens, reason, timing = generate_with(decoder, prompt_tokens, max_new_tokens, temperature=temperature,
                                           top_k=top_k, seed=seed, stop_tokens=stop_tokens)
    return GenerationResult(tokens=tokens, stop_reason=reason, ran_on=decoder.ran_on, load_s=load_s, timing=timing,
                            peak_rss_mb=round(bench.peak_rss_mb(), 2))


@dataclass(frozen=True)
class TokenScores:
    """Teacher-forced scores of a token sequence: summed negative log-likelihood of tokens[1:], and the argmax
    the decoder predicted at each position."""

    nll: float
    predictions: np.ndarray

    @property
    def perplexity(self) -> float:
        return float(np.exp(self.nll / max(1, self.predictions.size)))


def teacher_forced(decoder: Decoder, tokens: Sequence[int]) -> TokenScores:
    """Feed `tokens` one a step through the decoder's cache and score each next token."""
    ids = np.asarray(list(tokens), dtype=np.int64)
    if ids.size < 2 or ids.size > decoder.spec.max_seq_len:
        raise UserInputError(f"scoring needs 2..{decoder.spec.max_seq_len} tokens, got {ids.size}")
    decoder.reset()
    nll, predictions = 0.0, np.empty(ids.size - 1, np.int64)
    for pos in range(ids.size - 1):
        logits = decoder.step(ids[pos:pos + 1], pos).astype(np.float64)
        top = logits.max()
        nll += top + np.log(np.exp(logits - top).sum()) - logits[ids[pos + 1]]
        predictions[pos] = int(np.argmax(logits))
    return TokenScores(nll=float(nll), predictions=predictions)


def benchmark(bundle_dir: str | Path, prompt_lens: Sequence[int] = (64,), new_tokens: int = 128, *,
              seed: int = 0, idle_s: float = 1.0, energy: bool = True,
              probes: Sequence[power.Probe] | None = None) -> LlmBenchmark:
    """Time generation at each prompt length (seeded random token prompts, eos ignored so every run decodes
    `new_tokens`); one warm-up generation first. Energy per token: one extra run of the first prompt length inside
    a probe window, (energy - idle power x time) / generated tokens (prefill included, as an app pays it)."""
    decoder, load_s = open_decoder(bundle_dir)
    spec = decoder.spec
    rng = np.random.default_rng(seed)
    prompts = []
    for n in prompt_lens:
        if n + new_tokens > spec.max_seq_len:
            raise UserInputError(f"prompt length {n} + {new_tokens} new tokens exceeds the bundle's max_seq_len "
                                 f"{spec.max_seq_len}: lower them or export with a larger max_seq_len")
        prompts.append(rng.integers(0, spec.vocab_size, size=n))

    def run(prompt: np.ndarray) -> PromptTiming:
        return generate_with(decoder, prompt, new_tokens, ignore_eos=True)[2]

    run(prompts[0][: min(8, prompts[0].size)])  # warm-up: first-call allocations, kernel selection
    timings = [run(p) for p in prompts]
    found = power.detect() if probes is None and energy else None
    probes = list(probes) if probes is not None else (found.working if found else [])
    report, reason = None, ("energy measurement not requested" if not energy else None)
    if probes:
        report, reason = bench.measure_energy(probes, idle_s, lambda: run(prompts[0]).new_tokens)
        if report is not None and report.get("per_inference_mj") is None:
            reason = report.get("reason")
    elif energy:
        reason = found.reason() if found else "no power probe given"
    return LlmBenchmark(ran_on=decoder.ran_on, load_s=load_s, prompts=timings, peak_rss_mb=round(bench.peak_rss_mb(), 2),
                        size_bytes=load_artifact(bundle_dir).size_bytes,
                        energy_per_token_mj=report.get("per_inference_mj") if report else None,
                        energy_reason=reason, energy=report)
