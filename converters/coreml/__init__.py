"""Core ML converter: torch.export -> coremltools ML program (`model.mlpackage`) for the Apple Neural Engine.

coremltools converts anywhere but runs models only on macOS, so the check on a Linux host is the saved
spec: I/O names and static shapes, deployment target, and the weights' dtypes (fp16 really stored as fp16,
int8/int4/LUT weights really stored narrow).

The plug-in's helpers, by what they hold: `export` (the torch.export capture and the I/O dtypes),
`compress` (the quantized recipes in coremltools.optimize.coreml terms, applied), `weights` (the torch
layer behind each weight of the program, and the account read back from the saved spec).
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from converters import register
from converters.base import ConversionJob, ConversionResult, Converter
from converters.coreml.compress import _COMPRESS_STAGE, _compress, _scheme
from converters.coreml.export import _convert, _export, _io_dtype, _output_dtypes
from converters.coreml.weights import _account, _weights
from sdk.core.errors import InternalError, ProfileError, first_line
from sdk.core.readers.coreml import spec_summary, weight_storage
from sdk.core.results import QuantAccount, Unavailable

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

_QUANTIZING = ("int8", "int8-dynamic", "int4", "palettize")


@register
class CoreMLConverter(Converter):
    """fp32/fp16 ML programs (fp16 is the Neural Engine's native precision), and compressed fp16 ones."""

    format = "coreml"
    supported = frozenset({"fp32", "fp16", *_QUANTIZING})
    options = {
        "minimum_deployment_target": "oldest OS the model must load on, a coremltools.target name, e.g. iOS17, macOS15",
        "compute_units": "where Core ML may run it: ALL | CPU_AND_NE | CPU_AND_GPU | CPU_ONLY",
    }

    error_patterns = _OP_PATTERNS

    def summary(self, exc: Exception) -> str:
        passthrough = _PASSTHROUGH.search(str(exc))
        if passthrough:  # ct's own message is an assertion about block names; say what the user did
            return (f"output {passthrough.group(2)} is input {passthrough.group(1)} returned unchanged (or through "
                    "an identity such as clone), and a Core ML program cannot give one tensor two names")
        return first_line(exc)

    def hint_for(self, exc: Exception, op: str | None, stage: str | None) -> str:
        if stage == "torch.export":
            return ("make forward() exportable (no data-dependent Python control flow; the chained torch.export "
                    "error names the line)")
        if stage == _COMPRESS_STAGE:
            return "try another scheme (e.g. 'palettize:8' or 'int8'), or keep the failing layer in float"
        if _PASSTHROUGH.search(str(exc)):
            return "drop that output from forward(): the caller already has the tensor"
        if op:
            return ("rewrite it with ops Core ML supports, or register a translation with "
                    "coremltools.converters.mil.frontend.torch.register_torch_op; or export for a device whose "
                    "toolchain converts it, e.g. 'intel-cpu' (OpenVINO) or 'android-arm64' (ExecuTorch)")
        return "run with logging at DEBUG for coremltools' full message"

    def build(self, job: ConversionJob) -> ConversionResult:
        import coremltools as ct

        target = _options(job)
        precision = job.precision.name
        scheme = _scheme(job, target) if job.precision.quantizes else None  # refuses before any work

        exported = _export(job)
        out_dtypes = _output_dtypes(exported)
        mlmodel, frontend_notes = _convert(
            job, exported, convert_to="mlprogram", minimum_deployment_target=target,
            compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
            skip_model_load=True,
            inputs=[ct.TensorType(name=name, shape=tuple(t.shape), dtype=_io_dtype(t.dtype))
                    for name, t in zip(job.input_names, job.example_inputs)],
            outputs=[ct.TensorType(name=name, dtype=_io_dtype(dtype))
                     for name, dtype in zip(job.output_names, out_dtypes)])
        if scheme is not None:
            weights = _weights(mlmodel, exported, job)
            mlmodel = _compress(mlmodel, scheme, weights, job)
        mlmodel.save(str(job.workdir / MODEL_FILE))

        summary = spec_summary(job.workdir / MODEL_FILE)
        _check_spec(summary, job, target.value)
        notes = [f"ML program, opset {summary['opset']}, spec v{summary['specification_version']}; ops: "
                 + ", ".join(f"{op} x{n}" for op, n in summary["ops"].items()),
                 f"weights by dtype (elements): {summary['weight_dtypes']}", *frontend_notes]
        if precision != "fp32":
            notes.append("inputs/outputs stay float32; the program casts to fp16 on entry and back on exit")
        if precision == "fp16" and "float32" in summary["weight_dtypes"]:
            notes.append(f"{summary['weight_dtypes']['float32']} weight elements stay float32 "
                         "(ops coremltools keeps in fp32)")
        quantization = None
        if scheme is not None:
            quantization = _account(scheme, weights, weight_storage(job.workdir / MODEL_FILE), job)
            notes += scheme.notes
        elif precision == "fp16":
            quantization = QuantAccount(
                scheme="ML program in float16 (compute_precision FLOAT16), the Neural Engine's native precision",
                activations="float16", toolchain=f"coremltools {ct.__version__}",
                weight_dtypes=dict(Counter(e["stored"] for e in weight_storage(job.workdir / MODEL_FILE))))
        return ConversionResult(model_file=MODEL_FILE, coverage=Unavailable(COVERAGE_REASON),
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
        raise InternalError(f"coreml conversion for device {job.profile.id!r}: the saved model.mlpackage does not "
                            f"match the request: {'; '.join(problems)}. Please report this with the model")
