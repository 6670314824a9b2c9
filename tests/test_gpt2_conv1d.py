"""GPT-2's Hugging Face `Conv1D` weight layers (weight (in, out), forward = addmm) quantize on every host-runnable
format: sdk.export swaps each for the equivalent nn.Linear before capture, so each toolchain's quantizer sees a
linear layer. A tiny config-defined GPT2LMHeadModel (random init, nothing downloaded)."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers as tf
from torch import nn
from transformers.pytorch_utils import Conv1D

import sdk
from sdk.hf import conv1d_as_linear

#: (device, recipe): int8 everywhere, int4 where the format has it (TensorRT's INT4 takes blocks of 64 or 128)
CASES = [("android-arm64", "int8"), ("android-arm64", "int4:32"), ("intel-cpu", "int8"), ("intel-cpu", "int4:32"),
         ("jetson-orin-nano", "int8"), ("jetson-orin-nano", "int4:64"), ("android-litert", "int8")]
CONV1D = ["lm.transformer.h.0.attn.c_attn", "lm.transformer.h.0.attn.c_proj", "lm.transformer.h.0.mlp.c_fc",
          "lm.transformer.h.0.mlp.c_proj"]


class CausalLM(nn.Module):
    """The LM's logits for (input_ids, attention_mask), as a user wraps a Hugging Face model for export."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lm = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=64, n_positions=32,
                                                   use_cache=False))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]


def _tokens(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 64, (1, 16), generator=g), torch.ones(1, 16, dtype=torch.long)) for _ in range(n)]


@pytest.fixture(scope="module")
def model() -> CausalLM:
    return CausalLM().eval()


def test_the_substitution_is_lossless(model):
    linear = copy.deepcopy(model)
    assert conv1d_as_linear(linear) == CONV1D
    assert not any(isinstance(m, Conv1D) for m in linear.modules())
    assert all(torch.equal(dict(linear.named_modules())[n].weight, dict(model.named_modules())[n].weight.t())
               for n in CONV1D)
    with torch.no_grad():
        for sample in _tokens(4, 1):
            assert torch.equal(linear(*sample), model(*sample))
    assert any(isinstance(m, Conv1D) for m in model.modules())  # the caller's model, as sdk.export keeps it


@pytest.mark.parametrize(("device_id", "recipe"), CASES)
def test_every_conv1d_weight_is_stored_quantized(model, device_id, recipe, tmp_path):
    calibration = _tokens(20, 1)
    res = sdk.export(model, device_id, calibration[0], recipe=recipe, calibration=calibration, output_dir=tmp_path)
    q = res.report["quantization"]
    assert set(CONV1D) <= set(q["quantized_layers"]), q["float_layers"]  # read back from the saved file
    assert q["fallback"]["kept_float"] == [] and res.report["parity"]["passed"] is True
    assert q["heldout"]["passed"] is True
    assert any("4 Hugging Face Conv1D layer(s)" in note for note in res.report["notes"])


def test_a_converter_given_conv1d_layers_counts_them_and_refuses_leaving_them_float(model, tmp_path):
    """Straight to ExecuTorch's converter (no sdk.export, so no substitution): XNNPACKQuantizer takes the lm_head
    only, and the driver counts the four Conv1D among the weight layers, so 4 of 5 left float is refused."""
    import converters
    from target_helpers import make_job

    from sdk.core.errors import ConversionError

    calibration = _tokens(4, 2)
    job = make_job(model, calibration[0], sdk.devices.get("android-arm64"), tmp_path, ["int8"],
                   calibration=calibration)
    with pytest.raises(ConversionError, match="left 4 of the model's 5 weight layers") as err:
        converters.get("executorch").convert(job)
    assert all(name in str(err.value) for name in CONV1D)
