"""The task metric of an exported bundle, measured on its real runtime against the fp32 torch model.

`sdk.export(..., eval_data=labeled, metric="top1", max_drop=0.01)` calls `prepare` before converting (bad metric,
labels or max_drop fail before any long step) and `AccuracyCheck.run` on the staged bundle: every eval sample goes
through the runtime the device uses (backends/, as the agent runs it) and through the fp32 model; a drop beyond
`max_drop` raises AccuracyError, so no bundle is written. `measure` does the same for a bundle already on disk.

With a quantized recipe and `max_drop`, `AccuracyCheck.measure_file` is also the criterion of accuracy control
(sdk/quantization.py): the staged model file is measured after each conversion, and the most sensitive layers are
kept in float until the drop holds (NNCF's quantize_with_accuracy_control, on the target's runtime).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import backends
from sdk.core.metrics import (AccuracyError, Drop, DropResult, Metric, MetricError, MetricResult, drop, evaluate, get,
                              summary)

__all__ = ["AccuracyCheck", "AccuracyReport", "first_outputs", "measure", "prepare"]

log = logging.getLogger("sdk")


@dataclass(frozen=True)
class AccuracyReport:
    """fp32 vs artifact on `ran_on`, the drop with its 95% interval, and the verdict against `max_drop`
    (`passed` is None when no max_drop was given or the runtime cannot run here: `unavailable` says why)."""

    metric: str
    ran_on: str | None
    result: DropResult | None
    max_drop: str | None
    allowed_drop: float | None
    passed: bool | None
    unavailable: str | None = None
    fp32: MetricResult | None = None  # measured even where the artifact's runtime cannot run

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {"metric": self.metric, "ran_on": self.ran_on, "n": self.fp32.n if self.fp32 else None,
                "fp32": self.fp32.to_dict() if self.fp32 else None, "artifact": r.candidate.to_dict() if r else None,
                "drop": {"value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high, "relative": r.relative} if r
                else None, "max_drop": self.max_drop, "allowed_drop": self.allowed_drop, "passed": self.passed,
                "unavailable": self.unavailable}


@dataclass
class AccuracyCheck:
    """Labeled eval samples, read once (a one-shot iterator works), and what to measure on them."""

    metric: Metric
    max_drop: Drop | None
    inputs: list[tuple[torch.Tensor, ...]]
    labels: np.ndarray | None
    _fp32: tuple[torch.nn.Module, np.ndarray] | None = field(default=None, repr=False)  # control measures often

    def fp32_outputs(self, model: torch.nn.Module) -> np.ndarray:
        """The fp32 model's first output on every eval sample, computed once for the model last asked about."""
        if self._fp32 is None or self._fp32[0] is not model:
            with torch.no_grad():
                self._fp32 = model, np.stack([_first_tensor(model(*sample)).float().numpy() for sample in self.inputs])
        return self._fp32[1]

    def measure_file(self, model_path: Path, manifest: Mapping[str, Any], model: torch.nn.Module) -> AccuracyReport:
        """The metric of one model file on its runtime here (manifest: device, runtime, inputs, outputs,
        runtime_options), no refusal: `passed` says whether max_drop holds."""
        return _measure(self, model_path, manifest, model)

    def run(self, bundle_dir: Path, manifest: Mapping[str, Any], model: torch.nn.Module,
            measured: AccuracyReport | None = None) -> dict[str, Any]:
        """Measure the staged bundle (or take `measured`, accuracy control's last measurement of the same file);
        raise AccuracyError (with the numbers) when the drop misses max_drop."""
        try:
            report = measured or _measure(self, bundle_dir / manifest["model_file"], manifest, model)
        except AccuracyError as exc:  # NaN/Inf outputs or a NaN metric: say where, and that nothing was written
            raise AccuracyError(f"{manifest['device']} ({manifest['format']}, {', '.join(manifest['recipe'])}): "
                                f"{exc}. No bundle was written.") from exc
        if report.passed is False:
            r = report.result
            raise AccuracyError(
                f"{manifest['device']}: the {manifest['format']} artifact ({', '.join(manifest['recipe'])}) loses "
                f"more {r.metric} than max_drop={report.max_drop} allows ({report.allowed_drop:.4g}) on "
                f"{report.ran_on}: {summary(r)}. No bundle was written. Try a gentler recipe (fp32/fp16, int8 with "
                "tolerance= to keep sensitive layers in float), more calibration data, or a larger max_drop.",
                report.to_dict())
        return report.to_dict()


def prepare(eval_data: Iterable[Any] | None, example_inputs: Sequence[torch.Tensor],
            metric: str | Callable[..., float] | None, max_drop: float | Drop | None) -> AccuracyCheck | None:
    """Validate the metric, max_drop and eval data up front; None when no metric was asked for."""
    if metric is None:
        if max_drop is not None:
            raise MetricError("max_drop needs a metric to measure the drop on: add metric='top1' (or another "
                              "built-in name, or a callable (outputs, labels) -> float) and eval_data=")
        return None
    m = get(metric)
    limit = None if max_drop is None else Drop.of(max_drop)
    if eval_data is None:
        raise MetricError(f"metric={m.name!r} needs eval_data=: an iterable of (inputs..., label) samples")
    inputs, labels = _read(eval_data, example_inputs)
    if m.needs_labels and labels is None:
        raise MetricError(f"{m.name} needs labels: give eval_data items as (inputs..., label), one label per sample")
    return AccuracyCheck(m, limit, inputs, labels)


def measure(bundle_dir: str | Path, model: torch.nn.Module, eval_data: Iterable[Any],
            metric: str | Callable[..., float], max_drop: float | Drop | None = None) -> AccuracyReport:
    """The metric of a bundle on disk, on its runtime here, against the fp32 `model` (no refusal: see `passed`).

    >>> import sdk, torch
    >>> from sdk.accuracy import measure
    >>> model = torch.nn.Linear(4, 3).eval()
    >>> data = [(torch.randn(1, 4), torch.tensor([i % 3])) for i in range(30)]
    >>> res = sdk.export(model, "intel-cpu", data[0][:1], output_dir=tmp)
    >>> report = measure(res.artifact.path, model, data, "top1", max_drop=0.01)
    >>> report.passed, report.result.candidate.n
    (True, 30)
    """
    bundle_dir = Path(bundle_dir)
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    example = [torch.from_numpy(np.zeros(s["shape"], dtype=s["dtype"])) for s in manifest["inputs"]]
    return _measure(prepare(eval_data, example, metric, max_drop), bundle_dir / manifest["model_file"], manifest, model)


def _measure(check: AccuracyCheck, model_path: Path, manifest: Mapping[str, Any],
             model: torch.nn.Module) -> AccuracyReport:
    limit = str(check.max_drop) if check.max_drop else None
    fp32 = check.fp32_outputs(model)
    backend = backends.get(manifest["runtime"])
    reason = backend.unavailable_reason()
    if reason:
        log.warning("%s: %s not measured, the %s runtime cannot run here: %s", manifest["device"], check.metric.name,
                    manifest["runtime"], reason)
        return AccuracyReport(check.metric.name, None, None, limit, None, None,
                              unavailable=f"the {manifest['runtime']} runtime cannot run on this host: {reason}",
                              fp32=evaluate(check.metric, fp32, check.labels, fp32, "fp32 model"))
    session = backend.load(model_path, manifest)
    artifact = first_outputs(session, check.inputs)
    result = drop(check.metric, fp32, artifact.astype(fp32.dtype, copy=False), check.labels)
    allowed = check.max_drop.allowed(result.baseline.value) if check.max_drop else None
    passed = None if allowed is None else bool(result.value <= allowed)
    return AccuracyReport(check.metric.name, session.ran_on, result, limit, allowed, passed, fp32=result.baseline)


def first_outputs(session: Any, inputs: Sequence[tuple[torch.Tensor, ...]]) -> np.ndarray:
    """A runtime session's first output on every sample, stacked: what the metrics score."""
    return np.stack([session.run([t.numpy() for t in sample])[0] for sample in inputs])


def _first_tensor(value: Any) -> torch.Tensor:
    """The model's first output (metrics score the first output; order as in the manifest)."""
    while isinstance(value, (tuple, list)):
        if not value:
            raise MetricError("the model returned an empty tuple: nothing to score")
        value = value[0]
    if not isinstance(value, torch.Tensor):
        raise MetricError(f"the model's first output is a {type(value).__name__}, not a tensor")
    return value.detach().cpu()


def _unbatched(items: Iterable[Any], example_inputs: Sequence[torch.Tensor]) -> Iterator[tuple[Any, ...]]:
    """Items as tuples; a batch of B samples (a DataLoader's) is split into B items when the export has batch 1,
    since the exported graph's shapes are static."""
    batch_1 = all(t.dim() and t.shape[0] == 1 for t in example_inputs)
    for item in items:
        item = (item,) if isinstance(item, torch.Tensor) else tuple(item)
        sizes = {t.shape[0] for t in item if isinstance(t, torch.Tensor) and t.dim()}
        if batch_1 and len(sizes) == 1 and (size := sizes.pop()) > 1 and len(item) >= len(example_inputs):
            yield from (tuple(t[row:row + 1] if isinstance(t, torch.Tensor) and t.dim() else t for t in item)
                        for row in range(size))
        else:
            yield item


def _read(eval_data: Iterable[Any], example_inputs: Sequence[torch.Tensor]
          ) -> tuple[list[tuple[torch.Tensor, ...]], np.ndarray | None]:
    """(input tuples, stacked labels or None) from items shaped (inputs..., label)."""
    n_inputs = len(example_inputs)
    try:
        iterator = iter(eval_data)
    except TypeError:
        raise MetricError(f"eval_data must be an iterable of (inputs..., label), "
                          f"got {type(eval_data).__name__}") from None
    inputs, labels = [], []
    for i, item in enumerate(_unbatched(iterator, example_inputs)):
        sample = item[:n_inputs]
        if len(sample) < n_inputs or not all(isinstance(t, torch.Tensor) for t in sample):
            raise MetricError(f"eval_data item {i} must start with the model's {n_inputs} input tensor(s), then "
                              f"its label; got {len(item)} item(s)")
        for j, (got, want) in enumerate(zip(sample, example_inputs)):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise MetricError(f"eval_data item {i}, input {j}: shape {list(got.shape)} {got.dtype} differs from "
                                  f"example_inputs[{j}] {list(want.shape)} {want.dtype}; the exported graph has "
                                  "static shapes, so give samples of the example's shape (batch included)")
        if len(item) > n_inputs + 1:
            raise MetricError(f"eval_data item {i} has {len(item)} items: the model's {n_inputs} input(s) and one "
                              "label expected")
        inputs.append(tuple(t.detach().cpu() for t in sample))
        labels.append(item[n_inputs] if len(item) > n_inputs else None)
    if not inputs:
        raise MetricError("eval_data is empty: give at least one (inputs..., label) sample")
    missing = sum(label is None for label in labels)
    if missing and missing < len(labels):
        raise MetricError(f"{missing} of {len(labels)} eval_data items have no label: label every item or none")
    if missing:
        return inputs, None
    arrays = [label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
              for label in labels]
    if len({a.shape for a in arrays}) > 1:
        raise MetricError(f"eval_data labels have different shapes ({sorted({a.shape for a in arrays})}); "
                          "give every sample a label of the same shape")
    return inputs, np.stack(arrays)
