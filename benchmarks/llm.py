"""`make bench` (LLM part): int4 decoders on each host-runnable target, speed and quality against fp32 torch.

    python benchmarks/llm.py [--targets android,intel-cpu,jetson] [--prompt-lens 64,256] [--new-tokens 128]

Speed: a >= 50M-parameter Llama (`samples.tiny_llama.build(large=True)`: 12 layers, d=512, vocab 8192,
config-defined with random weights, seed 0), generated with through the agent's loop, against torch eager fp32
`generate()` in the same run. Random weights time like trained ones, but their logits are nearly flat, so its
agreement would say nothing.
Quality: the small Llama that `benchmarks/train_llm.py` trains on CPython's own docs (cached; trained on first
use): each target's int4 bundle against the fp32 model on held-out text (greedy agreement, perplexity change,
95% intervals over the sequences). No small pretrained decoder ships inside a PyPI package, and nothing
downloads weights. Writes out/bench-llm/results.json and the tables in docs/llm.md (`--no-docs`: print only).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch

import sdk
from benchmarks import machine, train_llm
from benchmarks.machine import replace_block, where
from samples.tiny_llama import build, token_lists
from sdk.agent import LocalAgent
from sdk.llm.quality import torch_greedy


PAGE = ROOT / "docs" / "llm.md"
CALIBRATION_SEQS, EVAL_SEQS = 16, 64  # windows of the trained model's length: training text, held-out text
SAMPLE_TOKENS = 64  # the greedy continuation shown as text
START, END = "<!-- llm_bench: written by python benchmarks/llm.py; do not edit -->", "<!-- /llm_bench -->"


def torch_eager(model: torch.nn.Module, prompt_len: int, new_tokens: int, vocab: int) -> dict:
    """fp32 eager `generate()` (Hugging Face's dynamic KV cache), greedy: TTFT and decode tokens/s."""
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, vocab, size=(1, prompt_len)))
    kwargs = {"attention_mask": torch.ones_like(ids), "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        model.generate(ids[:, :8], max_new_tokens=4, min_new_tokens=4, **kwargs)  # warm-up
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kwargs)
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kwargs)
        total = time.perf_counter() - t
    return {"prompt_len": prompt_len, "ttft_ms": ttft * 1e3, "decode_tok_s": (new_tokens - 1) / (total - ttft)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="android,intel-cpu,jetson")
    parser.add_argument("--prompt-lens", default="64,256")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "bench-llm")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the bundles already in --out (exporting only those missing) instead of exporting")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/llm.md's table")
    args = parser.parse_args()
    began = datetime.datetime.now(datetime.timezone.utc)
    lens = [int(n) for n in args.prompt_lens.split(",")]
    max_seq = max(lens) + args.new_tokens
    trained, training = train_llm.trained()  # first, so that nothing else runs while the speed rows are timed
    model = build(large=True)
    vocab, params = model.config.vocab_size, sum(p.numel() for p in model.parameters())
    texts = token_lists(n=12, length=96, vocab=vocab)
    results = {"machine": machine.describe(), "began": began.isoformat(), "new_tokens": args.new_tokens,
               "reuse": args.reuse, "model": {"params": params, "fp32_bytes": params * 4,
                                                        "source": "config-defined, random weights (seed 0)"},
               "trained": training, "targets": {}}
    for target in args.targets.split(","):
        t0 = time.perf_counter()
        try:
            artifact = _int4(model, target, args.out, args.reuse, calibration=texts, max_seq_len=max_seq)
        except sdk.core.errors.SdkError as exc:
            results["targets"][target] = {"error": str(exc)}
            continue
        export_s = None if args.reuse else time.perf_counter() - t0
        # torch eager right before the bundle, so each ratio compares two runs under the same machine load
        eager = [torch_eager(model, n, args.new_tokens, vocab) for n in lens]
        bench = LocalAgent().llm_benchmark(artifact, prompt_lens=lens, new_tokens=args.new_tokens).to_dict()
        results["targets"][target] = {"export_s": export_s, "toolchain": artifact.report["toolchain"],
                                      "size_bytes": artifact.size_bytes,
                                      "size_vs_fp32": artifact.size_bytes / (params * 4), "bench": bench,
                                      "torch_eager_fp32": eager}
        print(target, json.dumps(results["targets"][target], default=str)[:400], flush=True)
    # under the training cache key: a retrained model never meets the bundles of an earlier one
    results["quality"] = quality(trained, args.targets.split(","), args.out / f"trained-{training['cache_key']}",
                                 args.reuse)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = "\n\n".join([caption(results), table(results), training_line(results["trained"]),
                         quality_table(results["quality"]), samples(results["quality"])])
    if not args.no_docs:
        PAGE.write_text(replace_block(PAGE.read_text(), START, END, text, str(PAGE)))
    print(text)


def _int4(model: torch.nn.Module, target: str, out: Path, reuse: bool, **kwargs: object) -> sdk.Artifact:
    """`model`'s int4:32 bundle for `target` in `out`: exported now, or (`reuse`) the one already there if any."""
    folder = out / sdk.devices.get(target).id
    if reuse and folder.is_dir():
        return sdk.load_artifact(folder)
    return sdk.export(model, target, task="text-generation", recipe=["int4:32"], output_dir=out, **kwargs).artifact


def quality(model: torch.nn.Module, targets: list[str], out: Path, reuse: bool) -> dict[str, Any]:
    """Each target's int4 bundle of the trained model against it in fp32, on held-out windows (the export's own
    quality measurement, `eval_data=`), and the greedy continuation of the first held-out prompt as text."""
    train_text, held_text = train_llm.corpus()
    length = model.config.max_position_embeddings
    calibration, held = train_llm.windows(train_text, length, CALIBRATION_SEQS), train_llm.windows(held_text, length,
                                                                                                 EVAL_SEQS)
    prompt = held[0][: length // 2]
    rows: dict[str, dict] = {}
    for target in targets:
        try:
            artifact = _int4(model, target, out, reuse, calibration=calibration, eval_data=held, max_seq_len=length)
        except sdk.core.errors.SdkError as exc:
            rows[target] = {"error": str(exc)}
            continue
        tokens = LocalAgent().generate(artifact, prompt.tolist(), max_new_tokens=SAMPLE_TOKENS).tokens
        rows[target] = {"toolchain": artifact.report["toolchain"], "weights": artifact.report["quantization"]["scheme"],
                        "size_vs_fp32": artifact.report["artifact"]["size_vs_fp32_params"],
                        "quality": artifact.report["llm"].get("quality"), "sample": _text(tokens)}
        print(target, json.dumps(rows[target], default=str)[:400], flush=True)
    return {"prompt": _text(prompt), "fp32_sample": _text(torch_greedy(model, prompt, SAMPLE_TOKENS)), "targets": rows}


def _text(tokens: object) -> str:
    return bytes(np.asarray(tokens, np.uint8)).decode(errors="replace")


def caption(results: dict) -> str:
    """Where, when and under what load the table was measured (torch eager suffers most from other work)."""
    m = results["machine"]
    exported = ("bundles already in the output folder reused (--reuse), missing ones exported in this run"
                if results["reuse"] else "bundles exported in this run")
    return (f"Measured by `python benchmarks/llm.py` on {results['began'][:16].replace('T', ' ')} UTC, on {where(m)}, "
            f"torch {m['packages']['torch']}; {exported}; {results['new_tokens']} new tokens per prompt; load "
            f"average (1, 5, 15 min) {m['load_average']} at the start, {results['load_average_end']} at the end.")


def table(results: dict) -> str:
    """Speed of the random-weight >= 50M model: each bundle beside torch eager fp32 measured just before it."""
    header = ("| target | prompt | TTFT ms | decode tok/s | vs torch eager fp32 | p90 ms/token | peak RSS MB | "
              "size vs fp32 | energy/token |")
    rows = [header, "|" + "---|" * 9]
    for target, r in results["targets"].items():
        if "error" in r:
            rows.append(f"| {target} | error: {r['error'][:100]} |" + " |" * 7)
            continue
        eager = {e["prompt_len"]: e for e in r["torch_eager_fp32"]}
        for e in eager.values():
            rows.append(f"| torch eager fp32 (before {target}) | {e['prompt_len']} | {e['ttft_ms']:.1f} | "
                        f"{e['decode_tok_s']:.1f} | 1.00x | - | - | 1.00 | - |")
        b = r["bench"]
        energy = f"{b['energy_per_token_mj']:.2f} mJ" if b["energy_per_token_mj"] is not None else "unavailable"
        for p in b["prompts"]:
            ratio = p["decode_tok_s"] / eager[p["prompt_len"]]["decode_tok_s"]
            rows.append(f"| {target} | {p['prompt_len']} | {p['ttft_ms']:.1f} | {p['decode_tok_s']:.1f} | "
                        f"{ratio:.2f}x | {p['token_latency_ms']['p90']:.2f} | {b['peak_rss_mb']:.0f} | "
                        f"{r['size_vs_fp32']:.3f} | {energy} |")
    return "\n".join(rows)


def training_line(t: dict) -> str:
    """What the quality rows' model is and how its training went (benchmarks/train_llm.py's record)."""
    s = t["settings"]
    return (f"Quality model: a {s['layers']}-layer Llama, d={s['hidden']}, {s['heads']} heads ({s['kv_heads']} KV), "
            f"MLP {s['ffn']}, byte vocabulary (256), {t['params'] / 1e6:.2f}M parameters, trained by "
            f"`benchmarks/train_llm.py` from seed {s['seed']} on {t['train_bytes'] / 1e3:.0f} KB of CPython's "
            f"`pydoc_data.topics` ({t['steps']} steps of {s['batch']} x {s['seq_len']} bytes, {t['epochs']} epochs, "
            f"AdamW lr {s['lr']:g}; {t['budget_s'] / 60:.1f} budget minutes, {t['wall_s'] / 60:.1f} wall, on "
            f"{t['device']}{' (one thread; budget: CPU time)' if t['device'] == 'cpu' else ''}): training loss "
            f"{t['train_loss_last50']:.3f} (mean of the last 50 steps), held-out perplexity "
            f"{t['heldout_ppl']:.2f} per byte ({math.log2(t['heldout_ppl']):.2f} bits) on "
            f"{t['heldout_bytes'] / 1e3:.0f} KB never trained on, against {t['unigram_ppl']:.1f} for byte "
            "frequencies alone.")


def _ci(q: dict, key: str, fmt: str) -> str:
    ci = q.get(f"{key}_ci")
    value = format(q[key], fmt)
    return f"{value} [{format(ci[0], fmt)}, {format(ci[1], fmt)}]" if ci else value


def quality_table(quality: dict[str, Any]) -> str:
    """The trained model's int4 bundles against it in fp32, with 95% intervals over the held-out sequences."""
    out = ["| target | int4 weights | size vs fp32 | perplexity fp32 -> int4 | perplexity change | "
           "top-1 agreement | greedy prefix agreement | n |", "|" + "---|" * 8]
    for target, r in quality["targets"].items():
        q = r.get("quality")
        if not q:
            out.append(f"| {target} | {r.get('error', r.get('quality_reason', 'not measured'))[:100]} |" + " |" * 6)
            continue
        out.append(f"| {target} | {r['weights']} | {r['size_vs_fp32']:.3f} | {q['perplexity_fp32']:.3f} -> "
                   f"{q['perplexity_artifact']:.3f} | {_ci(q, 'perplexity_change', '+.2%')} | "
                   f"{_ci(q, 'top1_agreement', '.3f')} | {_ci(q, 'greedy_prefix_agreement', '.3f')} | "
                   f"{q['sequences']} x {q['eval_tokens'] // q['sequences']} positions; {q['greedy_prompts']} x "
                   f"{q['greedy_tokens']} greedy |")
    return "\n".join(out)


def samples(quality: dict[str, Any]) -> str:
    """The greedy continuation of the first held-out prompt by the fp32 model and each bundle, as text."""
    lines = [f"Greedy continuations ({SAMPLE_TOKENS} bytes) of a held-out prompt that ends "
             f"`{_shown(quality['prompt'][-60:])}`:", "", f"- fp32 (torch): `{_shown(quality['fp32_sample'])}`"]
    lines += [f"- {target}: `{_shown(r['sample'])}`" for target, r in quality["targets"].items() if "sample" in r]
    return "\n".join(lines)


def _shown(text: str) -> str:
    """On one line of a Markdown code span."""
    return text.replace("\n", "⏎").replace("`", "'")


if __name__ == "__main__":
    main()
