"""Hugging Face models with task=: a config-defined image classifier and sentence encoder on every host-runnable
target (tiny configs, random weights; nothing is downloaded)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf

import sdk
from sdk.core.errors import InvalidInputsError

HOST_RUNNABLE = ("android-arm64", "android-litert", "intel-cpu", "jetson-orin-nano")


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "image-classification": tf.ResNetForImageClassification(tf.ResNetConfig(
            num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5, image_size=32)),
        "feature-extraction": tf.BertModel(tf.BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32)),
    }


@pytest.mark.parametrize("task", ["image-classification", "feature-extraction"])
@pytest.mark.parametrize("device", HOST_RUNNABLE)
def test_task_export_on_every_host_runnable_target(models, task, device, tmp_path):
    model = models[task]
    res = sdk.export(model, device, task=task, output_dir=tmp_path)
    assert res.report["parity"]["passed"] is True, res.report["parity"]
    spec = res.artifact.manifest["task"]
    assert spec["name"] == task
    inputs, outputs = res.artifact.reference()
    # the bundle's first output is the named tensor of the Hugging Face model itself
    with torch.no_grad():
        direct = model(**{n: torch.from_numpy(a) for n, a in zip(spec["inputs"], inputs)})[spec["outputs"][0]]
    np.testing.assert_allclose(outputs[0], direct.numpy(), rtol=1e-4, atol=1e-5)
    if task == "image-classification":
        assert spec["inputs"] == ["pixel_values"] and list(inputs[0].shape) == [1, 3, 32, 32]
        assert spec["outputs"] == ["logits"] and outputs[0].shape == (1, 5)
    else:
        assert spec["inputs"] == ["input_ids", "attention_mask"] and inputs[0].dtype == np.int64
        assert spec["outputs"] == ["last_hidden_state"] and outputs[0].shape[-1] == 16


def test_text_classification_and_given_inputs(tmp_path):
    torch.manual_seed(0)
    model = tf.BertForSequenceClassification(tf.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=3))
    ids = torch.randint(0, 64, (1, 8))
    res = sdk.export(model, "jetson", (ids, torch.ones_like(ids)), task="text-classification", output_dir=tmp_path)
    assert res.report["parity"]["passed"] and res.artifact.manifest["task"]["outputs"] == ["logits"]
    assert res.artifact.manifest["inputs"][0]["shape"] == [1, 8]


def test_task_errors_say_what_to_do(models, tmp_path):
    with pytest.raises(InvalidInputsError, match="give task="):
        sdk.export(models["feature-extraction"], "jetson", output_dir=tmp_path)
    with pytest.raises(InvalidInputsError, match="did you mean 'image-classification'"):
        sdk.export(models["image-classification"], "jetson", task="image-clasification", output_dir=tmp_path)
    with pytest.raises(InvalidInputsError, match="causal LM"):  # text-generation is the LLM path's
        sdk.export(models["feature-extraction"], "jetson", task="text-generation", output_dir=tmp_path)
    with pytest.raises(InvalidInputsError, match="Hugging Face"):
        sdk.export(torch.nn.Linear(2, 2), "jetson", (torch.randn(1, 2),), task="feature-extraction",
                   output_dir=tmp_path)
    assert not any(tmp_path.iterdir())
