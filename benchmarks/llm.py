"""`make bench` (LLM part): a >= 50M-parameter Llama decoder exported with int4 weights to each host-runnable
target, generated with through the agent's loop, against torch eager fp32 `generate()` in the same run.

    python benchmarks/llm.py [--targets android,intel-cpu,jetson] [--prompt-lens 64,256] [--new-tokens 128]

The model is config-defined (`samples.tiny_llama.build(large=True)`: 12 layers, d=512, vocab 8192, random weights
with a fixed seed): no small pretrained decoder ships inside a PyPI package this project can use, and nothing
downloads weights. Its logits are nearly flat, so agreement and perplexity here measure fidelity to the fp32
model, not language quality. Writes out/bench-llm/results.json and the table in docs/llm.md (`--no-docs`: print
it only).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import torch

import sdk
from benchmarks import machine
from benchmarks.machine import replace_block, where
from samples.tiny_llama import build, token_lists
from sdk.agent import LocalAgent


PAGE = ROOT / "docs" / "llm.md"
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
    parser.add_argument("--reuse", action="store_true", help="measure bundles already in --out instead of exporting")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/llm.md's table")
    args = parser.parse_args()
    began = datetime.datetime.now(datetime.timezone.utc)
    lens = [int(n) for n in args.prompt_lens.split(",")]
    max_seq = max(lens) + args.new_tokens
    model = build(large=True)
    vocab, params = model.config.vocab_size, sum(p.numel() for p in model.parameters())
    texts = token_lists(n=12, length=96, vocab=vocab)
    results = {"machine": machine.describe(), "began": began.isoformat(), "new_tokens": args.new_tokens,
               "reuse": args.reuse, "model": {"params": params, "fp32_bytes": params * 4,
                                                        "source": "config-defined, random weights (seed 0)"},
               "targets": {}}
    for target in args.targets.split(","):
        t0 = time.perf_counter()
        try:
            artifact = sdk.load_artifact(args.out / sdk.devices.get(target).id) if args.reuse else sdk.export(
                model, target, task="text-generation", recipe=["int4:32"], calibration=texts, max_seq_len=max_seq,
                output_dir=args.out).artifact
        except sdk.core.errors.SdkError as exc:
            results["targets"][target] = {"error": str(exc)}
            continue
        export_s = None if args.reuse else time.perf_counter() - t0
        # torch eager right before the bundle, so each ratio compares two runs under the same machine load
        eager = [torch_eager(model, n, args.new_tokens, vocab) for n in lens]
        bench = LocalAgent().llm_benchmark(artifact, prompt_lens=lens, new_tokens=args.new_tokens).to_dict()
        results["targets"][target] = {"export_s": export_s, "toolchain": artifact.report["toolchain"],
                                      "size_bytes": artifact.size_bytes,
                                      "size_vs_fp32": artifact.size_bytes / (params * 4),
                                      "quality": artifact.report["llm"].get("quality"), "bench": bench,
                                      "torch_eager_fp32": eager}
        print(target, json.dumps(results["targets"][target], default=str)[:400], flush=True)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = caption(results) + "\n\n" + table(results)
    if not args.no_docs:
        PAGE.write_text(replace_block(PAGE.read_text(), START, END, text, str(PAGE)))
    print(text)


def caption(results: dict) -> str:
    """Where, when and under what load the table was measured (torch eager suffers most from other work)."""
    m = results["machine"]
    exported = "bundles exported earlier (--reuse)" if results["reuse"] else "bundles exported in this run"
    return (f"Measured by `python benchmarks/llm.py` on {results['began'][:16].replace('T', ' ')} UTC, on {where(m)}, "
            f"torch {m['packages']['torch']}; {exported}; {results['new_tokens']} new tokens per prompt; load "
            f"average (1, 5, 15 min) {m['load_average']} at the start, {results['load_average_end']} at the end.")


def table(results: dict) -> str:
    header = ("| target | prompt | TTFT ms | decode tok/s | vs torch eager fp32 | p90 ms/token | peak RSS MB | "
              "size vs fp32 | top-1 agreement | perplexity change | energy/token |")
    rows = [header, "|" + "---|" * 11]
    for target, r in results["targets"].items():
        if "error" in r:
            rows.append(f"| {target} | error: {r['error'][:100]} |" + " |" * 9)
            continue
        eager = {e["prompt_len"]: e for e in r["torch_eager_fp32"]}
        for e in eager.values():
            rows.append(f"| torch eager fp32 (before {target}) | {e['prompt_len']} | {e['ttft_ms']:.1f} | "
                        f"{e['decode_tok_s']:.1f} | 1.00x | - | - | 1.00 | - | - | - |")
        b, q = r["bench"], r["quality"] or {}
        energy = f"{b['energy_per_token_mj']:.2f} mJ" if b["energy_per_token_mj"] is not None else "unavailable"
        for p in b["prompts"]:
            ratio = p["decode_tok_s"] / eager[p["prompt_len"]]["decode_tok_s"]
            rows.append(f"| {target} | {p['prompt_len']} | {p['ttft_ms']:.1f} | {p['decode_tok_s']:.1f} | "
                        f"{ratio:.2f}x | {p['token_latency_ms']['p90']:.2f} | {b['peak_rss_mb']:.0f} | "
                        f"{r['size_vs_fp32']:.3f} | {q.get('top1_agreement', float('nan')):.3f} | "
                        f"{q.get('perplexity_change', float('nan')):+.4f} | {energy} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
