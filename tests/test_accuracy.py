"""The task metric of a real export, measured through the artifact's runtime (sdk/accuracy.py), and the labeled
data that ships in packages (samples/labeled.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import backends
import sdk
from samples.labeled import digits, foolbox_images, imagenet_photos, sts_pairs
from sdk.core.metrics import AccuracyError, MetricError


@pytest.fixture(scope="module")
def digits_model() -> torch.nn.Module:
    """Multinomial logistic regression on scikit-learn's digits (trained in well under a second), as torch."""
    from sklearn.linear_model import LogisticRegression

    train = digits("train")
    x = torch.cat([x for x, _ in train]).reshape(len(train), -1).numpy()
    clf = LogisticRegression(max_iter=500).fit(x, [label for _, label in train])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.from_numpy(clf.coef_))
        model[1].bias.copy_(torch.from_numpy(clf.intercept_))
    return model.eval()


@pytest.fixture(scope="module")
def test_set() -> list[tuple[torch.Tensor, int]]:
    return digits("test")


@pytest.fixture(scope="module")
def calibration() -> list[tuple[torch.Tensor]]:
    return [(x,) for x, _ in digits("train")[:64]]


def _runtime_top1(bundle, data) -> float:
    """top-1 of the bundle computed here, independently: load it with its backend and count hits."""
    session = backends.load(bundle)
    return float(np.mean([session.run([x.numpy()])[0].argmax() == label for x, label in data]))


def test_int8_top1_is_measured_on_openvino(digits_model, test_set, calibration, tmp_path):
    res = sdk.export(digits_model, "intel-cpu", test_set[0][:1], recipe=["int8"], calibration=calibration,
                     eval_data=iter(test_set), metric="top1", max_drop=0.02, output_dir=tmp_path)
    acc = res.report["accuracy"]
    assert acc["ran_on"].startswith("openvino") and acc["n"] == len(test_set) == 360
    with torch.no_grad():
        fp32 = float(np.mean([digits_model(x).argmax().item() == label for x, label in test_set]))
    assert acc["fp32"]["value"] == pytest.approx(fp32) and fp32 > 0.9
    assert acc["artifact"]["value"] == pytest.approx(_runtime_top1(res.artifact.path, test_set))
    assert acc["fp32"]["ci_low"] < fp32 < acc["fp32"]["ci_high"] and acc["artifact"]["ci_method"] == "wilson"
    drop = acc["drop"]
    assert drop["value"] == pytest.approx(fp32 - acc["artifact"]["value"])
    assert drop["ci_low"] <= drop["value"] <= drop["ci_high"] and drop["value"] <= 0.02
    assert acc["passed"] is True and acc["max_drop"] == "0.02"
    assert sdk.load_artifact(res.artifact.path).report["accuracy"] == acc  # in report.json too


def test_top1_is_measured_on_executorch(digits_model, test_set, tmp_path):
    res = sdk.export(digits_model, "android-arm64", test_set[0][:1], eval_data=test_set, metric="top1",
                     max_drop=sdk.Drop(relative=0.01), output_dir=tmp_path)
    acc = res.report["accuracy"]
    assert acc["ran_on"].startswith("executorch") and acc["passed"] is True
    assert acc["artifact"]["value"] == pytest.approx(_runtime_top1(res.artifact.path, test_set))
    assert acc["allowed_drop"] == pytest.approx(0.01 * acc["fp32"]["value"])


def test_a_missed_max_drop_refuses_the_export(digits_model, test_set, calibration, tmp_path):
    """INT8 never reproduces fp32 logits exactly, so its cosine drop is real and above 1e-7: refused, nothing
    written, and the message carries the numbers."""
    with pytest.raises(AccuracyError) as info:
        sdk.export(digits_model, "intel-cpu", test_set[0][:1], recipe=["int8"], calibration=calibration,
                   eval_data=test_set, metric="cosine", max_drop=1e-7, output_dir=tmp_path)
    message = str(info.value)
    assert "intel-cpu" in message and "max_drop=1e-07" in message and "n=360" in message
    assert "No bundle was written" in message and "95% CI" in message
    assert info.value.accuracy["passed"] is False and info.value.accuracy["drop"]["value"] > 1e-7
    assert list(tmp_path.iterdir()) == []


def test_bad_accuracy_arguments_fail_before_converting(digits_model, test_set, tmp_path):
    x = test_set[0][:1]
    with pytest.raises(MetricError, match="max_drop needs a metric"):
        sdk.export(digits_model, "intel-cpu", x, eval_data=test_set, max_drop=0.01, output_dir=tmp_path)
    with pytest.raises(MetricError, match="top1 needs labels"):
        sdk.export(digits_model, "intel-cpu", x, eval_data=[(t,) for t, _ in test_set], metric="top1",
                   output_dir=tmp_path)
    with pytest.raises(MetricError, match="unknown metric 'accuracy'"):
        sdk.export(digits_model, "intel-cpu", x, eval_data=test_set, metric="accuracy", output_dir=tmp_path)
    with pytest.raises(MetricError, match=r"item 1, input 0: shape \[1, 64\]"):
        sdk.export(digits_model, "intel-cpu", x, eval_data=[test_set[0], (torch.zeros(1, 64), 3)], metric="top1",
                   output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_packaged_labeled_data():
    photos = imagenet_photos(n=24, size=32)
    labels = [label for _, label in photos]
    assert len(photos) == 24 and labels[:20] == [label for _, label in foolbox_images("imagenet")]
    assert labels[20:] == labels[:4] and all(0 <= label < 1000 for label in labels)
    again = imagenet_photos(n=24, size=32)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(photos, again))  # deterministic crops
    assert not torch.equal(photos[20][0], photos[0][0])  # a crop, not the same photo again
    pairs = sts_pairs()
    assert len(pairs) >= 100 and {round(s) for _, _, s in pairs} == set(range(6))


class BagOfWords(torch.nn.Module):
    """Mean of (random, fixed) word embeddings over the non-padding tokens: a sentence pair's cosine then follows
    its word overlap, which the STS scores reward."""

    def __init__(self, vocab: int = 512, dim: int = 32):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).float()
        return (self.embed(ids) * weights).sum(1) / weights.sum(1).clamp(min=1)


def _hash_tokenize(sentences: list[str], length: int = 16, vocab: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    import zlib

    ids = torch.zeros(len(sentences), length, dtype=torch.int64)
    for row, sentence in enumerate(sentences):
        words = [w.strip(".,").lower() for w in sentence.split()][:length]
        ids[row, :len(words)] = torch.tensor([1 + zlib.crc32(w.encode()) % (vocab - 1) for w in words])
    return ids, (ids > 0).to(torch.int64)


def test_spearman_on_sentence_pairs_through_the_runtime(tmp_path):
    from samples.labeled import tokenized_pairs

    pairs = tokenized_pairs(_hash_tokenize)
    assert tuple(pairs[0][0].shape) == (2, 16) and isinstance(pairs[0][2], float)
    res = sdk.export(BagOfWords().eval(), "intel-cpu", pairs[0][:2], eval_data=pairs, metric="spearman",
                     max_drop=0.01, output_dir=tmp_path)
    acc = res.report["accuracy"]
    assert acc["n"] == len(pairs) and acc["fp32"]["ci_method"] == "bootstrap"
    assert acc["fp32"]["value"] > 0.3  # word overlap does rank these pairs
    assert abs(acc["drop"]["value"]) < 1e-3 and acc["passed"] is True


class NaNHead(torch.nn.Module):
    """Logits that are NaN for every input (square root of a large negative number)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.fc(x.flatten(1)) - 1e6)


def test_nan_outputs_never_pass(test_set, tmp_path):
    """Refused whichever check sees the NaN first (parity or the metric); AccuracyError is a ParityError."""
    from sdk.core.errors import ParityError

    with pytest.raises(ParityError, match="NaN"):
        sdk.export(NaNHead().eval(), "intel-cpu", test_set[0][:1], eval_data=test_set[:50], metric="top1",
                   output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device_id", ["intel-cpu", "android-arm64", "jetson-orin-nano", "android-litert"])
def test_control_keeps_the_planted_sensitive_layer_float_to_meet_max_drop(device_id, tmp_path):
    """Accuracy control without tolerance=: all-INT8 misses max_drop on the runtime, so the most sensitive layer
    (`mid`, whose one huge weight on a dead input sets every INT8 scale) stays float until the drop holds."""
    from quant_models import DeadInputOutlier

    torch.manual_seed(5)
    model = DeadInputOutlier().eval()
    calibration = [(torch.randn(1, 16),) for _ in range(20)]
    eval_data = [(torch.randn(1, 16),) for _ in range(40)]
    res = sdk.export(model, device_id, calibration[0], recipe=["int8"], calibration=calibration,
                     eval_data=eval_data, metric="cosine", max_drop=0.01, output_dir=tmp_path)
    acc = res.report["accuracy"]
    steps = acc["control"]["steps"]
    assert steps[0]["metric_drop"]["met"] is False and steps[0]["metric_drop"]["value"] > 0.01, steps
    assert "mid" in acc["control"]["kept_float"] and steps[-1]["metric_drop"]["met"] is True
    assert acc["passed"] is True and acc["drop"]["value"] <= 0.01 and acc["n"] == 40
    assert any(f["name"] == "mid" and "max_drop" in f["reason"] for f in res.report["quantization"]["float_layers"])
