"""Latency statistics a reader can judge: percentiles plus the sample count, a 95% confidence interval of the
median and the coefficient of variation, and the stopping rule that decides when a loop has enough samples.

>>> s = latency_stats([1.0, 1.1, 0.9, 1.0, 1.2, 1.0, 0.95, 1.05])
>>> s["n"], s["p50"], s["median_ci"]["low"] <= s["p50"] <= s["median_ci"]["high"]
(8, 1.0, True)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["BOOTSTRAP_MAX_N", "latency_stats", "median_ci"]

#: above this many samples the CI of the median comes from order statistics (exact, distribution-free) instead of
#: the bootstrap, whose cost grows with n x resamples
BOOTSTRAP_MAX_N = 5000
BOOTSTRAP_RESAMPLES = 1000
Z95 = 1.959964


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """95% CI of the median: percentile bootstrap (1000 resamples, fixed seed) up to BOOTSTRAP_MAX_N samples,
    the binomial order-statistic interval above. `half_width_pct` is half its width in % of the median."""
    a = np.sort(np.asarray(samples, dtype=np.float64))
    n = a.size
    median = float(np.median(a))
    if n < 2:
        return {"low": median, "high": median, "confidence": confidence, "method": "single sample",
                "half_width_pct": None}
    if n <= BOOTSTRAP_MAX_N:
        rng = np.random.default_rng(0)
        medians = np.concatenate([np.median(a[rng.integers(0, n, size=(100, n))], axis=1)
                                  for _ in range(BOOTSTRAP_RESAMPLES // 100)])
        alpha = (1 - confidence) / 2
        low, high = (float(v) for v in np.quantile(medians, [alpha, 1 - alpha]))
        method = f"bootstrap ({BOOTSTRAP_RESAMPLES} resamples)"
    else:
        k = Z95 * math.sqrt(n) / 2
        low, high = float(a[max(0, math.floor(n / 2 - k) - 1)]), float(a[min(n - 1, math.ceil(n / 2 + k))])
        method = "order statistics (binomial)"
    half = (high - low) / 2 / median * 100 if median > 0 else None
    return {"low": low, "high": high, "confidence": confidence, "method": method,
            "half_width_pct": None if half is None else round(half, 3)}


def latency_stats(samples_ms: Sequence[float]) -> dict[str, Any]:
    """p50/p90/p99/mean/std/min/max of per-iteration latencies in milliseconds, with n, the median's 95% CI and
    the coefficient of variation (std / mean)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    pct = np.percentile(a, [50, 90, 99])
    mean, std = float(a.mean()), float(a.std())
    return {"p50": float(pct[0]), "p90": float(pct[1]), "p99": float(pct[2]), "mean": mean,
            "std": std, "min": float(a.min()), "max": float(a.max()), "n": int(a.size),
            "cv": std / mean if mean > 0 else None, "median_ci": median_ci(a)}
