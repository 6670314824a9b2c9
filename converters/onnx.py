"""torch -> ONNX for TensorRT (Jetson) and ONNX Runtime.

The graph is exported at static shapes and the profile's opset (what the device's TensorRT parser
reads: TensorRT 8.6, JetPack 5 / 6.0, stops at opset 17), then onnxslim folds constants and BatchNorm
into the preceding Conv. Opset 18+ goes through the torch.export-based exporter. That exporter cannot
write opset 17: it exports 18 and converts down with ONNX's version converter, which fails on Reduce*
(axes not yet constant there) and has no 18 -> 17 adapter for Split or Pad, and on failure it logs and
returns opset 18. So opset 17 uses the TorchScript exporter, which writes it natively (deprecated since
torch 2.9, still shipped in 2.13; it traces, so Python control flow is frozen at the example inputs).

The ONNX stays fp32 for the fp16 recipe: TensorRT picks fp16 kernels per layer when the engine is
built with its fp16 flag, NVIDIA's documented route (`trtexec --fp16`), and the `tensorrt` backend
asks for that.
"""
from __future__ import annotations

import io
import re
import warnings
from collections import Counter
from pathlib import Path

import onnx
import onnxslim
import torch

import converters
from converters.base import ConversionJob, ConversionResult, Converter
from sdk.errors import ConversionError, ProfileError

__all__ = ["ONNXConverter"]

MODEL_FILE = "model.onnx"
DEFAULT_OPSET = 17
#: lowest opset the torch.export-based exporter writes natively
DYNAMO_MIN_OPSET = 18
#: protobuf cannot serialise a message over 2 GiB: larger weights go to one external-data file
INLINE_LIMIT_BYTES = 2**31 - 1
COVERAGE_REASON = ("the device's runtime decides which layers run on its accelerator when it loads the model "
                   "(TensorRT's ONNX parser at engine build, ONNX Runtime's execution-provider partitioning); "
                   "the host cannot tell without that runtime and GPU")


@converters.register
class ONNXConverter(Converter):
    """Writes one fp32 `model.onnx` (weights inline below 2 GiB) at the profile's opset."""

    format = "onnx"
    supported = frozenset({"fp32", "fp16"})
    options = {
        "opset": f"ONNX opset the device's TensorRT / ONNX Runtime parses (>= 17, default {DEFAULT_OPSET})",
        "num_threads": "ONNX Runtime intra-op threads for CPU execution (default: ONNX Runtime's choice)",
    }

    def convert(self, job: ConversionJob) -> ConversionResult:
        opset = int(job.profile.converter.get("opset", DEFAULT_OPSET))
        if opset < 17:
            raise ProfileError(f"device profile {job.profile.id!r}: [converter] opset must be >= 17 "
                               f"(the first with LayerNormalization), got {opset}")
        try:
            model = _export_dynamo(job, opset) if opset >= DYNAMO_MIN_OPSET else _export_torchscript(job, opset)
        except Exception as exc:
            message = str(exc)
            raise ConversionError(_summary(message), fmt="onnx", device=job.profile.id, op=_failed_op(message),
                                  hint="replace that op with ones ONNX has, or give torch.onnx a translation for "
                                       "it") from exc
        if _opset(model) > opset:  # an exporter that could not reach the opset keeps its own, silently
            raise ConversionError(f"the exporter wrote opset {_opset(model)}, the device parses up to {opset}",
                                  fmt="onnx", device=job.profile.id,
                                  hint="raise [converter] opset in the device profile if its TensorRT reads it")
        if len(model.graph.output) != len(job.output_names):
            raise ConversionError(f"the exported graph has {len(model.graph.output)} output(s), the model "
                                  f"{len(job.output_names)}", fmt="onnx", device=job.profile.id,
                                  hint="return only tensors (no None / Python numbers) from forward()")
        model = onnxslim.slim(model)
        path = Path(job.workdir) / MODEL_FILE
        _save(model, path)
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ConversionError(f"the exported graph is not valid ONNX: {str(exc).splitlines()[0]}",
                                  fmt="onnx", device=job.profile.id,
                                  hint="report this with the model; another [converter] opset may avoid it") from exc
        return ConversionResult(model_file=MODEL_FILE, coverage=None, coverage_reason=COVERAGE_REASON,
                                quantization=_precision_record(job), notes=_notes(model, job, opset))


def _export_dynamo(job: ConversionJob, opset: int) -> onnx.ModelProto:
    program = torch.onnx.export(job.model, tuple(job.example_inputs), dynamo=True, opset_version=opset,
                                input_names=list(job.input_names), output_names=list(job.output_names),
                                external_data=False, verbose=False)
    return program.model_proto


def _export_torchscript(job: ConversionJob, opset: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # its deprecation is recorded in the notes instead
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(job.model, tuple(job.example_inputs), buffer, dynamo=False, opset_version=opset,
                          input_names=list(job.input_names), output_names=list(job.output_names),
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


def _save(model: onnx.ModelProto, path: Path) -> None:
    """One self-contained file, unless the weights exceed protobuf's 2 GiB limit."""
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    if weight_bytes < INLINE_LIMIT_BYTES:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")


def _precision_record(job: ConversionJob) -> dict | None:
    if job.precision.name != "fp16":
        return None
    return {"weights_in_file": "fp32", "engine": "fp16",
            "method": "TensorRT builder fp16 flag at engine build (ONNX Runtime TensorrtExecutionProvider "
                      "trt_fp16_enable); TensorRT keeps fp32 where a layer has no faster fp16 kernel"}


def _notes(model: onnx.ModelProto, job: ConversionJob, opset: int) -> list[str]:
    ops = Counter(node.op_type for node in model.graph.node)
    exporter = ("torch.export-based" if opset >= DYNAMO_MIN_OPSET
                else "TorchScript (deprecated; the only torch exporter that writes opset 17)")
    notes = [f"ONNX opset {_opset(model)} from the {exporter} exporter, {sum(ops.values())} nodes: "
             + ", ".join(f"{op} x{n}" for op, n in ops.most_common())]
    if ops.get("BatchNormalization"):
        notes.append(f"{ops['BatchNormalization']} BatchNormalization node(s) not after a Conv stay unfolded "
                     "(TensorRT runs them as scale layers)")
    if job.precision.name == "fp16":
        notes.append("fp16: the file keeps fp32 weights; the device's TensorRT engine is built with fp16 enabled, "
                     "so the bundle's size is the fp32 size")
    return notes


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _failed_op(message: str) -> str | None:
    """The aten/prims op the exporter could not translate, as its error names it."""
    found = re.search(r"OpOverload\(op='([^']+)', overload='([^']+)'\)", message)
    if found:
        return f"{found.group(1)}.{found.group(2)}"
    found = (re.search(r"target=torch\.ops\.([\w.]+)", message)  # torch.export-based exporter
             or re.search(r"Exporting the operator '([^']+)'", message))  # TorchScript exporter
    return found.group(1) if found else None


def _summary(message: str) -> str:
    """The innermost cause from the exporter's '## Exception summary', else its first line."""
    summary = message.partition("## Exception summary")[2]
    causes = re.findall(r"^<class '[^']+'>: (.+)$", summary, flags=re.MULTILINE)
    text = causes[0] if causes else (message.strip().splitlines() or ["unknown error"])[0]
    return re.sub(r"\x1b\[[0-9;]*m", "", text).rstrip(".")
