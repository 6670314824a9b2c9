"""Core ML converter: torch.export -> coremltools ML program (`model.mlpackage`) for the Apple Neural Engine.

coremltools converts anywhere but runs models only on macOS, so the check on a Linux host is the saved
spec: I/O names and static shapes, deployment target, and the weights' dtypes (fp16 really stored as fp16).
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from backends.coreml import spec_summary
from converters import register
from converters.base import ConversionJob, ConversionResult, Converter
from sdk.errors import ConversionError, ProfileError, UnsupportedRecipeError

__all__ = ["CoreMLConverter"]

MODEL_FILE = "model.mlpackage"
COVERAGE_REASON = ("which ops run on the Neural Engine is only known on macOS 14.4+ (MLComputePlan); "
                   "run the agent on a Mac")
# coremltools' messages that name the torch op it could not lower (frontend/torch/ops.py, internal_graph.py)
_OP_PATTERNS = (
    re.compile(r"convert function for op '([^']+)' not implemented"),
    re.compile(r"Unsupported fx node \S+, kind (\S+)"),
    re.compile(r"lowering for Torch `([^`]+)` op is not supported"),
    re.compile(r"node \S+ \(([^)]+)\) got \d+ input"),
)

_PASSTHROUGH = re.compile(r"input name, '([^']+)', is different from its corresponding var's name, '([^']+)'")


@register
class CoreMLConverter(Converter):
    """fp32/fp16 ML programs; fp16 is the Neural Engine's native precision."""

    format = "coreml"
    supported = frozenset({"fp32", "fp16"})
    options = {
        "minimum_deployment_target": "oldest OS the model must load on, a coremltools.target name, e.g. iOS17, macOS15",
        "compute_units": "where Core ML may run it: ALL | CPU_AND_NE | CPU_AND_GPU | CPU_ONLY",
    }

    def convert(self, job: ConversionJob) -> ConversionResult:
        import coremltools as ct

        target = _options(job)
        precision = job.precision.name
        compute_precision = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}.get(precision)
        if compute_precision is None:
            raise UnsupportedRecipeError(job.precision.to_string(), self.format, job.profile.id, sorted(self.supported))

        exported = _export(job)
        out_dtypes = _output_dtypes(exported)
        try:
            mlmodel = ct.convert(
                exported, convert_to="mlprogram", minimum_deployment_target=target,
                compute_precision=compute_precision, skip_model_load=True,
                inputs=[ct.TensorType(name=name, shape=tuple(t.shape), dtype=_io_dtype(t.dtype))
                        for name, t in zip(job.input_names, job.example_inputs)],
                outputs=[ct.TensorType(name=name, dtype=_io_dtype(dtype))
                         for name, dtype in zip(job.output_names, out_dtypes)])
        except Exception as exc:
            raise _conversion_error(exc, job) from exc
        # Weight compression for int8/int4/palettize recipes (coremltools.optimize.coreml:
        # linear_quantize_weights, palettize_weights) goes here: on the converted mlmodel, before save and check.
        mlmodel.save(str(job.workdir / MODEL_FILE))

        summary = spec_summary(job.workdir / MODEL_FILE)
        _check_spec(summary, job, target.value)
        notes = [f"ML program, opset {summary['opset']}, spec v{summary['specification_version']}; ops: "
                 + ", ".join(f"{op} x{n}" for op, n in summary["ops"].items()),
                 f"weights by dtype (elements): {summary['weight_dtypes']}"]
        if precision == "fp16":
            notes.append("inputs/outputs stay float32; the program casts to fp16 on entry and back on exit")
            if "float32" in summary["weight_dtypes"]:
                notes.append(f"{summary['weight_dtypes']['float32']} weight elements stay float32 "
                             "(ops coremltools keeps in fp32)")
        quantization = {"scheme": "fp16", "tool": f"coremltools {ct.__version__}",
                        "weight_dtypes": summary["weight_dtypes"]} if precision == "fp16" else None
        return ConversionResult(model_file=MODEL_FILE, coverage=None, coverage_reason=COVERAGE_REASON,
                                quantization=quantization, notes=notes)


def _options(job: ConversionJob) -> Any:
    """Check the profile's [converter] values (a typo surfaces here, not later on a Mac); return the target."""
    import coremltools as ct

    name = job.profile.converter.get("minimum_deployment_target")
    known = list(ct.target.__members__)
    if name not in known:
        raise ProfileError(f"device profile {job.profile.id!r}: [converter] minimum_deployment_target must be one of "
                           f"{', '.join(known)}, got {name!r}")
    units = job.profile.converter.get("compute_units", "ALL")
    if units not in ct.ComputeUnit.__members__:
        raise ProfileError(f"device profile {job.profile.id!r}: [converter] compute_units must be one of "
                           f"{', '.join(ct.ComputeUnit.__members__)}, got {units!r}")
    return ct.target[name]


def _export(job: ConversionJob) -> torch.export.ExportedProgram:
    """Capture the model as core ATen ops, the graph coremltools' torch.export frontend reads."""
    try:
        return torch.export.export(job.model, tuple(job.example_inputs)).run_decompositions({})
    except Exception as exc:
        raise ConversionError(f"torch.export could not capture the model: {type(exc).__name__}: {_first_line(exc)}",
                              fmt="coreml", device=job.profile.id,
                              hint="make forward() exportable (no data-dependent Python control flow; "
                                   "the chained torch.export error names the line)") from exc


def _output_dtypes(exported: torch.export.ExportedProgram) -> list[torch.dtype]:
    """Dtypes of the model's own outputs (buffer mutations, if any, come first in the graph's output node)."""
    from torch.export.graph_signature import OutputKind

    nodes = exported.graph.output_node().args[0]
    return [node.meta["val"].dtype for node, spec in zip(nodes, exported.graph_signature.output_specs)
            if spec.kind == OutputKind.USER_OUTPUT]


def _io_dtype(dtype: torch.dtype) -> type | None:
    """Core ML feature dtype for a torch I/O tensor: floats keep their width, ints become int32 (no int64 features)."""
    if dtype.is_floating_point:
        return {torch.float32: np.float32, torch.float16: np.float16}.get(dtype)  # None: coremltools decides
    return None if dtype.is_complex or dtype == torch.bool else np.int32


def _conversion_error(exc: Exception, job: ConversionJob) -> ConversionError:
    message = str(exc)
    passthrough = _PASSTHROUGH.search(message)
    if passthrough:  # ct's own message is an assertion about block names; say what the user did
        return ConversionError(f"output {passthrough.group(2)} is input {passthrough.group(1)} returned unchanged "
                               "(or through an identity such as clone), and a Core ML program cannot give one "
                               "tensor two names", fmt="coreml", device=job.profile.id,
                               hint="drop that output from forward(): the caller already has the tensor")
    op = next((m.group(1) for p in _OP_PATTERNS if (m := p.search(message))), None)
    hint = ("rewrite it with ops Core ML supports, or register a translation with "
            "coremltools.converters.mil.frontend.torch.register_torch_op; or export for a device whose toolchain "
            "converts it, e.g. 'intel-cpu' (OpenVINO) or 'android-arm64' (ExecuTorch)") if op else \
        "run with logging at DEBUG for coremltools' full message"
    return ConversionError(f"coremltools {type(exc).__name__}: {_first_line(exc)}", fmt="coreml",
                           device=job.profile.id, op=op, hint=hint)


def _check_spec(summary: dict[str, Any], job: ConversionJob, spec_version: int) -> None:
    """Fail loudly if the saved model does not declare what the bundle's manifest will promise."""
    problems = []
    if summary["specification_version"] != spec_version:
        problems.append(f"specification version {summary['specification_version']}, expected {spec_version}")
    got_in = [(f["name"], f.get("shape")) for f in summary["inputs"]]
    want_in = [(name, list(t.shape)) for name, t in zip(job.input_names, job.example_inputs)]
    if got_in != want_in:
        problems.append(f"inputs {got_in}, expected {want_in}")
    got_out = [f["name"] for f in summary["outputs"]]
    if got_out != list(job.output_names):
        problems.append(f"outputs {got_out}, expected {list(job.output_names)}")
    weights = summary["weight_dtypes"]
    if job.precision.name == "fp16" and weights and "float16" not in weights:
        problems.append(f"fp16 recipe but no fp16 weights (weights by dtype: {weights})")
    if job.precision.name == "fp32" and "float16" in weights:
        problems.append(f"fp32 recipe but fp16 weights (weights by dtype: {weights})")
    if problems:
        raise ConversionError("the saved model.mlpackage does not match the request: " + "; ".join(problems),
                              fmt="coreml", device=job.profile.id,
                              hint="report this with the model; coremltools produced an unexpected program")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else ""
