"""The export pipeline behind `sdk.export`: model + device name in, validated artifact bundle and report out."""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

import converters
from converters import driver
from converters.base import ConversionJob
from converters.passes.metrics import count_macs, count_params
from sdk import accuracy, bundle_fs, explain, hf, preflight, quantization, report_html
from sdk.core.bundle import Artifact, BundleWriter, load_artifact
from sdk.core.errors import InvalidInputsError, ParityError
from sdk.devices import DeviceProfile
from sdk.core.metrics import Drop
from sdk.progress import with_progress
from sdk import devices
from sdk.core import recipes
from sdk.report import build_report
from sdk.validate import validate_bundle

__all__ = ["export", "ExportResult"]

log = logging.getLogger("sdk")
MAX_CALIBRATION_SAMPLES = 512


@dataclass
class ExportResult:
    """What `sdk.export` returns: the bundle on disk and its report (also in report.json)."""

    artifact: Artifact
    report: dict[str, Any]

    def __repr__(self) -> str:
        parity = self.report.get("parity", {})
        return (f"ExportResult(device={self.artifact.device!r}, format={self.artifact.format!r}, "
                f"path='{self.artifact.path}', size={self.artifact.size_bytes} B, parity_passed={parity.get('passed')})")

    def _repr_html_(self) -> str:
        return report_html.card(self.report, self.artifact.path)


@with_progress
def export(model: torch.nn.Module, device: str | DeviceProfile, example_inputs: Sequence[torch.Tensor] | None = None, *,
           recipe: str | recipes.Config | Sequence[str | recipes.Config] | None = None,
           calibration: Iterable[Any] | None = None, tolerance: recipes.Tolerance | None = None,
           output_dir: str | Path = "out", validate: bool | str = True,
           eval_data: Iterable[Any] | None = None, task: str | None = None, max_seq_len: int = 512,
           tokenizer: Any = None, metric: str | Callable[..., float] | None = None,
           max_drop: float | Drop | None = None, keep_float: Iterable[str] = (),
           sensitivity: bool = False) -> ExportResult:
    """Compress, convert and validate `model` for `device`; write the bundle to `<output_dir>/<device-id>/`.

    `recipe` is a list of configs or their strings (default: the profile's default recipe);
    `calibration` an iterable of input tuples (a DataLoader works); quantized recipes are checked on
    `eval_data`, else on the last 20% of `calibration`: the most sensitive layers are kept in float until
    `tolerance` (default: the recipe's, e.g. min cosine 0.99 for int8) holds on every one of those held-out
    inputs, else ParityError and no bundle. `keep_float` names modules (as model.named_modules() lists them)
    a quantized recipe leaves in float on purpose; a scheme that leaves most weight layers float unasked is
    refused. Per-layer sensitivity (torch fake-quant, one layer at a time) is measured only when the first
    conversion misses and the fallback must choose layers; `sensitivity=True` measures it for the report anyway
    (the HTML report's sensitivity chart). `validate` is True (run the bundle here, where its runtime
    exists), False (skip; the report says so) or an agent URL. A Hugging Face model takes `task=` (see sdk.hf),
    which builds example_inputs from its config when none are given. `progress=True` shows the stage, the time so
    far and an estimate on stderr.
    With `metric`, labeled `eval_data` ((inputs..., label) items) runs through the artifact's runtime here and
    the fp32 model: the report's "accuracy" has both values and the drop with 95% intervals; a drop beyond
    `max_drop` (absolute, or sdk.Drop(relative=...)) refuses the export (sdk/accuracy.py). With a quantized
    recipe, accuracy control first keeps the most sensitive layers in float until the drop holds on the runtime.

    >>> import sdk, torch
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval()
    >>> res = sdk.export(model, "jetson", (torch.randn(1, 3, 32, 32),), output_dir=tmp)
    >>> res.artifact.path.name, res.report["parity"]["passed"]
    ('jetson-orin-nano', True)

    `task="text-generation"` exports a causal LM (no `example_inputs`) with a static KV cache of `max_seq_len`
    positions; `calibration`/`eval_data` are texts (with `tokenizer`) or token-id lists; see docs/llm.md.
    """
    if task == "text-generation":
        return _export_text_generation(model, device, recipe=recipe, calibration=calibration, eval_data=eval_data,
                            max_seq_len=max_seq_len, output_dir=output_dir, validate=validate, tokenizer=tokenizer)
    started = time.perf_counter()
    profile = preflight.check_export(device, recipe=recipe, calibration=calibration, tolerance=tolerance,
                                     output_dir=output_dir, validate=validate)  # torch-free checks, before the model
    bundle_fs.clean_stale_partials(output_dir, profile.id)  # left by a killed export
    model, example_inputs, task_info = hf.prepare(model, example_inputs, task)
    inputs = _check_inputs(model, example_inputs)
    original = copy.deepcopy(model).eval()  # never change the caller's model (mode, weights)
    as_linear = hf.conv1d_as_linear(original)  # GPT-2's Conv1D as nn.Linear, which every quantizer takes
    reference_out = _run_model(original, inputs, check=True)
    plan = recipes.resolve(profile, recipe)
    converter = converters.get(profile.format)
    driver.check_target(converter, profile, plan.precision)  # refuse before any long pass
    keep_float = frozenset([keep_float] if isinstance(keep_float, str) else keep_float)
    if keep_float and not plan.precision.quantizes:
        raise InvalidInputsError(f"keep_float={sorted(keep_float)} names layers for a quantized recipe to leave in "
                                 f"float, but {plan.precision} quantizes no layer: drop keep_float, or add one of "
                                 f"{profile.id}'s precisions to the recipe ({', '.join(profile.precisions)})")
    tol = plan.tolerance(tolerance)
    calib = _materialize_calibration(calibration, inputs, "calibration")
    accuracy_check = accuracy.prepare(eval_data, inputs, metric, max_drop)
    eval_data = accuracy_check.inputs if accuracy_check else eval_data  # read once: it may be a one-shot iterator
    evaluation = _materialize_calibration(eval_data, inputs, "eval_data")
    split = None  # (calibration, held-out, where the held-out came from), for quantized recipes
    if plan.precision.quantizes:  # fail early, before any long pass, if static INT8 has no calibration data; warn if it has few
        split = quantization.split_calibration(plan.precision, calib, evaluation, inputs, profile)
        quantization.warn_small_calibration(plan.precision, split[0] or [], len(calib or []), profile)

    model_info = {"params": count_params(original), "macs": count_macs(original, inputs)}
    timings: dict[str, float] = {}

    passes_report = None
    student = original
    if plan.passes:
        from converters.passes import apply as apply_passes

        log.info("applying passes: %s", ", ".join(map(str, plan.passes)))
        t0 = time.perf_counter()
        student, passes_report = apply_passes(original, list(plan.passes), example_inputs=inputs, calibration=calib)
        student = student.eval()
        timings["passes_s"] = time.perf_counter() - t0
        reference_out = _run_model(student, inputs)
        model_info |= {"params_after_passes": count_params(student), "macs_after_passes": count_macs(student, inputs)}

    with BundleWriter(output_dir, profile.id) as writer:
        log.info("converting for %s (%s, %s)", profile.id, profile.format, plan.precision)
        t0 = time.perf_counter()
        job = ConversionJob(model=student, example_inputs=inputs, recipe=plan, profile=profile, workdir=writer.staging,
                            input_names=[f"in_{i}" for i in range(len(inputs))],
                            output_names=[f"out_{i}" for i in range(len(reference_out))], calibration=calib,
                            keep_float=keep_float)
        controlled: list[accuracy.AccuracyReport] = []  # accuracy control's measurements; the last is the file's
        quant_control = None  # what the quantization driver measured (held-out parity, sensitivity, fallback)
        if split is not None:
            job.calibration, heldout, source = split
            control = None
            if accuracy_check and accuracy_check.max_drop:  # accuracy control: the metric on the runtime decides
                def control(path: Path, load_manifest: dict[str, Any]) -> accuracy.AccuracyReport:
                    controlled.append(accuracy_check.measure_file(path, load_manifest, original))
                    return controlled[-1]
            result, quant_control = quantization.convert_quantized(
                converter, job, tolerance=tol, user_tolerance=tolerance is not None, heldout=heldout,
                heldout_source=source, accuracy=control, sensitivity=sensitivity)
        else:
            result = converter.convert(job)
        timings["convert_s"] = time.perf_counter() - t0
        if as_linear:
            result.notes.append(f"{len(as_linear)} Hugging Face Conv1D layer(s) ({', '.join(as_linear[:3])}"
                                f"{', ...' if len(as_linear) > 3 else ''}) exported as the equivalent nn.Linear "
                                "(weight transposed, outputs identical), the form every toolchain's quantizer takes")

        np_inputs = [t.detach().cpu().numpy() for t in inputs]
        np_outputs = [t.detach().cpu().numpy() for t in reference_out]
        writer.write_reference(np_inputs, np_outputs)
        manifest = writer.write_manifest(
            device=profile.id, fmt=profile.format, runtime=profile.runtime, model_file=result.model_file,
            inputs=np_inputs, outputs=np_outputs, recipe=plan,
            runtime_options={**profile.converter, **result.runtime_options},
            extra={"tolerance": tol.to_dict(), **task_info})

        log.info("validating %s", profile.id)
        t0 = time.perf_counter()
        validation = validate_bundle(writer.staging, validate, tol)
        timings["validate_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - started

        artifact = load_artifact(writer.staging)
        report = build_report(profile=profile, plan=plan, manifest=manifest, artifact=artifact, model_info=model_info,
                              conversion=result, quant_control=quant_control, validation=validation,
                              passes=passes_report, timings=timings)
        parity = report["parity"]
        if parity.get("passed") is False:
            raise ParityError(explain.parity_failure(report), parity)
        if accuracy_check:
            report["accuracy"] = accuracy_check.run(writer.staging, manifest, original,
                                                    measured=controlled[-1] if controlled else None)
            fallback = (report.get("quantization") or {}).get("fallback") or {}
            if fallback.get("max_drop"):
                report["accuracy"]["control"] = {"kept_float": fallback["kept_float"], "steps": fallback["steps"]}
        writer.write_report(report)
        report_html.write(writer.staging, report, manifest)
        final = writer.commit()
        bundle_fs.apply_umask(final)
    log.info("bundle written to %s", final)
    return ExportResult(artifact=load_artifact(final), report=report)


def _export_text_generation(model: Any, device: str | DeviceProfile, **kwargs: Any) -> ExportResult:
    """Hook for causal LMs: a static-KV-cache decoder, not a single-call graph (the work lives in converters/llm)."""
    from sdk.llm.export import export_llm

    artifact, report = export_llm(model, devices.get(device), **kwargs)
    return ExportResult(artifact=artifact, report=report)


def _check_inputs(model: Any, example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if not isinstance(model, torch.nn.Module):
        raise InvalidInputsError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise InvalidInputsError("example_inputs is required: a tuple of tensors the model is called with, "
                                 "e.g. example_inputs=(torch.randn(1, 3, 224, 224),)")
    if isinstance(example_inputs, torch.Tensor):
        raise InvalidInputsError("example_inputs must be a tuple of tensors, got a single tensor; wrap it: (x,)")
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise InvalidInputsError(f"example_inputs must be a non-empty tuple of tensors, got {type(example_inputs).__name__}")
    bad = [i for i, t in enumerate(example_inputs) if not isinstance(t, torch.Tensor)]
    if bad:
        raise InvalidInputsError(f"example_inputs[{bad[0]}] is a {type(example_inputs[bad[0]]).__name__}, not a tensor; "
                                 "every model input must be a tensor (pass constants as module attributes)")
    return tuple(t.detach().cpu() for t in example_inputs)


def _flatten(value: Any, path: str = "output") -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for i, v in enumerate(value) for t in _flatten(v, f"{path}[{i}]")]
    raise InvalidInputsError(f"{path} is a {type(value).__name__}; models must return tensors or (nested) tuples of tensors")


def _run_model(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], check: bool = False) -> list[torch.Tensor]:
    """The model's outputs, flattened; with `check`, a failing forward is reported as bad example_inputs."""
    try:
        with torch.no_grad():
            outputs = model(*inputs)
    except Exception as exc:
        if not check:
            raise
        shapes = ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in inputs)
        raise InvalidInputsError(f"the model does not accept example_inputs ({shapes}): "
                                 f"{type(exc).__name__}: {exc}") from exc
    return [t.detach().float() if t.is_floating_point() else t.detach() for t in _flatten(outputs)]


def _materialize_calibration(calibration: Iterable[Any] | None, example_inputs: tuple[torch.Tensor, ...],
                             what: str) -> list[tuple[torch.Tensor, ...]] | None:
    """Turn any iterable of input tuples (or a DataLoader of (x, label) batches) into a list of input tuples."""
    if calibration is None:
        return None
    n_inputs = len(example_inputs)
    samples: list[tuple[torch.Tensor, ...]] = []
    try:
        iterator = iter(calibration)
    except TypeError:
        raise InvalidInputsError(f"{what} must be an iterable of input tuples, got {type(calibration).__name__}") from None
    for i, item in enumerate(iterator):
        if len(samples) >= MAX_CALIBRATION_SAMPLES:
            break
        item = (item,) if isinstance(item, torch.Tensor) else tuple(item)
        if len(item) < n_inputs or not all(isinstance(t, torch.Tensor) for t in item[:n_inputs]):
            raise InvalidInputsError(f"{what} item {i} must hold {n_inputs} tensor(s) (the model's inputs, "
                                     f"extra items such as labels are ignored), got {len(item)} item(s)")
        sample = tuple(t.detach().cpu() for t in item[:n_inputs])
        for j, (got, want) in enumerate(zip(sample, example_inputs)):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise InvalidInputsError(
                    f"{what} item {i}, input {j}: shape {list(got.shape)} {str(got.dtype).replace('torch.', '')} differs "
                    f"from example_inputs[{j}] {list(want.shape)} {str(want.dtype).replace('torch.', '')}; the exported "
                    "graph has static shapes, so give samples of the example's shape (batch included)")
        samples.append(sample)
    if not samples:
        raise InvalidInputsError(f"{what} is empty: give at least one input tuple")
    return samples
