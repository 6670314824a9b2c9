"""The accuracy of one candidate, computed through the artifact's real runtime (the one place to swap for
`sdk.metrics` once it lands).

Every eval sample is run one at a time through `backends.load(bundle)`, the runtime the device uses, and its
first output's argmax is the prediction. `top1` compares it with the sample's label, `agreement` with the fp32
torch model's own prediction. Intervals: Wilson 95% for a metric, a paired bootstrap for a drop.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import backends
from sdk.core.errors import InvalidInputsError, UserInputError

__all__ = ["METRICS", "EvalSet", "MetricValue", "drop_between", "eval_set", "evaluate"]

METRICS = ("top1", "agreement")


@dataclass(frozen=True)
class EvalSet:
    """Batch-1 input tuples (as numpy), their labels (None when unlabeled) and the fp32 model's predictions."""

    inputs: list[list[np.ndarray]]
    labels: np.ndarray | None
    reference: np.ndarray

    def head(self, n: int) -> EvalSet:
        return EvalSet(self.inputs[:n], None if self.labels is None else self.labels[:n], self.reference[:n])


@dataclass(frozen=True)
class MetricValue:
    """A metric on `n` samples with its 95% interval; `per_sample` is each sample's 0/1 score."""

    name: str
    value: float
    n: int
    ci: tuple[float, float]
    per_sample: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "n": self.n, "ci95": list(self.ci)}


def _wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n)))


def _top1(outputs: Any) -> np.ndarray:
    first = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    return np.asarray(first.detach() if isinstance(first, torch.Tensor) else first).reshape(len(first), -1).argmax(-1)


def eval_set(model: torch.nn.Module, eval_data: Iterable[Any], example_inputs: Sequence[torch.Tensor],
             metric: str) -> EvalSet:
    """Split `eval_data` ((inputs..., label) batches, a DataLoader works) into batch-1 samples, as exported."""
    if metric not in METRICS:
        raise UserInputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if any(t.shape[0] != 1 for t in example_inputs):
        raise InvalidInputsError("sdk.optimize evaluates one sample at a time: example_inputs must have batch size 1")
    n_in = len(example_inputs)
    inputs, labels = [], []
    for i, item in enumerate(eval_data):
        item = (item,) if isinstance(item, torch.Tensor) else tuple(item)
        if metric == "top1" and len(item) <= n_in:
            raise InvalidInputsError(f"eval_data[{i}] has no label: metric='top1' needs (inputs..., label) batches; "
                                     "use metric='agreement' for unlabeled data")
        batch = item[:n_in]
        for row in range(batch[0].shape[0]):
            inputs.append([t[row:row + 1].detach().cpu().float().numpy() for t in batch])
            if metric == "top1":
                labels.append(int(item[n_in][row]))
    if not inputs:
        raise InvalidInputsError("eval_data is empty")
    with torch.no_grad():
        reference = np.array([int(_top1(model(*(torch.from_numpy(a) for a in x)))[0]) for x in inputs])
    return EvalSet(inputs, np.array(labels) if labels else None, reference)


def evaluate(bundle: str | Path, data: EvalSet, metric: str) -> MetricValue:
    """`metric` of the bundle at `bundle`, run here through its own runtime."""
    session = backends.load(bundle)
    predictions = np.array([int(_top1(session.run(x))[0]) for x in data.inputs])
    target = data.labels if metric == "top1" else data.reference
    scores = (predictions == target).astype(np.float64)
    return MetricValue(metric, float(scores.mean()), len(scores), _wilson(int(scores.sum()), len(scores)), scores)


def drop_between(baseline: MetricValue, candidate: MetricValue, resamples: int = 2000,
                 seed: int = 0) -> tuple[float, tuple[float, float]]:
    """baseline - candidate on the same samples, with a 95% paired-bootstrap interval."""
    n = min(baseline.n, candidate.n)
    diff = baseline.per_sample[:n] - candidate.per_sample[:n]
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    boots = diff[idx].mean(axis=1)
    return float(diff.mean()), (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
