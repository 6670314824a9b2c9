"""Real photographs that ship with scikit-image, cut into many ImageNet-normalised crops.

No download: the images are inside the scikit-image wheel. Used for calibration and for top-1
agreement measurements.
"""
from __future__ import annotations

import numpy as np
import torch

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry", "retina")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def sample_images(n: int, size: int = 224, seed: int = 0) -> list[torch.Tensor]:
    """`n` tensors of shape (1, 3, size, size): random crops (35-100% of the short side) and flips of the photos."""
    import skimage.data
    from skimage.transform import resize

    photos = [getattr(skimage.data, name)()[..., :3] for name in PHOTOS]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.35, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        x = resize(crop, (size, size), anti_aliasing=True).astype(np.float32)  # floats in [0, 1]
        x = (x - MEAN) / STD
        out.append(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None])
    return out
