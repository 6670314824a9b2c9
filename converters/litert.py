"""LiteRT converter: torch -> `.tflite` flatbuffer with litert-torch (formerly ai-edge-torch), for XNNPACK on CPUs.

A precision is a step that prepares the model and litert-torch's `quant_config` before the one conversion
call (`_PRECISIONS`); a PT2E quantize step slots in there. fp16 is litert-torch's own float16 recipe
(`quant_recipes.full_fp16_recipe`: ai-edge-quantizer FLOAT_CASTING on every op's weights, weight-only with
explicit DEQUANTIZE ops), since the non-V2 converter takes no TFLite converter flags. The model is wrapped so
that the signature's tensors are named `in_i`/`out_i`; `backends/litert` maps them by those names.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.utils._pytree as pytree

from backends.litert import delegation, open_interpreter
from converters import register
from converters.base import ConversionJob, ConversionResult, Converter
from sdk.errors import ConversionError, UnsupportedRecipeError

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


# A precision step: (job) -> (model to convert, litert-torch quant_config or None, account of what it quantizes).
PrecisionStep = Callable[[ConversionJob], tuple[torch.nn.Module, Any, dict[str, Any] | None]]


def _fp32(job: ConversionJob) -> tuple[torch.nn.Module, Any, None]:
    return job.model, None, None


def _fp16(job: ConversionJob) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    from litert_torch.generative.quantize import quant_recipes

    return job.model, quant_recipes.full_fp16_recipe(), {
        "method": "litert-torch full_fp16_recipe (ai-edge-quantizer FLOAT_CASTING, weight-only)",
        "weights": "float16",
        "activations": "float32 (XNNPACK expands the float16 weights once, at load)",
    }


_PRECISIONS: dict[str, PrecisionStep] = {"fp32": _fp32, "fp16": _fp16}


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide litert-torch's progress lines and ai-edge-quantizer's size prints, unless the user asked for
    them with LITERT_TORCH_SHOW_PROGRESS."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "n"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        os.environ.pop(key, None)


def _failed_op(message: str) -> str | None:
    for pattern in _OP_PATTERNS:
        found = pattern.search(message)
        if found:
            return found.group(1)
    return None


@register
class LiteRTConverter(Converter):
    """torch -> LiteRT flatbuffer; coverage is what the XNNPACK delegate takes when the model is loaded."""

    format = "litert"
    supported = frozenset(_PRECISIONS)
    options = {"num_threads": "CPU threads the LiteRT interpreter uses on the device (default: every core)"}

    def convert(self, job: ConversionJob) -> ConversionResult:
        step = _PRECISIONS.get(job.precision.name)
        if step is None:
            raise UnsupportedRecipeError(job.precision.to_string(), self.format, job.profile.id, sorted(self.supported))
        model, quant_config, quantization = step(job)
        path = self._convert(job, model, quant_config)
        interpreter, runtime = open_interpreter(path, num_threads=1)
        stats = delegation(interpreter)
        coverage = {"delegate": "XNNPACK", **stats,
                    "fraction": stats["delegated_ops"] / stats["ops"] if stats["ops"] else 1.0}
        notes = [f"coverage: XNNPACK delegation as {runtime} applies it on this host; "
                 "the device's LiteRT build decides for itself at load time"]
        return ConversionResult(MODEL_FILE, coverage=coverage, quantization=quantization, notes=notes)

    def _convert(self, job: ConversionJob, model: torch.nn.Module, quant_config: Any) -> Path:
        """Convert `model` (float, or already PT2E-quantized) into `workdir/model.tflite`."""
        import litert_torch

        path = Path(job.workdir) / MODEL_FILE
        named = _NamedIO(model, job.input_names, job.output_names)
        try:
            with _quiet_progress():
                edge_model = litert_torch.convert(
                    named, sample_kwargs=dict(zip(job.input_names, job.example_inputs, strict=True)),
                    quant_config=quant_config)
                edge_model.export(str(path))
        except Exception as exc:  # the toolchain raises anything from torch.export, JAX lowering or MLIR
            message = " ".join(str(exc).strip().split("\n\n")[0].split())  # its first paragraph, on one line
            op = _failed_op(str(exc))
            hint = (f"replace {op} with ops litert-torch can lower, or pick a device whose format supports it"
                    if op else "check that torch.export.export(model, example_inputs) succeeds and that the model "
                               "avoids data-dependent shapes; or pick a device with another format")
            raise ConversionError(message[:500].rstrip("."), fmt=self.format, device=job.profile.id, op=op, hint=hint) from exc
        return path
