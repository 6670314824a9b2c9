"""Task metrics on labeled data, with confidence intervals, and the drop between two models. numpy only.

A metric scores a model's outputs over a whole evaluation set: `outputs[i]` is what the model returned for
sample `i` (its first output), `labels[i]` that sample's label, `reference[i]` the fp32 model's output (for
the metrics that compare against fp32). Each result carries `n` and a 95% interval, so a reader sees how much a
small set can say: Wilson's interval for proportions, a bootstrap with a fixed seed otherwise. A drop between
two results on the same samples gets a paired-bootstrap interval. NaN or Inf in any output fails, never passes.

>>> import numpy as np
>>> logits = np.array([[[2.0, 1.0, 0.0]], [[0.0, 3.0, 1.0]], [[1.0, 0.0, 4.0]], [[5.0, 0.0, 1.0]]])
>>> r = evaluate("top1", logits, labels=np.array([0, 1, 0, 0]))
>>> r.value, r.n, r.ci_low < r.value < r.ci_high
(0.75, 4, True)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sdk.core.errors import AccuracyError, MetricError

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "METRICS",
    "SEED",
    "AccuracyError",
    "Drop",
    "DropResult",
    "Metric",
    "MetricError",
    "MetricResult",
    "drop",
    "evaluate",
    "get",
    "spearman_rho",
    "summary",
    "wilson",
]

BOOTSTRAP_SAMPLES = 1000
SEED = 0
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Metric:
    """A named score. `items` gives one score per item (a sample, an image in a batch, a token) whose mean, or
    exp(mean) for perplexity, is the value; `score` is a whole-set function (Spearman, any user callable)."""

    name: str
    higher_is_better: bool = True
    needs_labels: bool = True
    needs_reference: bool = False
    items: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], np.ndarray] | None = None
    score: Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], float] | None = None
    proportion: bool = False
    exp_mean: bool = False

    def value(self, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> float:
        if self.items is None:
            return float(self.score(outputs, labels, reference))
        return _aggregate(self, np.mean(self.items(outputs, labels, reference)))


@dataclass(frozen=True)
class MetricResult:
    """One metric on one model over `n` items, with its 95% interval (`ci_method`: wilson or bootstrap)."""

    name: str
    value: float
    n: int
    ci_low: float
    ci_high: float
    ci_method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DropResult:
    """How much worse `candidate` is than `baseline` (positive = worse, whatever the metric's direction), with a
    paired-bootstrap 95% interval over the same items; `relative` is the drop over |baseline|."""

    metric: str
    baseline: MetricResult
    candidate: MetricResult
    value: float
    ci_low: float
    ci_high: float
    relative: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "baseline": self.baseline.to_dict(), "candidate": self.candidate.to_dict()}


@dataclass(frozen=True)
class Drop:
    """The largest drop an export may have: `absolute` in the metric's units, or `relative` to the fp32 value.

    >>> Drop(relative=0.01).allowed(0.9)
    0.009
    """

    absolute: float | None = None
    relative: float | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.absolute, self.relative) if v is not None]
        if len(given) != 1:
            raise MetricError("sdk.Drop takes exactly one of absolute= or relative=, e.g. sdk.Drop(relative=0.01)")
        if not (math.isfinite(given[0]) and given[0] >= 0):
            raise MetricError(f"a max drop must be a finite number >= 0, got {given[0]!r}")

    @classmethod
    def of(cls, max_drop: float | Drop) -> Drop:
        """`max_drop` as given to sdk.export: a plain number is absolute."""
        if isinstance(max_drop, Drop):
            return max_drop
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)):
            raise MetricError(f"max_drop must be a number (absolute) or sdk.Drop(relative=...), got {max_drop!r}")
        return cls(absolute=float(max_drop))

    def allowed(self, baseline: float) -> float:
        """The allowed absolute drop for a model whose fp32 value is `baseline`."""
        return self.absolute if self.absolute is not None else round(self.relative * abs(baseline), 12)

    def __str__(self) -> str:
        return f"{self.absolute:g}" if self.absolute is not None else f"{self.relative:g} of the fp32 value"


# --- the built-in metrics ---

def _logits(outputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class scores as (items, classes) and labels as (items,): every sample may hold a batch."""
    scores = outputs.reshape(-1, outputs.shape[-1])
    flat = labels.reshape(-1)
    if len(scores) != len(flat):
        raise MetricError(f"the outputs hold {len(scores)} score vector(s) of {outputs.shape[-1]} classes but the "
                          f"labels hold {len(flat)} label(s); give one class index per row of the model's output")
    if not np.issubdtype(flat.dtype, np.integer) or flat.min() < 0 or flat.max() >= scores.shape[1]:
        raise MetricError(f"labels must be class indices in [0, {scores.shape[1]}), got {flat.dtype} values "
                          f"from {flat.min()} to {flat.max()}")
    return scores, flat


def _topk(k: int) -> Callable[[np.ndarray, np.ndarray | None, np.ndarray | None], np.ndarray]:
    def items(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> np.ndarray:
        scores, flat = _logits(outputs, labels)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.any(top == flat[:, None], axis=1).astype(np.float64)
    return items


def _agreement(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> np.ndarray:
    return (outputs.reshape(-1, outputs.shape[-1]).argmax(1)
            == reference.reshape(-1, reference.shape[-1]).argmax(1)).astype(np.float64)


def _cosine(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray) -> np.ndarray:
    """Per-sample cosine with the fp32 output; two all-zero vectors agree, one all-zero vector does not."""
    a = outputs.reshape(len(outputs), -1).astype(np.float64)
    b = reference.reshape(len(reference), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = ~a.any(axis=1) & ~b.any(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(norms > 0, np.einsum("ij,ij->i", a, b) / np.where(norms > 0, norms, 1), 0.0)
    return np.where(both_zero, 1.0, np.clip(cos, -1.0, 1.0))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank), as Spearman's coefficient wants."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation; NaN when either side is constant (then it cannot rank anything)."""
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(np.dot(rx, rx) * np.dot(ry, ry)))
    return float(np.dot(rx, ry) / denom) if denom > 0 else math.nan


def _spearman(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> float:
    """Each sample's output holds the embeddings of a sentence pair as a batch of two: (2, dim)."""
    pairs = outputs.reshape(len(outputs), -1, outputs.shape[-1])
    if pairs.shape[1] != 2:
        raise MetricError(f"spearman wants each sample's output to be the two sentences' embeddings as a batch of 2, "
                          f"shape (2, dim); got {list(outputs.shape[1:])}")
    sims = _cosine(pairs[:, 0], None, pairs[:, 1])
    return spearman_rho(sims, labels.reshape(len(outputs), -1)[:, 0])


def _token_nll(outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> np.ndarray:
    """Negative log-likelihood of each target token under the logits (vocabulary last)."""
    logits = outputs.reshape(-1, outputs.shape[-1]).astype(np.float64)
    targets = labels.reshape(-1)
    if len(logits) != len(targets):
        raise MetricError(f"perplexity wants one target token per logits row: {len(logits)} rows, "
                          f"{len(targets)} targets")
    peak = logits.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
    return log_z - logits[np.arange(len(targets)), targets.astype(np.int64)]


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("top1", items=_topk(1), proportion=True),
    Metric("top5", items=_topk(5), proportion=True),
    Metric("agreement", needs_labels=False, needs_reference=True, items=_agreement, proportion=True),
    Metric("token_agreement", needs_labels=False, needs_reference=True, items=_agreement, proportion=True),
    Metric("cosine", needs_labels=False, needs_reference=True, items=_cosine),
    Metric("spearman", score=_spearman),
    Metric("perplexity", higher_is_better=False, items=_token_nll, exp_mean=True),
)}


def get(metric: str | Callable[..., float] | Metric) -> Metric:
    """A built-in metric by name, or a user's callable `(outputs, labels) -> float` (higher is better)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in METRICS:
            raise MetricError(f"unknown metric {metric!r}; built-in metrics: {', '.join(METRICS)}, "
                              "or pass a callable (outputs, labels) -> float")
        return METRICS[metric]
    if callable(metric):
        name = getattr(metric, "__name__", type(metric).__name__)
        return Metric(name, score=lambda outputs, labels, reference: metric(outputs, labels))
    raise MetricError(f"metric must be a name ({', '.join(METRICS)}) or a callable (outputs, labels) -> float, "
                      f"got {type(metric).__name__}")


# --- values and intervals ---

def _aggregate(metric: Metric, mean: np.ndarray | float) -> np.ndarray | float:
    return np.exp(mean) if metric.exp_mean else mean


def _check(metric: Metric, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None,
           who: str) -> None:
    if not len(outputs):
        raise MetricError(f"{metric.name}: no samples to evaluate")
    for arr, what in ((outputs, f"the {who} outputs"), (reference, "the fp32 reference outputs")):
        if arr is not None and np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr.reshape(len(arr), -1))).any(axis=1).sum())
            raise AccuracyError(f"{metric.name}: {what} hold NaN or Inf on {bad} of {len(arr)} samples, so the "
                                "metric cannot be measured (a NaN never passes); check the model and its inputs")
    if metric.needs_labels and labels is None:
        raise MetricError(f"{metric.name} needs labels: give eval_data items as (inputs..., label)")
    if metric.needs_reference and reference is None:
        raise MetricError(f"{metric.name} compares against the fp32 outputs: pass reference=")
    if labels is not None and len(labels) != len(outputs):
        raise MetricError(f"{metric.name}: {len(outputs)} outputs but {len(labels)} labels")


def _finite(metric: Metric, value: float, who: str) -> float:
    if not math.isfinite(value):
        raise AccuracyError(f"{metric.name} of the {who} is {value} (not a number), so it cannot pass any check")
    return float(value)


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion: honest at small n and near 0 or 1, unlike the normal one.

    >>> [round(v, 3) for v in wilson(20, 20)]
    [0.839, 1.0]
    """
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _resamples(n: int) -> np.ndarray:
    return np.random.default_rng(SEED).integers(0, n, size=(BOOTSTRAP_SAMPLES, n))


def _bootstrap(metric: Metric, outputs: np.ndarray, labels: np.ndarray | None,
               reference: np.ndarray | None) -> np.ndarray:
    """The metric over BOOTSTRAP_SAMPLES resamples (same seed, so two models get the same resamples)."""
    if metric.items is not None:
        items = metric.items(outputs, labels, reference)
        return np.asarray(_aggregate(metric, items[_resamples(len(items))].mean(axis=1)))
    return np.array([metric.score(outputs[idx], None if labels is None else labels[idx],
                                  None if reference is None else reference[idx]) for idx in _resamples(len(outputs))])


def _interval(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def evaluate(metric: str | Callable[..., float] | Metric, outputs: np.ndarray, labels: np.ndarray | None = None,
             reference: np.ndarray | None = None, who: str = "model") -> MetricResult:
    """The metric over all samples with its 95% interval; NaN/Inf outputs raise AccuracyError."""
    m = get(metric)
    outputs = np.asarray(outputs)
    _check(m, outputs, labels, reference, who)
    value = _finite(m, m.value(outputs, labels, reference), who)
    if m.proportion:
        items = m.items(outputs, labels, reference)
        n = len(items)
        low, high = wilson(float(items.sum()), n)
        method = "wilson"
    else:
        n = len(m.items(outputs, labels, reference)) if m.items is not None else len(outputs)
        low, high = _interval(_bootstrap(m, outputs, labels, reference))
        method = "bootstrap"
    return MetricResult(m.name, value, n, min(low, value), max(high, value), method)


def drop(metric: str | Callable[..., float] | Metric, baseline: np.ndarray, candidate: np.ndarray,
         labels: np.ndarray | None = None, reference: np.ndarray | None = None) -> DropResult:
    """How much `candidate`'s outputs lose against `baseline`'s on the same samples, with a paired-bootstrap
    interval (both resampled with the same indices). For reference metrics `reference` is the fp32 output.

    >>> import numpy as np
    >>> labels = np.arange(10) % 3
    >>> good = np.eye(3)[labels][:, None]
    >>> bad = good.copy(); bad[:2] = np.eye(3)[(labels[:2] + 1) % 3][:, None]
    >>> d = drop("top1", good, bad, labels)
    >>> round(d.value, 2), d.ci_low <= d.value <= d.ci_high
    (0.2, True)
    """
    m = get(metric)
    base_ref = baseline if m.needs_reference and reference is None else reference
    base = evaluate(m, baseline, labels, base_ref, "fp32 model")
    cand = evaluate(m, candidate, labels, base_ref, "artifact")
    sign = 1.0 if m.higher_is_better else -1.0
    paired = sign * (_bootstrap(m, np.asarray(baseline), labels, base_ref)
                     - _bootstrap(m, np.asarray(candidate), labels, base_ref))
    value = sign * (base.value - cand.value)
    low, high = _interval(paired)
    relative = value / abs(base.value) if base.value else None
    return DropResult(m.name, base, cand, value, min(low, value), max(high, value), relative)


def summary(result: DropResult) -> str:
    """One line a person reads: both values with their intervals, the drop with its interval and n."""
    b, c = result.baseline, result.candidate
    return (f"{result.metric} fp32 {b.value:.4g} [{b.ci_low:.4g}, {b.ci_high:.4g}] vs artifact {c.value:.4g} "
            f"[{c.ci_low:.4g}, {c.ci_high:.4g}], drop {result.value:.4g} (95% CI {result.ci_low:.4g} to "
            f"{result.ci_high:.4g}) on n={c.n}")
