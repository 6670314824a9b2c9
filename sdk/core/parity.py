"""Parity metrics between a runtime's outputs and the fp32 reference. numpy only (used on devices).

>>> import numpy as np
>>> ref = [np.array([[1.0, 2.0, 3.0]], dtype=np.float32)]
>>> r = compare(ref, ref, {"min_cosine": 0.9999})
>>> r["passed"], r["outputs"][0]["cosine"]
(True, 1.0)
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def output_metrics(name: str, got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Cosine, max abs error, SQNR (dB) and, for 2-D logits, top-1 agreement of one output."""
    g = np.asarray(got, dtype=np.float64).reshape(-1)
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    if g.shape != r.shape:
        return {"name": name, "error": f"shape {list(np.shape(got))} != reference {list(np.shape(ref))}",
                "cosine": None, "max_abs_err": None, "sqnr_db": None, "top1_agreement": None}
    denom = np.linalg.norm(g) * np.linalg.norm(r)
    if denom == 0:
        cosine = 1.0 if np.array_equal(g, r) else 0.0
    else:
        cosine = float(np.clip(np.dot(g, r) / denom, -1.0, 1.0))
    noise = float(np.sum((g - r) ** 2))
    signal = float(np.sum(r ** 2))
    sqnr = math.inf if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    top1 = None
    ref_arr = np.asarray(ref)
    if ref_arr.ndim == 2 and ref_arr.shape[1] > 1:
        top1 = float(np.mean(np.argmax(np.asarray(got), axis=1) == np.argmax(ref_arr, axis=1)))
    return {
        "name": name,
        "cosine": round(cosine, 7),
        "max_abs_err": float(np.max(np.abs(g - r))) if g.size else 0.0,
        "sqnr_db": None if math.isinf(sqnr) else round(sqnr, 2),
        "top1_agreement": top1,
    }


def failures(metrics: Mapping[str, Any], tolerance: Mapping[str, Any]) -> list[str]:
    """Human-readable reasons one output misses the tolerance (empty when it passes)."""
    if metrics.get("error"):
        return [f"{metrics['name']}: {metrics['error']}"]
    out = []
    name = metrics["name"]
    if metrics["cosine"] < tolerance.get("min_cosine", -1.0):
        out.append(f"{name}: cosine {metrics['cosine']:.6f} < {tolerance['min_cosine']}")
    if tolerance.get("max_abs_err") is not None and metrics["max_abs_err"] > tolerance["max_abs_err"]:
        out.append(f"{name}: max_abs_err {metrics['max_abs_err']:.4g} > {tolerance['max_abs_err']}")
    if (tolerance.get("min_top1_agreement") is not None and metrics["top1_agreement"] is not None
            and metrics["top1_agreement"] < tolerance["min_top1_agreement"]):
        out.append(f"{name}: top-1 agreement {metrics['top1_agreement']:.3f} < {tolerance['min_top1_agreement']}")
    if (tolerance.get("min_sqnr_db") is not None and metrics["sqnr_db"] is not None
            and metrics["sqnr_db"] < tolerance["min_sqnr_db"]):
        out.append(f"{name}: SQNR {metrics['sqnr_db']:.1f} dB < {tolerance['min_sqnr_db']} dB")
    return out


def compare(got: Sequence[np.ndarray], ref: Sequence[np.ndarray], tolerance: Mapping[str, Any],
            names: Sequence[str] | None = None) -> dict[str, Any]:
    """Compare every output; `passed` is True only if all outputs meet the tolerance."""
    names = list(names or [f"out_{i}" for i in range(len(ref))])
    if len(got) != len(ref):
        return {"outputs": [], "passed": False, "tolerance": dict(tolerance),
                "failures": [f"runtime returned {len(got)} output(s), reference has {len(ref)}"]}
    outputs = [output_metrics(n, g, r) for n, g, r in zip(names, got, ref)]
    problems = [msg for m in outputs for msg in failures(m, tolerance)]
    return {"outputs": outputs, "passed": not problems, "tolerance": dict(tolerance), "failures": problems}
