"""Calibration data for samples/mobilenet_v2.py: 32 crops of real photographs at 224 x 224.

    edge-sdk export samples/mobilenet_v2.py:build --device intel-cpu --recipe int8 --calibration samples/calib.py:loader
"""
from __future__ import annotations

from samples.images import sample_images


def loader(n: int = 32, size: int = 224) -> list[tuple]:
    """A list of one-input tuples (any iterable of input tuples works, a DataLoader included)."""
    return [(x,) for x in sample_images(n, size)]
