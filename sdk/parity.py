"""Parity metrics between a runtime's outputs and the fp32 reference. numpy only (used on devices).

NaN or Inf anywhere (runtime output or reference) fails every check with the count, and an all-zero
reference (cosine undefined) is compared by absolute error with a warning, never a silent pass.

>>> import numpy as np
>>> ref = [np.array([[1.0, 2.0, 3.0]], dtype=np.float32)]
>>> r = compare(ref, ref, {"min_cosine": 0.9999})
>>> r["passed"], r["outputs"][0]["cosine"]
(True, 1.0)
>>> bad = compare([np.array([[np.nan, 2.0, 3.0]])], ref, {"min_cosine": 0.9999})
>>> bad["passed"], bad["failures"]
(False, ['out_0: the runtime output holds 1 NaN and 0 Inf of 3 values'])
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _nonfinite(a: np.ndarray) -> dict[str, int]:
    return {"nan": int(np.isnan(a).sum()), "inf": int(np.isinf(a).sum())}


def output_metrics(name: str, got: np.ndarray, ref: np.ndarray) -> dict[str, Any]:
    """Cosine, max abs error, SQNR (dB) and, for 2-D logits, top-1 agreement of one output.

    A metric that is undefined (non-finite values, an all-zero reference for cosine) is None, and
    `nonfinite` / `reference_nonfinite` / `reference_all_zero` say why.
    """
    g = np.asarray(got, dtype=np.float64).reshape(-1)
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    if g.shape != r.shape:
        return {"name": name, "error": f"shape {list(np.shape(got))} != reference {list(np.shape(ref))}",
                "cosine": None, "max_abs_err": None, "sqnr_db": None, "top1_agreement": None}
    bad_got, bad_ref = _nonfinite(g), _nonfinite(r)
    finite = not any(bad_got.values()) and not any(bad_ref.values())
    all_zero = bool(r.size) and finite and not np.any(r)
    cosine = sqnr = max_abs = top1 = None
    if finite:
        denom = np.linalg.norm(g) * np.linalg.norm(r)
        if denom > 0:
            cosine = round(float(np.clip(np.dot(g, r) / denom, -1.0, 1.0)), 7)
        elif not all_zero:  # the runtime output is all zeros, the reference is not
            cosine = 0.0
        noise = float(np.sum((g - r) ** 2))
        signal = float(np.sum(r ** 2))
        if noise > 0 and signal > 0:
            sqnr = round(10 * math.log10(signal / noise), 2)
        max_abs = float(np.max(np.abs(g - r))) if g.size else 0.0
        ref_arr = np.asarray(ref)
        if ref_arr.ndim == 2 and ref_arr.shape[1] > 1:
            top1 = float(np.mean(np.argmax(np.asarray(got), axis=1) == np.argmax(ref_arr, axis=1)))
    out = {"name": name, "cosine": cosine, "max_abs_err": max_abs, "sqnr_db": sqnr, "top1_agreement": top1}
    if not finite:
        out |= {"nonfinite": bad_got, "reference_nonfinite": bad_ref, "size": int(g.size)}
    if all_zero:
        out["reference_all_zero"] = True
    return out


def _nonfinite_failures(metrics: Mapping[str, Any]) -> list[str]:
    name, size = metrics["name"], metrics.get("size")
    out = []
    for key, what in (("nonfinite", "the runtime output"), ("reference_nonfinite", "the fp32 reference")):
        counts = metrics.get(key) or {}
        if counts.get("nan") or counts.get("inf"):
            out.append(f"{name}: {what} holds {counts['nan']} NaN and {counts['inf']} Inf of {size} values")
    return out


def failures(metrics: Mapping[str, Any], tolerance: Mapping[str, Any]) -> list[str]:
    """Human-readable reasons one output misses the tolerance (empty when it passes)."""
    if metrics.get("error"):
        return [f"{metrics['name']}: {metrics['error']}"]
    if "nonfinite" in metrics:
        return _nonfinite_failures(metrics)
    out = []
    name = metrics["name"]
    if metrics.get("reference_all_zero"):
        limit = tolerance.get("max_abs_err") or 0.0
        if metrics["max_abs_err"] > limit:
            out.append(f"{name}: the reference is all zeros (cosine undefined) and max_abs_err "
                       f"{metrics['max_abs_err']:.4g} > {limit}")
    elif metrics["cosine"] < tolerance.get("min_cosine", -1.0):
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
    """Compare every output; `passed` is True only if all outputs meet the tolerance. `warnings` lists what
    passed without full evidence (an all-zero reference: cosine cannot be computed)."""
    names = list(names or [f"out_{i}" for i in range(len(ref))])
    if len(got) != len(ref):
        return {"outputs": [], "passed": False, "tolerance": dict(tolerance), "warnings": [],
                "failures": [f"runtime returned {len(got)} output(s), reference has {len(ref)}"]}
    outputs = [output_metrics(n, g, r) for n, g, r in zip(names, got, ref)]
    problems = [msg for m in outputs for msg in failures(m, tolerance)]
    warnings = [f"{m['name']}: the fp32 reference is all zeros, so cosine is undefined; compared by max_abs_err "
                "only (a dead model exports zeros too: check the reference inputs)"
                for m in outputs if m.get("reference_all_zero")]
    return {"outputs": outputs, "passed": not problems, "tolerance": dict(tolerance), "warnings": warnings,
            "failures": problems}
