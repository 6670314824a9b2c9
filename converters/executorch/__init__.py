"""ExecuTorch converter: torch -> `.pte` program whose supported subgraphs are lowered to the XNNPACK delegate.

The flow is two steps so that a quantizer slots in between: `_export_program` (torch.export, ExportedProgram out)
then `_lower` (`to_edge_transform_and_lower` with the profile's partitioner). A PT2E quantize step takes and
returns an ExportedProgram, so it goes between them without touching either.

The plug-in's helpers, by what they hold: `fp16` (the float16 program), `quantize` (ExecuTorch's XNNPACK
quantizers and torchao's 8da4w, set up for the job), `weights` (what the graph and the written `.pte` store,
and the account), `coverage` (what the delegate took, and XNNPACK's reasons for the rest).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.exir import EdgeProgramManager, to_edge_transform_and_lower
from executorch.version import __version__ as EXECUTORCH_VERSION
from torch.export import ExportedProgram

from converters import driver, register
from converters.base import ConversionJob, ConversionResult, Converter
from converters.executorch.coverage import _coverage, _refusals
from converters.executorch.fp16 import _Fp16Program, _fp16_account
from converters.executorch.quantize import _int4_model, _quantize_pt2e, _speed_note
from converters.executorch.weights import MODEL_FILE, _layer_weights, _layers_account, _stored_dtypes
from sdk.core.errors import ProfileError, UnsupportedRecipeError
from sdk.core.recipes import Int8Static

PARTITIONERS: dict[str, Callable[[], Any]] = {"xnnpack": XnnpackPartitioner}
#: where the toolchain names the op it failed on: edge verifier ("Operator aten.x.default is not in Core ATen",
#: "<EdgeOpOverload: aten.x.default>"), an fx pass ("While executing %n : ... target=...aten.x.default"),
#: to_executorch ("Missing out variants: {'aten::x'}")
_OP_PATTERNS = (
    re.compile(r"Operator (?:torch\._ops\.)?(\w+\.\w+\.\w+) is not in Core ATen"),
    re.compile(r"<EdgeOpOverload: (\w+\.\w+\.\w+)>"),
    re.compile(r"While executing %\S+ : .*?target=\S*?(aten\.\w+\.\w+)"),
    re.compile(r"Missing out variants: \{'([\w:.]+)'"),
)
_OTHER_TARGETS = ("or export for a device whose toolchain handles it, e.g. 'android-litert' (LiteRT) "
                  "or 'intel-cpu' (OpenVINO)")


#: precisions quantized here (the others are float: fp32 as exported, fp16 via `_Fp16Program`)
QUANTIZED = frozenset({"int8", "int8-dynamic", "int4"})


def _check_request(job: ConversionJob) -> None:
    """Refuse what cannot be made before any export work."""
    config = job.precision
    if isinstance(config, Int8Static) and config.symmetric_activations:
        raise UnsupportedRecipeError(f"{config} with symmetric_activations=True (XNNPACKQuantizer's INT8 "
                                     "activations are per-tensor affine)", ExecuTorchConverter.format,
                                     job.profile.id, sorted(ExecuTorchConverter.supported))


@register
class ExecuTorchConverter(Converter):
    """torch.export -> XNNPACK-lowered edge program -> `.pte`, run by the ExecuTorch runtime on the device."""

    format = "executorch"
    supported = frozenset({"fp32", "fp16", *QUANTIZED})
    options: ClassVar[dict[str, str]] = {
        "partitioner": f"the delegate supported subgraphs are lowered to: {', '.join(PARTITIONERS)} (default xnnpack)",
    }

    error_patterns = _OP_PATTERNS

    def hint_for(self, exc: Exception, op: str | None, stage: str | None) -> str:
        if "not in Core ATen" in str(exc):
            return f"ExecuTorch has no kernel for {op}: rewrite it with core ATen ops, {_OTHER_TARGETS}"
        return f"rewrite {op or 'the failing code'} with common tensor ops, {_OTHER_TARGETS}"

    def build(self, job: ConversionJob) -> ConversionResult:
        _check_request(job)
        quantizing = job.precision.name in QUANTIZED
        exported = self._export_program(job)
        pt2e_notes: list[str] = []
        if job.precision.name in ("int8", "int8-dynamic"):
            exported, pt2e_notes = _quantize_pt2e(job, exported)
        account = _layers_account(job, _layer_weights(exported)) if quantizing else (
            _fp16_account() if job.precision.name == "fp16" else None)
        if quantizing:  # the driver's invariants, before the lowering they would otherwise wait for
            driver.check_account(job, account)
        edge, reasons = self._lower(job, exported)
        coverage = _coverage(edge, reasons)
        with driver.stage("to_executorch"):
            program = edge.to_executorch()
        quantization = _stored_dtypes(account, program.buffer) if account else None
        (Path(job.workdir) / MODEL_FILE).write_bytes(program.buffer)
        notes = [(f"exported with executorch {EXECUTORCH_VERSION}; the program's inputs and outputs keep the "
                  "model's dtypes (float32 for a float model, in fp16 and the quantized precisions too)")]
        if quantizing:
            notes.append(_speed_note())
        notes += pt2e_notes
        return ConversionResult(MODEL_FILE, coverage=coverage, quantization=quantization, notes=notes)

    def _export_program(self, job: ConversionJob) -> ExportedProgram:
        """torch.export of the model at this job's precision: fp32 as is, fp16 via `_Fp16Program`, int4 with
        torchao's 8da4w applied first; int8 is exported in float here and quantized by `_quantize_pt2e`."""
        if job.precision.name == "fp16":
            model = _Fp16Program(job.model)
        elif job.precision.name == "int4":
            with driver.stage("torchao quantize_ (8da4w)"):
                model = _int4_model(job)
        else:
            model = job.model
        with driver.stage("torch.export"), torch.no_grad():
            return torch.export.export(model, tuple(job.example_inputs))

    def _lower(self, job: ConversionJob, exported: ExportedProgram) -> tuple[EdgeProgramManager, dict[str, str]]:
        """Edge dialect, with the subgraphs the profile's partitioner supports lowered to its delegate, and the
        partitioner's reasons for the op types it refused."""
        name = job.profile.converter.get("partitioner", "xnnpack")
        if name not in PARTITIONERS:
            raise ProfileError(f"device profile {job.profile.id!r}: [converter] partitioner = {name!r} is not one of "
                               f"{', '.join(PARTITIONERS)}")
        with driver.stage("lowering to the edge dialect"), _refusals() as log:
            edge = to_edge_transform_and_lower(exported, partitioner=[PARTITIONERS[name]()])
        return edge, log.reasons
