"""Labeled evaluation data that ships inside packages (no download): `(inputs..., label)` samples for
`sdk.export(..., eval_data=..., metric=...)`.

- `imagenet_photos`: 20 real photos with their ImageNet-1k class index, and any number of seeded crops of them;
  from the foolbox wheel, `foolbox/data/imagenet_*.jpg` (MIT licence).
- `foolbox_images("cifar10" | "cifar100" | "mnist" | "fashionMNIST")`: 20 small labeled images each, same wheel.
- `digits`: scikit-learn's 8x8 handwritten digits, 1797 with their digit (360 in the test split); BSD-3-Clause
  (the UCI data: CC BY 4.0).
- `sts_pairs`: 102 sentence pairs scored 0-5 like STS-B, written for this project (`samples/data/sts_pairs.tsv`).

>>> x, label = imagenet_photos(n=2, size=64)[0]
>>> tuple(x.shape), label
((1, 3, 64, 64), 243)
"""
from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from samples.images import MEAN, STD, random_crops

__all__ = ["digits", "foolbox_images", "imagenet_photos", "sts_pairs", "tokenized_pairs"]

FOOLBOX_SETS = ("imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST")
STS_FILE = Path(__file__).with_name("data") / "sts_pairs.tsv"


def foolbox_images(dataset: str = "imagenet") -> list[tuple[np.ndarray, int]]:
    """The labeled images in foolbox's wheel as (HWC uint8 array, class index), in file order. Read from the
    installed files: foolbox itself (and its JAX/TensorFlow-facing imports) is never imported."""
    from importlib import metadata

    from PIL import Image

    if dataset not in FOOLBOX_SETS:
        raise ValueError(f"foolbox ships {', '.join(FOOLBOX_SETS)}; got {dataset!r}")
    try:
        folder = Path(metadata.distribution("foolbox").locate_file("foolbox/data"))
    except metadata.PackageNotFoundError:
        raise ModuleNotFoundError("the labeled photos ship in the foolbox wheel: pip install foolbox "
                                  "(or edge-sdk[dev])") from None
    files = sorted(folder.glob(f"{dataset}_*_*.*"))  # <set>_<index>_<label>.<ext>
    out = []
    for f in files:
        img = np.asarray(Image.open(f).convert("RGB"))
        out.append((img, int(f.stem.rsplit("_", 1)[1])))
    return out


def imagenet_photos(n: int = 20, size: int = 224, seed: int = 0, mean: np.ndarray = MEAN,
                     std: np.ndarray = STD) -> list[tuple[torch.Tensor, int]]:
    """`n` samples `(x of shape (1, 3, size, size), ImageNet class index)`: the 20 photos whole (centre square)
    first, then seeded random crops of 60-100% of the short side, half flipped, cycling over the photos; the same
    arguments always give the same samples. `mean`/`std` as the model was trained (EfficientNet-Lite: LITE_MEAN)."""
    photos = foolbox_images("imagenet")
    whole = random_crops([_centre_square(img) for img, _ in photos], min(n, len(photos)), size, seed=seed,
                         mean=mean, std=std, scale=(1.0, 1.0))
    extra = random_crops([img for img, _ in photos], max(0, n - len(photos)), size, seed=seed, mean=mean, std=std,
                         scale=(0.6, 1.0))
    labels = [label for _, label in photos]
    return [(x, labels[i % len(labels)]) for i, x in enumerate(whole + extra)]


def _centre_square(img: np.ndarray) -> np.ndarray:
    side = min(img.shape[:2])
    top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    return img[top:top + side, left:left + side]


def digits(split: str = "test", seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """scikit-learn's 8x8 digits as `(x of shape (1, 1, 8, 8) in [0, 1], digit)`; the split of
    samples.digits_cnn.load_data (stratified 80/20, `seed`), so a model trained on "train" is scored on "test"."""
    from samples.digits_cnn import load_data

    x_train, y_train, x_test, y_test = load_data(seed=seed)
    x, y = {"train": (x_train, y_train), "test": (x_test, y_test)}[split]
    return [(x[i:i + 1], int(y[i])) for i in range(len(y))]


def sts_pairs() -> list[tuple[str, str, float]]:
    """(sentence_a, sentence_b, similarity 0-5) for sentence-embedding models, scored by Spearman's rank
    correlation of the embeddings' cosine with the score (`metric="spearman"`)."""
    with open(STS_FILE, newline="") as fh:
        rows = csv.DictReader((line for line in fh if not line.startswith("#")), delimiter="\t")
        return [(r["sentence_a"], r["sentence_b"], float(r["score"])) for r in rows]


def tokenized_pairs(tokenize: Callable[[list[str]], tuple[torch.Tensor, ...]]
                    ) -> list[tuple[torch.Tensor, ...]]:
    """`sts_pairs` as model inputs: each pair tokenized as a batch of two, `(*tokenize([a, b]), score)`, so the
    model's output holds both embeddings, shape (2, dim), as the spearman metric wants. `tokenize` pads to a
    fixed length (the exported graph has static shapes), e.g. a Hugging Face tokenizer with
    padding="max_length"."""
    return [(*tokenize([a, b]), score) for a, b, score in sts_pairs()]
