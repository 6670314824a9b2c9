"""Quantize through the device's converter, measure on held-out data, and fall back layer by layer.

The quantizers are the formats' own (each converter's job); this module adds what none of them does
automatically: parity on held-out calibration samples, per-layer sensitivity, and keeping the worst
layers in float through the toolchain's own exclusion mechanism until a tolerance is met.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

import backends
from converters.base import ConversionJob, ConversionResult, Converter
from converters.quant.sensitivity import layer_sensitivity, quantizable_layers, simulate
from sdk.devices import DeviceProfile
from sdk.core.errors import AccuracyError, ConversionError, InvalidInputsError, ParityError, SdkError, first_line
from sdk.core.parity import compare
from sdk.core.recipes import Config, Int8Static, Tolerance
from sdk.core.results import FloatLayer, Unavailable, to_dict

if TYPE_CHECKING:
    from sdk.accuracy import AccuracyReport

log = logging.getLogger("sdk")

HOLDOUT_FRACTION = 0.2
MAX_SENSITIVITY_SAMPLES = 16
TOP_OFFENDERS = 10
DEFAULT_MAX_FALLBACK_LAYERS = 8
#: NNCF's default calibration `subset_size`; fewer samples set activation ranges less reliably
MIN_CALIBRATION_SAMPLES = 300


def split_calibration(config: Config, calibration: list[tuple] | None, eval_data: list[tuple] | None,
                      example_inputs: tuple, profile: DeviceProfile) -> tuple[list[tuple] | None, list[tuple], str]:
    """(calibration set, held-out set, where the held-out set came from)."""
    if isinstance(config, Int8Static) and not calibration:
        if "int8-dynamic" in profile.precisions:
            instead = "or use 'int8-dynamic', which quantizes activations at run time and needs none."
        else:
            others = [p for p in profile.precisions if p not in ("int8", "fp32")]
            instead = f"or use one of {', '.join(others)} ({profile.id} has no run-time activation quantization)."
        raise InvalidInputsError(
            f"static INT8 ({config}) for {profile.id} needs calibration data to set activation ranges: pass "
            f"calibration=<iterable of input tuples> (a DataLoader works; 100-500 real samples is typical), {instead}")
    if eval_data:
        return calibration, eval_data, f"eval_data ({len(eval_data)} samples)"
    if calibration and len(calibration) >= 2:
        kept, heldout = hold_out(calibration)
        return kept, heldout, f"last {len(heldout)} of {len(calibration)} calibration samples"
    return calibration, [example_inputs], "example_inputs only (no calibration data given)"


def hold_out(samples: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """(the first samples, the last HOLDOUT_FRACTION of them, at least one): the held-out checks' data when no
    eval_data is given."""
    cut = max(1, int(round(len(samples) * HOLDOUT_FRACTION)))
    return samples[:-cut], samples[-cut:]


def warn_small_calibration(config: Config, calibrated: list[tuple], given: int, profile: DeviceProfile) -> None:
    """Log a warning when static INT8 sets its activation ranges on fewer than MIN_CALIBRATION_SAMPLES samples
    (`calibrated`: what the quantizer gets after `split_calibration`; `given`: what the user passed)."""
    if config.activations != "int8-static" or len(calibrated) >= MIN_CALIBRATION_SAMPLES:
        return
    held = given - len(calibrated)
    log.warning("%s: static INT8 is calibrated on %d samples (%d given%s), fewer than %d (NNCF's default subset); "
                "its activation ranges may miss the data and accuracy may suffer: pass at least %d calibration "
                "samples", profile.id, len(calibrated), given,
                f", the last {held} held out for checks; eval_data= checks on other data instead" if held else "",
                MIN_CALIBRATION_SAMPLES, MIN_CALIBRATION_SAMPLES)


class HeldOutEvaluator:
    """Runs a staged model file on held-out inputs with the host runtime, or simulates when none exists."""

    def __init__(self, job: ConversionJob, heldout: Sequence[tuple], calibration: Sequence[tuple] | None,
                 tolerance: Tolerance):
        self.job, self.heldout, self.calibration = job, heldout, calibration or [job.example_inputs]
        self.tolerance = tolerance
        self.reference = [[t.float().numpy() for t in _flat(job.model(*x))] for x in heldout]
        backend = backends.get(job.profile.runtime)
        self.unavailable = backend.unavailable_reason()
        self.backend = backend

    def __call__(self, result: ConversionResult, keep_float: frozenset[str]) -> dict[str, Any]:
        if self.unavailable:
            weight_only = result.quantization.weight_only
            skip = set(keep_float) | toolchain_float_layers(result)  # simulate what the artifact holds
            outputs = [[t.numpy() for t in o] for o in simulate(self.job.model, self.job.precision, self.calibration,
                                                               self.heldout, skip, weight_only)]
            ran_on = (f"simulated in torch with fake-quant{' of weights only' if weight_only else ''} "
                      f"({self.job.profile.runtime} cannot run here: {self.unavailable})")
        else:
            outputs, ran_on = self._run(result, self.load_manifest(result))
        got = [np.concatenate([o[i].reshape(1, -1) if o[i].ndim < 2 else o[i] for o in outputs])
               for i in range(len(outputs[0]))]
        ref = [np.concatenate([r[i].reshape(1, -1) if r[i].ndim < 2 else r[i] for r in self.reference])
               for i in range(len(self.reference[0]))]
        return {"ran_on": ran_on, "samples": len(self.heldout), **compare(got, ref, self.tolerance.to_dict())}

    def load_manifest(self, result: ConversionResult) -> dict[str, Any]:
        """What a runtime needs to load the staged file (the bundle's manifest is written only after conversion)."""
        profile = self.job.profile
        return {"device": profile.id, "format": profile.format, "runtime": profile.runtime,
                "model_file": result.model_file, "inputs": _specs("in", self.job.example_inputs),
                "outputs": _specs("out", self.reference[0]),
                "runtime_options": {**profile.converter, **result.runtime_options}}

    def _run(self, result: ConversionResult, manifest: dict[str, Any]) -> tuple[list[list[np.ndarray]], str]:
        """The staged file's outputs on every held-out input; a runtime's own exception becomes a ConversionError."""
        profile = self.job.profile
        try:
            session = self.backend.load(self.job.workdir / result.model_file, manifest)
            return [session.run([t.numpy() for t in x]) for x in self.heldout], session.ran_on
        except SdkError:
            raise
        except Exception as exc:
            raise ConversionError(f"the converted {result.model_file} failed to run in {profile.runtime} on the "
                                  f"held-out inputs: {type(exc).__name__}: {first_line(exc)}", fmt=profile.format,
                                  device=profile.id, hint="try 'fp16' or another precision; report this with the "
                                  "model if the runtime should take it") from exc


def toolchain_float_layers(result: ConversionResult) -> set[str]:
    """Layers the converter reports as left in float (skipped by the toolchain or requested)."""
    return {layer.name for layer in result.quantization.float_layers}


def convert_quantized(converter: Converter, job: ConversionJob, *, tolerance: Tolerance, user_tolerance: bool,
                      heldout: list[tuple], heldout_source: str,
                      max_fallback_layers: int = DEFAULT_MAX_FALLBACK_LAYERS,
                      accuracy: Callable[[Path, dict[str, Any]], AccuracyReport] | None = None,
                      sensitivity: bool = False) -> tuple[ConversionResult, dict[str, Any]]:
    """Convert with the job's quantization config; keep the worst layers in float until `tolerance` (the user's,
    else the recipe's default) holds on every held-out input and, with `accuracy` (accuracy control: staged file,
    load manifest -> AccuracyReport), until the task metric's drop holds on the target's runtime. The held-out
    inputs decide, not the single example: one random tensor says little about the data the model meets.
    `job.keep_float` (the user's) stays float in every attempt. Per-layer sensitivity is measured once the first
    conversion misses (the fallback needs its ranking), or always with `sensitivity`: it runs the model once per
    quantizable layer on every sample, so a conversion that passes at once should not pay for it.

    Returns the last conversion (its account names the fallback's layers) and what this control measured
    (held-out parity, sensitivity, the fallback's steps), which the report adds beside the account."""
    config = job.precision
    calib = job.calibration or [job.example_inputs]
    evaluate = HeldOutEvaluator(job, heldout, job.calibration, tolerance)
    keep: list[str] = []
    steps: list[dict[str, Any]] = []
    ranking: list[dict[str, Any]] | None = None
    unexcludable: dict[str, str] = {}  # layers the toolchain could not keep in float on their own, and why
    result = parity = problems = None
    while True:
        _clear(job.workdir)
        attempt = replace(job, keep_float=job.keep_float | frozenset(keep))
        log.info("quantizing (%s) with %d layer(s) kept in float", config, len(keep))
        try:
            candidate = converter.convert(attempt)
        except ConversionError as exc:
            if not keep:
                raise
            unexcludable[keep.pop()] = str(exc)  # e.g. a module whose forward never runs on its own
        else:
            result = candidate
            parity = evaluate(result, attempt.keep_float)
            metric = accuracy(job.workdir / result.model_file, evaluate.load_manifest(result)) if accuracy else None
            missed_metric = _metric_misses(metric)
            problems = parity["failures"] + missed_metric
            cosines = (o["cosine"] for o in parity["outputs"])
            steps.append({"kept_float": list(keep), "min_cosine": _min_or_none(cosines),
                          "min_sqnr_db": _min_or_none(o["sqnr_db"] for o in parity["outputs"]), "met": not problems,
                          **({"metric_drop": _drop_record(metric)} if metric is not None else {})})
            if ranking is None and (problems or sensitivity):  # after the first conversion, which says whether
                log.info("measuring per-layer sensitivity to %s", config)  # activations were quantized
                ranking = layer_sensitivity(job.model, config, calib[:MAX_SENSITIVITY_SAMPLES],
                                            heldout[:MAX_SENSITIVITY_SAMPLES],
                                            weight_only=result.quantization.weight_only)
            if not problems:
                break
        skip = set(keep) | set(unexcludable) | toolchain_float_layers(result)
        remaining = [row["layer"] for row in ranking if row["layer"] not in skip]
        # Keeping the last quantized layer in float would leave nothing quantized: that is not an INT8 artifact.
        if len(remaining) <= 1 or len(keep) >= max_fallback_layers:
            _clear(job.workdir)
            if missed_metric:
                raise AccuracyError(
                    f"{job.profile.id}: {config} could not meet max_drop={metric.max_drop} on {metric.ran_on} even "
                    f"with {len(keep)} layer(s) kept in float ({', '.join(keep) or 'none'}); {'; '.join(problems)}. "
                    "No bundle was written. Try a gentler scheme (fp16, int8 instead of int4), more representative "
                    "calibration data, or a larger max_drop.",
                    {**metric.to_dict(), "control": {"kept_float": list(keep), "steps": steps,
                                                     "unexcludable": unexcludable}})
            whose = "" if user_tolerance else f" (the default for {config}: pass tolerance= to set your own)"
            reached = [s["min_cosine"] for s in steps if s["min_cosine"] is not None]  # None: NaN/Inf outputs
            raise ParityError(
                f"{job.profile.id}: {config} could not meet {tolerance}{whose} on held-out data ({heldout_source}) "
                f"even with {len(keep)} layer(s) kept in float ({', '.join(keep) or 'none'}); best reached: "
                f"{f'min cosine {max(reached):.6f}' if reached else 'no finite output'} ({'; '.join(problems)}). "
                "No bundle was written. "
                "Try a gentler scheme (int8 instead of int4, palettize with more bits), more representative "
                "calibration data, or a looser tolerance.", {"steps": steps, "unexcludable": unexcludable})
        keep.append(remaining[0])

    account = result.quantization
    floats = {entry.name: entry for entry in account.float_layers}
    goal = "the tolerance and max_drop" if accuracy else "the tolerance"
    for name in keep:  # the converter saw these as requested; say who requested them and why
        floats[name] = FloatLayer(name, f"kept in float by the fallback to meet {goal}")
    result.quantization = replace(account, float_layers=list(floats.values()))
    return result, {
        "config": config.to_string(),
        "heldout": {"source": heldout_source, **parity},
        "sensitivity": to_dict(Unavailable(
            f"not measured: the first conversion met {goal}, so no layer had to be chosen for float (pass "
            "sensitivity=True to sdk.export to measure it anyway)")) if ranking is None else {
            "method": "torch fake-quant of the same scheme, one layer at a time; sorted by model-output SQNR"
                      + (" (weights only, as the artifact keeps activations in float)" if account.weight_only else ""),
            "layers_measured": len(ranking), "worst": ranking[:TOP_OFFENDERS]},
        "fallback": {"tolerance": tolerance.to_dict(), "tolerance_from": "tolerance=" if user_tolerance else
                     f"the default for {config}",
                     "max_drop": metric.max_drop if accuracy else None,
                     "kept_float": keep, "steps": steps, "could_not_exclude": unexcludable},
        "quantizable_layers": len(quantizable_layers(job.model)),
    }


def _metric_misses(metric: AccuracyReport | None) -> list[str]:
    """Accuracy control's verdict as a problem line (none when met, or when the runtime cannot run here)."""
    if metric is None or metric.passed is not False:
        return []
    r = metric.result
    return [f"{r.metric} drop {r.value:.4g} (95% CI [{r.ci_low:.4g}, {r.ci_high:.4g}], n={r.candidate.n}) > "
            f"{metric.allowed_drop:.4g} allowed"]


def _drop_record(metric: AccuracyReport) -> dict[str, Any]:
    r = metric.result
    if r is None:
        return {"unavailable": metric.unavailable}
    return {"metric": r.metric, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "n": r.candidate.n,
            "allowed": metric.allowed_drop, "met": metric.passed}


def _min_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return min(values) if values else None


def _clear(workdir: Path) -> None:
    for item in workdir.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()


def _flat(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach()]
    return [t for o in out for t in _flat(o)]


def _specs(prefix: str, arrays) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}_{i}", "shape": list(a.shape),
             "dtype": str(a.numpy().dtype if hasattr(a, "numpy") else a.dtype)}
            for i, a in enumerate(arrays)]
