"""LiteRT converter: torch -> `.tflite` flatbuffer with litert-torch (formerly ai-edge-torch), for XNNPACK on CPUs.

litert-torch converts the model once; a precision then adds its part. fp16 is litert-torch's own float16
recipe (`quant_recipes.full_fp16_recipe`: ai-edge-quantizer FLOAT_CASTING on every op's weights, weight-only
with explicit DEQUANTIZE ops), since the non-V2 converter takes no TFLite converter flags. int8 and
int8-dynamic run ai-edge-quantizer on the float `.tflite` (`quantize`). Every precision's weight dtypes are
read back from the file, per layer (`weights`).

The model is wrapped so that the signature's tensors are named `in_i`/`out_i`; `backends/litert` maps them
by those names.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.utils._pytree as pytree

from converters import driver, register
from converters.base import ConversionJob, ConversionResult, Converter
from converters.litert.quantize import _INT8_SPEED_NOTE, _QUANTIZE_STAGE, _quantize
from converters.litert.toolchain import _quiet_progress
from converters.litert.weights import _account, _fp16_account, _op_table
from converters.pooling import global_pools_as_means
from sdk.core.errors import UnsupportedRecipeError
from sdk.core.readers.litert import delegation, open_interpreter
from sdk.core.recipes import Int8Static
from sdk.core.results import Coverage

MODEL_FILE = "model.tflite"
#: where the toolchain names the op it failed on ("Lowering not found: aten.histc.default", fx "While executing")
_OP_PATTERNS = (re.compile(r"Lowering not found: (\S+)"), re.compile(r"target=torch\.ops\.([\w.]+)"))


class _NamedIO(torch.nn.Module):
    """Takes `in_i` keyword tensors and returns `{out_i: leaf}`, so LiteRT's signature carries the SDK's names.

    litert-torch names positional inputs `args_i` and outputs `output_i`; naming them here removes any reliance
    on the order in which a runtime lists a signature's tensors.
    """

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str]):
        super().__init__()
        self.model, self.input_names, self.output_names = model, list(input_names), list(output_names)
        self.training = False  # set directly: .eval() would recurse into exported (PT2E) models, which refuse it

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        leaves = pytree.tree_leaves(self.model(*(inputs[n] for n in self.input_names)))
        return dict(zip(self.output_names, leaves, strict=True))


def _fp16_config() -> Any:
    from litert_torch.generative.quantize import quant_recipes

    return quant_recipes.full_fp16_recipe()


def _check_request(job: ConversionJob) -> None:
    """Refuse what cannot be made before spending a conversion on it."""
    config = job.precision
    if isinstance(config, Int8Static) and config.symmetric_activations:
        raise UnsupportedRecipeError(f"{config} with symmetric_activations=True (LiteRT's int8 kernels take "
                                     "affine activations)", LiteRTConverter.format, job.profile.id,
                                     sorted(LiteRTConverter.supported))


@register
class LiteRTConverter(Converter):
    """torch -> LiteRT flatbuffer; coverage is what the XNNPACK delegate takes when the model is loaded."""

    format = "litert"
    supported = frozenset({"fp32", "fp16", "int8", "int8-dynamic"})
    options = {"num_threads": "CPU threads the LiteRT interpreter uses on the device (default: every core)"}

    error_patterns = _OP_PATTERNS

    def summary(self, exc: Exception) -> str:
        """The first paragraph of the message, on one line (MLIR and JAX errors run to pages)."""
        return " ".join(str(exc).strip().split("\n\n")[0].split())[:500].rstrip(".")

    def hint_for(self, exc: Exception, op: str | None, stage: str | None) -> str:
        if stage == _QUANTIZE_STAGE:
            return "the float model converted but ai-edge-quantizer failed on it; try 'int8-dynamic' or 'fp16'"
        if op:
            return f"replace {op} with ops litert-torch can lower, or pick a device whose format supports it"
        return ("check that torch.export.export(model, example_inputs) succeeds and that the model avoids "
                "data-dependent shapes; or pick a device with another format")

    def build(self, job: ConversionJob) -> ConversionResult:
        _check_request(job)
        name = job.precision.name
        model = global_pools_as_means(job.model, job.example_inputs)  # litert-torch pads a pool up to its kernel
        path = self._convert(job, model, _fp16_config() if name == "fp16" else None)
        quantization = _quantize(job, path) if name.startswith("int8") else None
        interpreter, runtime = open_interpreter(path, num_threads=1)
        stats = delegation(interpreter)
        coverage = Coverage(delegate="XNNPACK", unit="ops", total=stats["ops"], delegated=stats["delegated_ops"],
                            not_delegated=stats["not_delegated"], details={"op_types": stats["op_types"]})
        notes = [(f"coverage: XNNPACK delegation as {runtime} applies it on this host; "
                  "the device's LiteRT build decides for itself at load time")]
        if name == "fp16":
            quantization = _fp16_account(_op_table(interpreter))
        elif quantization is not None:
            quantization = _account(job, quantization, _op_table(interpreter))
            notes.append(_INT8_SPEED_NOTE)
        return ConversionResult(MODEL_FILE, coverage=coverage, quantization=quantization, notes=notes)

    def _convert(self, job: ConversionJob, model: torch.nn.Module, quant_config: Any) -> Path:
        """Convert `model` (float, or already PT2E-quantized) into `workdir/model.tflite`."""
        import litert_torch

        path = Path(job.workdir) / MODEL_FILE
        named = _NamedIO(model, job.input_names, job.output_names)
        with driver.stage("litert_torch.convert"), _quiet_progress():
            edge_model = litert_torch.convert(
                named, sample_kwargs=dict(zip(job.input_names, job.example_inputs, strict=True)),
                quant_config=quant_config)
            edge_model.export(str(path))
        return path
