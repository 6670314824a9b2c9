"""Real photographs that ship with scikit-image, cut into many ImageNet-normalised crops.

No download: the images are inside the scikit-image wheel. Used for calibration and for top-1
agreement measurements.
"""
from __future__ import annotations

import numpy as np
import torch

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry", "retina")
#: every photograph in the scikit-image wheel that is not a texture or a test pattern: the colour ones above, a
#: motorcycle, and grey-level scenes (repeated to three channels)
ALL_PHOTOS = (*PHOTOS, "stereo_motorcycle", "camera", "clock", "coins", "moon", "page")
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
#: the TensorFlow EfficientNet-Lite preprocessing, (x * 255 - 127) / 128, as mean and std on [0, 1]
LITE_MEAN = np.full(3, 127 / 255, dtype=np.float32)
LITE_STD = np.full(3, 128 / 255, dtype=np.float32)


def _photo(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def sample_images(n: int, size: int = 224, seed: int = 0, photos: tuple[str, ...] = PHOTOS,
                  mean: np.ndarray = MEAN, std: np.ndarray = STD) -> list[torch.Tensor]:
    """`n` tensors of shape (1, 3, size, size): random crops (35-100% of the short side) and flips of the photos,
    normalised with `mean` and `std` (ImageNet's by default; a model trained with another preprocessing wants its
    own)."""
    return random_crops([_photo(name) for name in photos], n, size, seed=seed, mean=mean, std=std)


def random_crops(images: list[np.ndarray], n: int, size: int, *, seed: int = 0, mean: np.ndarray = MEAN,
                 std: np.ndarray = STD, scale: tuple[float, float] = (0.35, 1.0)) -> list[torch.Tensor]:
    """`n` crops cycling over `images` (HWC, uint8 or floats in [0, 1]): square, `scale` of the short side, at a
    seeded random place, half of them flipped, resized to `size`, normalised; the same seed gives the same crops."""
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(*scale))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[top:top + side, left:left + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        x = resize(crop, (size, size), anti_aliasing=True).astype(np.float32)  # floats in [0, 1]
        x = (x - mean) / std
        out.append(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None])
    return out
