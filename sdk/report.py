"""The export report: sizes, coverage, parity, measurements and a verdict against the profile's budgets."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from sdk.core.results import to_dict
from sdk.version import __version__

if TYPE_CHECKING:
    from converters.base import ConversionResult
    from sdk.core.bundle import Artifact
    from sdk.devices import DeviceProfile
    from sdk.core.recipes import Recipe


def build_report(*, profile: "DeviceProfile", plan: "Recipe", manifest: Mapping[str, Any], artifact: "Artifact",
                 model_info: Mapping[str, Any], conversion: "ConversionResult",
                 quant_control: Mapping[str, Any] | None, validation: Mapping[str, Any],
                 passes: Mapping[str, Any] | None, timings: Mapping[str, float]) -> dict[str, Any]:
    """The report as JSON: the converter's typed results through `to_dict` (coverage: a Coverage's fields or
    {"unavailable": reason}), the quantization account with what accuracy control measured beside it."""
    params = model_info.get("params_after_passes", model_info["params"])
    macs = model_info.get("macs_after_passes", model_info["macs"])
    size = artifact.size_bytes
    fp32_bytes = model_info["params"] * 4
    report: dict[str, Any] = {
        "sdk_version": __version__,
        "device": profile.id,
        "device_name": profile.name,
        "format": profile.format,
        "runtime": profile.runtime,
        "recipe": plan.to_strings(),
        "model": dict(model_info),
        "artifact": {"model_file": manifest["model_file"], "size_bytes": size,
                     "size_vs_fp32_params": round(size / fp32_bytes, 4) if fp32_bytes else None},
        "coverage": to_dict(conversion.coverage),
        "quantization": None if conversion.quantization is None
        else {**to_dict(conversion.quantization), **(quant_control or {})},
        "passes": passes,
        "parity": _parity(validation, quant_control),
        **_measurements(validation),
        "validation": {k: v for k, v in validation.items() if k != "parity"},
        "roofline": _roofline(profile, plan, macs, size),
        "notes": list(conversion.notes),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    report["model"]["params_final"], report["model"]["macs_final"] = params, macs
    report["verdict"] = _verdict(profile, report, validation)
    return report


def _measurements(validation: Mapping[str, Any]) -> dict[str, Any]:
    """The agent's figures at the top of the report; null with the reason where nothing was measured."""
    ran = bool(validation.get("ran"))
    where = {"host": "this export host", "agent": validation.get("agent")}.get(validation.get("mode"))
    energy_reason = validation.get("energy_reason") if ran else validation.get("reason")
    return {
        "measured_on": {"mode": validation.get("mode"), "where": where, "ran_on": validation.get("ran_on")} if ran
        else {"mode": validation.get("mode"), "reason": validation.get("reason")},
        "latency_ms": validation.get("latency_ms"),
        "load_ms": validation.get("load_ms"),
        "first_inference_ms": validation.get("first_inference_ms"),
        "peak_rss_mb": validation.get("peak_rss_mb"),
        "energy": {"value": validation.get("energy"), "reason": None if validation.get("energy") else energy_reason},
    }


def _parity(validation: Mapping[str, Any], quant_control: Mapping[str, Any] | None) -> dict[str, Any]:
    """The bundle's reference check, and `decided_by`: every input set the parity verdict rests on. A quantized
    recipe is judged first on its held-out inputs (the tolerance on each; the fallback ran against them), then
    on the reference input (example_inputs, in reference.npz), which a device re-checks; either failing refuses
    the export."""
    if validation.get("ran"):
        parity = {"ran_on": validation.get("ran_on"), "reason": None, **validation["parity"]}
    else:
        parity = {"ran_on": None, "reason": validation.get("reason"), "outputs": [], "passed": None}
    heldout = (quant_control or {}).get("heldout")
    held = [{"inputs": "held-out", "source": heldout["source"], "samples": heldout["samples"],
             "ran_on": heldout["ran_on"], "passed": heldout["passed"]}] if heldout else []
    reference = {"inputs": "reference", "source": "example_inputs (reference.npz)", "samples": 1,
                 "ran_on": parity["ran_on"], "passed": parity["passed"]}
    return {**parity, "decided_by": [*held, reference]}


def _roofline(profile: "DeviceProfile", plan: "Recipe", macs: int, size_bytes: int) -> dict[str, Any]:
    """Latency lower bound on the device: max(compute at peak, weights read once at full bandwidth)."""
    key = plan.precision.peak_key or "fp32"
    bound = profile.roofline_ms(macs, size_bytes, key)
    if bound is None:
        return {"bound_ms": None, "reason": f"profile {profile.id} has no peak_tops.{key} figure"}
    compute_ms = 2 * macs / (profile.peak_tops[key] * 1e12) * 1e3
    return {"bound_ms": bound, "peak_key": key, "peak_tops": profile.peak_tops[key],
            "bandwidth_gbps": profile.memory_bandwidth_gbps,
            "bound_by": "compute" if compute_ms >= bound else "memory",
            "note": "device bound from the profile's peak figures; host measurements are not on the device"}


def _verdict(profile: "DeviceProfile", report: Mapping[str, Any], validation: Mapping[str, Any]) -> dict[str, Any]:
    """Pass/fail per check that could be made; checks that could not run are listed as unverified."""
    checks: dict[str, Any] = {}
    parity = report["parity"]
    checks["parity"] = parity["passed"] if parity["passed"] is not None else f"unverified: {parity['reason']}"
    on_device = validation.get("mode") == "agent"
    latency = validation.get("latency_ms")
    budget = profile.budgets.get("latency_p90_ms")
    if latency and budget and on_device:
        checks["latency_p90_ms"] = latency["p90"] <= budget
    elif budget:
        checks["latency_p90_ms"] = "unverified: measured on the export host, not the device" if latency else \
            "unverified: not measured"
    rss = validation.get("peak_rss_mb")
    if rss is not None and on_device:
        checks["memory_mb"] = rss <= profile.memory_budget_mb
    failed = [k for k, v in checks.items() if v is False]
    unverified = [k for k, v in checks.items() if isinstance(v, str)]
    status = "fail" if failed else ("pass" if not unverified else "partial")
    return {"status": status, "checks": checks}
