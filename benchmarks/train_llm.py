"""Train a small Llama-architecture decoder on text that ships with Python, for `benchmarks/llm.py`'s quality rows.

No small pretrained decoder ships inside a PyPI package, and nothing here downloads weights, so the quality of an
int4 artifact is measured against a model trained here: `transformers.LlamaForCausalLM` from a config, on
CPython's own documentation (`pydoc_data.topics`, the text `help()` shows: ~465 KB of English on the language).

    python benchmarks/train_llm.py [--minutes 8] [--layers 2] [--hidden 128] [--steps N] [--fresh]

- Tokens are bytes (vocabulary 256, no tokenizer to train or ship); perplexity is per byte.
- Paragraphs are kept once (the topics repeat one another, e.g. "if" is part of "compound"), then cut into
  blocks of 20; every 10th block is held out, so no held-out paragraph is in the training text.
- A minutes budget: the first steps are timed, then the step count is fixed so training ends within it (cosine
  schedule over that count; `--steps` fixes it instead, to repeat a run exactly). On CPU it trains on one
  thread and the budget is this process's CPU time, so other work on the machine slows training down without
  cutting it short (with other load on 2 cores, two threads spent 4.7x the CPU time per step of one); wall time
  on CUDA. Seeded.
- The default size is the better of those measured at equal compute: 2 layers at d=128 (0.46M parameters)
  reached held-out perplexity 3.47 after 3 CPU-minutes, 4 layers at d=192 (1.7M) 4.84 (on 32 windows).
- Cached in out/bench-cache/llm-trained under a hash of this file, the settings, Python and torch, so
  `make bench` trains once; training.json beside the weights records the losses, the held-out perplexity, time.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from benchmarks.exports import Cache, source_hash  # noqa: E402

CACHE = ROOT / "out" / "bench-cache"
NAME = "llm-trained"
BLOCK, HOLDOUT_EVERY = 20, 10  # paragraphs per block; every 10th block is held out
WARMUP_STEPS, TIMED_FROM = 40, 10  # steps of linear warm-up; step times are averaged from step 10 to the end of it
EVALS = 8  # held-out evaluations over the run (the curve in training.json), on 32 of its windows
EVAL_SHARE = 0.05  # of the budget, left for them


@dataclass(frozen=True)
class Settings:
    """The model's shape and the training run; every field is a command-line flag."""

    layers: int = 2
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 384
    seq_len: int = 256
    batch: int = 8
    lr: float = 3e-3
    weight_decay: float = 0.1
    minutes: float = 8.0
    steps: int = 0  # 0: as many as fit in `minutes`
    seed: int = 0


def corpus() -> tuple[bytes, bytes]:
    """(training text, held-out text): CPython's pydoc topics, paragraphs deduplicated, split by blocks."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    paragraphs = []
    for key in sorted(topics):
        for p in topics[key].split("\n\n"):
            p = p.strip("\n")
            if p and p not in seen:
                seen.add(p)
                paragraphs.append(p)
    blocks = ["\n\n".join(paragraphs[i:i + BLOCK]) for i in range(0, len(paragraphs), BLOCK)]
    held = [b for i, b in enumerate(blocks) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    train = [b for i, b in enumerate(blocks) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    return "\n\n".join(train).encode(), "\n\n".join(held).encode()


def windows(text: bytes, length: int, n: int | None = None) -> list[np.ndarray]:
    """The non-overlapping `length`-byte token sequences of `text`: all, or `n` spread evenly over it."""
    ids = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
    out = [ids[i:i + length] for i in range(0, ids.size - length + 1, length)]
    if n is None or n >= len(out):
        return out
    return [out[i] for i in np.linspace(0, len(out) - 1, n).round().astype(int)]


def config(s: Settings) -> LlamaConfig:
    return LlamaConfig(vocab_size=256, hidden_size=s.hidden, intermediate_size=s.ffn, num_hidden_layers=s.layers,
                       num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, max_position_embeddings=s.seq_len,
                       bos_token_id=None, eos_token_id=None, pad_token_id=None)


@torch.no_grad()
def heldout_perplexity(model: LlamaForCausalLM, text: bytes, seq_len: int, device: torch.device,
                       n: int | None = None) -> float:
    """Per-byte perplexity over `n` (default: every) `seq_len` windows of `text`, each on its own."""
    model.eval()
    batch = torch.from_numpy(np.stack(windows(text, seq_len, n))).to(device)
    nll = sum(model(chunk, labels=chunk).loss.item() * chunk.numel() for chunk in batch.split(32))
    model.train()
    return math.exp(nll / (batch.shape[0] * seq_len))


class _Clock:
    """The budget's clock: this process's CPU time on CPU (one thread), so that other work on the machine slows
    training down but does not shorten it (the same steps as on an idle machine); wall time on CUDA."""

    def __init__(self, device: torch.device):
        self.cpu = device.type == "cpu"
        self.wall_start, self.cpu_start = time.perf_counter(), time.process_time()

    def seconds(self) -> float:
        return time.process_time() - self.cpu_start if self.cpu else self.wall()

    def wall(self) -> float:
        return time.perf_counter() - self.wall_start


def _lr(s: Settings, step: int, total: int) -> float:
    if step < WARMUP_STEPS:
        return s.lr * (step + 1) / WARMUP_STEPS
    done = (step - WARMUP_STEPS) / max(1, total - WARMUP_STEPS)
    return s.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done))))


def train(s: Settings, folder: Path) -> dict[str, Any]:
    """Train from scratch, save the model (save_pretrained) and training.json into `folder`; return the record."""
    torch.manual_seed(s.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(s, folder, device)
    finally:
        torch.set_num_threads(threads)


def _train(s: Settings, folder: Path, device: torch.device) -> dict[str, Any]:
    """AdamW on random windows of the training text, warm-up then cosine; held-out perplexity along the way."""
    train_text, held_text = corpus()
    data = torch.from_numpy(np.frombuffer(train_text, dtype=np.uint8).astype(np.int64)).to(device)
    model = LlamaForCausalLM(config(s)).to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=s.lr, betas=(0.9, 0.95))
    rng = np.random.default_rng(s.seed)
    offsets = torch.arange(s.seq_len, device=device)
    total, losses, curve = s.steps or None, [], []
    clock = _Clock(device)
    step = 0
    while total is None or step < total:
        starts = torch.from_numpy(rng.integers(0, data.numel() - s.seq_len, size=s.batch)).to(device)
        batch = data[starts[:, None] + offsets]
        for group in opt.param_groups:
            group["lr"] = _lr(s, step, total or WARMUP_STEPS)
        loss = model(batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step == TIMED_FROM:
            timed_from = clock.seconds()
        if total is None and step == WARMUP_STEPS:
            per_step = (clock.seconds() - timed_from) / (WARMUP_STEPS - TIMED_FROM)
            total = WARMUP_STEPS + max(0, int((s.minutes * 60 * (1 - EVAL_SHARE) - clock.seconds()) / per_step))
        if total is not None and (step % max(1, total // EVALS) == 0 or step == total):
            curve.append({"step": step, "budget_s": round(clock.seconds(), 1), "wall_s": round(clock.wall(), 1),
                          "train_loss": round(float(np.mean(losses[-50:])), 4),
                          "heldout_ppl": round(heldout_perplexity(model, held_text, s.seq_len, device, 32), 4)})
            print(json.dumps(curve[-1]), flush=True)
    model = model.eval().cpu()
    model.save_pretrained(folder)
    record = {"settings": asdict(s), "params": sum(p.numel() for p in model.parameters()), "device": str(device),
              "steps": step, "budget_s": round(clock.seconds(), 1), "wall_s": round(clock.wall(), 1),
              "train_bytes": len(train_text), "heldout_bytes": len(held_text),
              "tokens_seen": step * s.batch * s.seq_len, "epochs": round(step * s.batch * s.seq_len / len(train_text), 2),
              "train_loss_last50": round(float(np.mean(losses[-50:])), 4), "curve": curve,
              "heldout_ppl": heldout_perplexity(model, held_text, s.seq_len, torch.device("cpu")),
              "unigram_ppl": _unigram_perplexity(train_text, held_text)}
    (folder / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def _unigram_perplexity(train_text: bytes, held_text: bytes) -> float:
    """The held-out perplexity of byte frequencies alone (add-one smoothed): the bar a trained model must clear."""
    counts = np.bincount(np.frombuffer(train_text, dtype=np.uint8), minlength=256) + 1.0
    held = np.frombuffer(held_text, dtype=np.uint8)
    return float(np.exp(-np.log(counts / counts.sum())[held].mean()))


def trained(s: Settings = Settings(), cache: Path = CACHE, fresh: bool = False
            ) -> tuple[LlamaForCausalLM, dict[str, Any]]:
    """The trained model (fp32, eval mode) and its training record (with its `cache_key`), trained unless cached
    for these settings."""
    key = source_hash(Path("benchmarks/train_llm.py"), json.dumps(asdict(s), sort_keys=True), sys.version,
                      torch.__version__)
    if fresh:
        (cache / NAME / "cache-key").unlink(missing_ok=True)
    folder, _ = Cache(cache).get(NAME, key, lambda f: train(s, f))
    record = json.loads((folder / "training.json").read_text())
    return LlamaForCausalLM.from_pretrained(folder).eval(), {**record, "cache_key": key}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(Settings):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--fresh", action="store_true", help="train again even if cached")
    args = vars(parser.parse_args())
    cache, fresh = args.pop("cache"), args.pop("fresh")
    _, record = trained(Settings(**args), cache, fresh)
    print(json.dumps({k: v for k, v in record.items() if k != "curve"}, indent=1))


if __name__ == "__main__":
    main()
