"""The accuracy of one candidate, through the artifact's real runtime, with the metrics `sdk.export` uses.

Eval data is read as `sdk.export(eval_data=...)` reads it (sdk/accuracy.py: (inputs..., label) items of the
example's shape; a batch is split into batch-1 samples when the export has batch 1), so every built-in metric
(top1, top5, agreement, cosine, spearman, ...) or a callable works. The drop between two artifacts on the same
samples has a paired-bootstrap 95% interval (sdk/core/metrics.py).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import backends
from sdk.accuracy import first_outputs, prepare
from sdk.core.metrics import DropResult, Metric, MetricResult, drop, evaluate

__all__ = ["EvalSet", "drop_between", "eval_set", "outputs", "score"]


@dataclass(frozen=True)
class EvalSet:
    """Eval samples (input tuples at the exported shape), their labels (None when unlabeled) and the fp32 torch
    model's first output on each (the reference of agreement/cosine)."""

    metric: Metric
    inputs: list[tuple[torch.Tensor, ...]]
    labels: np.ndarray | None
    reference: np.ndarray

    @property
    def n(self) -> int:
        return len(self.inputs)

    def head(self, n: int) -> EvalSet:
        return EvalSet(self.metric, self.inputs[:n], None if self.labels is None else self.labels[:n],
                       self.reference[:n])


def eval_set(model: torch.nn.Module, eval_data: Iterable[Any], example_inputs: Sequence[torch.Tensor],
             metric: str | Callable[..., float]) -> EvalSet:
    """Read `eval_data` once and compute the fp32 model's outputs on it."""
    check = prepare(eval_data, example_inputs, metric, None)
    return EvalSet(check.metric, check.inputs, check.labels, check.fp32_outputs(model))


def outputs(bundle: str | Path, inputs: Sequence[tuple[torch.Tensor, ...]]) -> np.ndarray:
    """The bundle's first output on every sample, run here through its own runtime."""
    return first_outputs(backends.load(bundle), inputs)


def _reference(data: EvalSet) -> np.ndarray | None:
    return data.reference[:len(data.inputs)] if data.metric.needs_reference else None


def score(data: EvalSet, out: np.ndarray) -> MetricResult:
    """The metric of one artifact's outputs, with its 95% interval."""
    return evaluate(data.metric, out, data.labels, _reference(data), "fp32 export")


def drop_between(data: EvalSet, baseline: np.ndarray, candidate: np.ndarray) -> DropResult:
    """baseline - candidate (positive = worse) on the same samples, with a 95% paired-bootstrap interval."""
    return drop(data.metric, baseline, candidate, data.labels, _reference(data))
