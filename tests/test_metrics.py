"""Metric math (sdk/core/metrics.py): values, intervals, paired drops, and NaN/Inf that never pass."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sdk.core import metrics
from sdk.core.metrics import AccuracyError, Drop, MetricError, drop, evaluate, wilson


def _onehot(labels: np.ndarray, classes: int = 10) -> np.ndarray:
    """Logits that pick `labels`, one sample of batch 1 each: shape (n, 1, classes)."""
    return np.eye(classes)[labels][:, None] + 0.01 * np.arange(classes)


def test_top1_and_top5_count_hits():
    logits = np.array([[0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.4]] * 2)[:, None]
    assert evaluate("top1", logits, np.array([3, 1])).value == 0.5
    assert evaluate("top5", logits, np.array([3, 0])).value == 0.5  # 0 is rank 6 of 7
    assert evaluate("top5", logits, np.array([2, 6])).value == 1.0


def test_batched_samples_score_every_row():
    """A DataLoader-style sample holds a batch: four samples of batch 3 are twelve scored items."""
    labels = np.arange(12).reshape(4, 3) % 5
    r = evaluate("top1", _onehot(labels.reshape(-1), 5).reshape(4, 3, 5), labels)
    assert (r.value, r.n) == (1.0, 12)


def test_labels_out_of_range_or_missing_are_clear_errors():
    with pytest.raises(MetricError, match=r"class indices in \[0, 10\)"):
        evaluate("top1", _onehot(np.arange(3)), np.array([0, 1, 12]))
    with pytest.raises(MetricError, match="needs labels"):
        evaluate("top1", _onehot(np.arange(3)))
    with pytest.raises(MetricError, match="unknown metric 'top_1'.*top1, top5"):
        evaluate("top_1", _onehot(np.arange(3)), np.arange(3))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["top1", "cosine", "perplexity"])
def test_nan_or_inf_outputs_never_pass(name, bad):
    labels = np.arange(6) % 4
    good = _onehot(labels, 4)
    broken = good.copy()
    broken[2, 0, 1] = bad
    with pytest.raises(AccuracyError, match="NaN or Inf on 1 of 6 samples"):
        evaluate(name, broken, labels, reference=good)
    with pytest.raises(AccuracyError, match="the artifact outputs hold NaN"):
        drop(name, good, broken, labels)


def test_a_nan_score_fails_too():
    """Spearman of constant similarities is undefined: that is a failure, not a pass."""
    same = np.ones((5, 2, 3))
    with pytest.raises(AccuracyError, match="not a number"):
        evaluate("spearman", same, np.arange(5.0))


def test_wilson_matches_the_textbook_values():
    # Wilson (1927) score interval, z = 1.96: 0 of 10 -> [0, 0.2775]; 5 of 10 -> [0.2366, 0.7634]
    assert [round(v, 4) for v in wilson(0, 10)] == [0.0, 0.2775]
    assert [round(v, 4) for v in wilson(5, 10)] == [0.2366, 0.7634]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=3, max_size=60), st.integers(0, 2**16))
def test_every_interval_contains_its_value(labels, seed):
    labels = np.array(labels)
    noisy = _onehot(labels, 4) + np.random.default_rng(seed).normal(0, 0.6, (len(labels), 1, 4))
    for name in ("top1", "perplexity"):
        r = evaluate(name, noisy, labels)
        assert r.ci_low <= r.value <= r.ci_high, r
    d = drop("top1", _onehot(labels, 4), noisy, labels)
    assert d.ci_low <= d.value <= d.ci_high, d


def test_intervals_shrink_with_n_and_are_reproducible():
    rng = np.random.default_rng(1)
    small, large = [evaluate("cosine", rng.normal(size=(n, 8)), reference=rng.normal(size=(n, 8)) + 3)
                    for n in (20, 2000)]
    assert large.ci_high - large.ci_low < (small.ci_high - small.ci_low) / 4
    x, ref = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    assert evaluate("cosine", x, reference=ref) == evaluate("cosine", x, reference=ref)  # fixed seed


def test_paired_drop_sees_what_two_separate_intervals_cannot():
    """200 items, the candidate wrong on 6 of them: separate Wilson intervals overlap widely, the paired one
    excludes 0 because both are scored on the same items."""
    labels = np.arange(200) % 10
    base = _onehot(labels)
    cand = base.copy()
    cand[:6] = _onehot((labels[:6] + 1) % 10)
    d = drop("top1", base, cand, labels)
    assert d.value == pytest.approx(0.03)
    assert d.candidate.ci_high > d.baseline.ci_low  # overlap
    assert 0 < d.ci_low <= d.value <= d.ci_high < 0.07
    assert drop("top1", base, base, labels).ci_high == 0.0


def test_drop_is_positive_when_worse_whatever_the_direction():
    labels = np.arange(40) % 5
    sharp = _onehot(labels, 5) * 5
    blurred = sharp * 0.2  # same argmax, higher perplexity
    d = drop("perplexity", sharp, blurred, labels)
    assert d.value > 0 and d.baseline.value < d.candidate.value
    assert drop("top1", sharp, blurred, labels).value == 0.0


def test_reference_metrics_compare_with_fp32():
    rng = np.random.default_rng(0)
    fp32 = rng.normal(size=(30, 1, 10))
    noisy = fp32 + rng.normal(0, 0.3, fp32.shape)
    d = drop("agreement", fp32, noisy)
    assert d.baseline.value == 1.0 and d.value == pytest.approx(1 - d.candidate.value)
    assert d.candidate.value == np.mean(noisy.argmax(-1) == fp32.argmax(-1))
    cos = evaluate("cosine", np.zeros((2, 4)), reference=np.array([[0.0] * 4, [1.0] * 4]))
    assert cos.value == 0.5  # zero vs zero agrees, zero vs non-zero does not


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 6, 40).astype(float)  # ties, as in STS scores
    emb = rng.normal(size=(40, 2, 16))
    emb[:, 1] = emb[:, 0] + rng.normal(0, 1, (40, 16)) * (6 - scores[:, None]) / 3  # similar when the score is high
    sims = [float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in emb]
    r = evaluate("spearman", emb, scores)
    assert r.value == pytest.approx(spearmanr(sims, scores).statistic, abs=1e-12)
    assert r.value > 0.5 and r.ci_method == "bootstrap" and r.n == 40
    with pytest.raises(MetricError, match="batch of 2"):
        evaluate("spearman", rng.normal(size=(40, 3, 16)), scores)


def test_perplexity_of_uniform_logits_is_the_vocabulary_size():
    r = evaluate("perplexity", np.zeros((4, 1, 7, 50)), np.zeros((4, 1, 7), dtype=np.int64))
    assert r.value == pytest.approx(50.0)


def test_a_callable_is_a_metric():
    def balanced(outputs: np.ndarray, labels: np.ndarray) -> float:
        pred = outputs.reshape(len(labels), -1).argmax(1)
        return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))

    labels = np.array([0] * 8 + [1] * 2)
    r = evaluate(balanced, _onehot(np.zeros(10, dtype=int), 2), labels)
    assert (r.name, r.value, r.ci_method) == ("balanced", 0.5, "bootstrap")


def test_drop_limits():
    assert Drop.of(0.01) == Drop(absolute=0.01)
    assert Drop(relative=0.01).allowed(0.8) == pytest.approx(0.008)
    for bad in (lambda: Drop(), lambda: Drop(absolute=0.1, relative=0.1), lambda: Drop(relative=-0.1),
                lambda: Drop(absolute=math.nan), lambda: Drop.of(True), lambda: Drop.of("1%")):
        with pytest.raises(MetricError):
            bad()


def test_results_serialise_to_plain_json():
    import json

    labels = np.arange(10) % 3
    d = drop("top1", _onehot(labels, 3), _onehot(labels, 3), labels)
    assert json.loads(json.dumps(d.to_dict()))["candidate"]["n"] == 10
    assert metrics.summary(d).startswith("top1 fp32 1 [")
