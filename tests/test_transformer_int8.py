"""Static INT8 of a BERT-like encoder on every host-runnable toolchain, and structured pruning of it: what
all-MiniLM-L6-v2 exposed (integer position arithmetic turned float by XNNPACKQuantizer, NNCF failing on the
embedding gathers, the float32-minimum attention mask quantized with the scores, a pruner changing the
embedding width)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sdk
from sdk.core.recipes import Prune
from tests.masked_encoder import encoder, sentences

DATA = sentences(40, seed=1)


@pytest.fixture(scope="module")
def model():
    return encoder()


@pytest.mark.parametrize("device", ["android-arm64", "android-litert", "intel-cpu"])
def test_static_int8_keeps_the_embedding(model, device, tmp_path):
    res = sdk.export(model, device, DATA[0], recipe=["int8"], output_dir=tmp_path, validate=False,
                     calibration=DATA[:32], eval_data=DATA[32:], tolerance=sdk.Tolerance(min_cosine=0.98))
    q = res.report["quantization"]
    assert min(o["cosine"] for o in q["heldout"]["outputs"]) >= 0.98
    assert q["quantized_layers"], "the linear layers are quantized"
    said = " ".join([q["toolchain"], q["scheme"], *res.report.get("notes", [])])
    assert "TRANSFORMER" in said


def test_mask_beyond_int8_is_left_float_with_a_reason(model, tmp_path):
    res = sdk.export(model, "android-arm64", DATA[0], recipe=["int8"], output_dir=tmp_path, validate=False,
                     calibration=DATA[:32], eval_data=DATA[32:], tolerance=sdk.Tolerance(min_cosine=0.98))
    assert any("beyond ±1e+06" in note for note in res.report["notes"]), res.report["notes"]


def test_structured_prune_leaves_the_output_width(model):
    every_layer = {name: Prune(sparsity=0.5) for name in ("blocks.0.qkv", "blocks.1.down")}  # first, last too
    pruned = sdk.compress(model, [Prune(sparsity=0.5, scope=every_layer)], example_inputs=DATA[0])
    report = pruned.edge_sdk_report["passes"][0]
    assert report["output_groups_left_whole"] >= 1
    shapes = {row["name"]: row["weight_shape_after"] for row in report["layers"]}
    assert shapes["blocks.0.up"] == [128, 64] and shapes["blocks.0.down"] == [64, 128]
    assert pruned(*DATA[0]).shape == (1, 64)


@pytest.mark.parametrize("device", ["android-arm64", "android-litert", "intel-cpu"])
def test_a_classifier_ending_in_softmax_is_not_a_transformer(device, tmp_path):
    """The rule keys on attention (softmax and an activation x activation product), not on any softmax."""
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
                        nn.Softmax(-1)).eval()
    images = [(torch.rand(1, 3, 16, 16),) for _ in range(12)]
    res = sdk.export(cnn, device, images[0], recipe=["int8"], output_dir=tmp_path, validate=False,
                     calibration=images[:10], eval_data=images[10:], tolerance=sdk.Tolerance(min_cosine=0.9))
    q = res.report["quantization"]
    said = " ".join([q["toolchain"], q["scheme"], *res.report.get("notes", [])])
    assert "TRANSFORMER" not in said and "a transformer" not in said
