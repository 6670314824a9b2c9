"""torch -> ONNX for TensorRT (Jetson) and ONNX Runtime.

The graph is exported at static shapes and the profile's opset (what the device's TensorRT parser
reads: TensorRT 8.6, JetPack 5 / 6.0, stops at opset 17), then onnxslim folds constants and BatchNorm
into the preceding Conv. Opset 18+ goes through the torch.export-based exporter. That exporter cannot
write opset 17: it exports 18 and converts down with ONNX's version converter, which fails on Reduce*
(axes not yet constant there) and has no 18 -> 17 adapter for Split or Pad, and on failure it logs and
returns opset 18. So opset 17 uses the TorchScript exporter, which writes it natively (deprecated since
torch 2.9, still shipped in 2.13; it traces, so Python control flow would be frozen at the example inputs:
where the tracer reads a tensor's value, `driver.refuse_traced_branches` refuses a branch on the data).

The ONNX stays fp32 for the fp16 recipe: TensorRT picks fp16 kernels per layer when the engine is
built with its fp16 flag, NVIDIA's documented route (`trtexec --fp16`), and the `tensorrt` backend
asks for that.

The plug-in's helpers, by what they hold: `export` (the two torch exporters, the opset, writing the
file), `quantize` (ONNX Runtime's quantizers in TensorRT's Q/DQ form), `weights` (which torch module
each node comes from, and what the saved graph stores per layer).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import onnx
import onnxslim

import converters
from converters import driver
from converters.base import ConversionJob, ConversionResult, Converter, first_match
from converters.onnx.export import DEFAULT_OPSET, DYNAMO_MIN_OPSET, _export_dynamo, _export_torchscript, _opset, _save
from converters.onnx.quantize import _QUANTIZERS, INT4_OPSET, TENSORRT_INT4_BLOCKS
from converters.onnx.weights import _fp16_account, _read_back
from sdk.core.errors import ConversionError, ProfileError, UnsupportedRecipeError
from sdk.core.results import Unavailable

__all__ = ["ONNXConverter"]

MODEL_FILE = "model.onnx"
_EXPORT_STAGE = "torch.onnx.export"
COVERAGE_REASON = ("the device's runtime decides which layers run on its accelerator when it loads the model "
                   "(TensorRT's ONNX parser at engine build, ONNX Runtime's execution-provider partitioning); "
                   "the host cannot tell without that runtime and GPU")
_OP_PATTERNS = (re.compile(r"target=torch\.ops\.([\w.]+)"),  # torch.export-based exporter
                re.compile(r"Exporting the operator '([^']+)'"),  # TorchScript exporter
                re.compile(r"operator with unrecognized namespace ([\w:.]+?)\.?\s"))  # TorchScript, custom ops


@converters.register
class ONNXConverter(Converter):
    """Writes one `model.onnx` (weights inline below 2 GiB): fp32, or a Q/DQ graph for the quantized recipes."""

    format = "onnx"
    supported = frozenset({"fp32", "fp16", "int8", "int4"})
    options = {
        "opset": f"ONNX opset the device's TensorRT / ONNX Runtime parses (>= 17, default {DEFAULT_OPSET})",
        "num_threads": "ONNX Runtime intra-op threads for CPU execution (default: ONNX Runtime's choice)",
    }

    error_patterns = _OP_PATTERNS

    def failed_op(self, message: str) -> str | None:
        """The aten/prims op the exporter could not translate, as its error names it."""
        found = re.search(r"OpOverload\(op='([^']+)', overload='([^']+)'\)", message)
        return f"{found.group(1)}.{found.group(2)}" if found else first_match(_OP_PATTERNS, message)

    def summary(self, exc: Exception) -> str:
        """The innermost cause from the exporter's '## Exception summary', else its first line."""
        message = str(exc)
        summary = message.partition("## Exception summary")[2]
        causes = re.findall(r"^<class '[^']+'>: (.+)$", summary, flags=re.MULTILINE)
        text = causes[0] if causes else (message.strip().splitlines() or ["unknown error"])[0]
        return re.sub(r"\x1b\[[0-9;]*m", "", text).rstrip(".")

    def hint_for(self, exc: Exception, op: str | None, stage: str | None) -> str:
        if stage == _EXPORT_STAGE:
            return "replace that op with ones ONNX has, or give torch.onnx a translation for it"
        return "keep the layer it names in float (sdk.export(..., tolerance=...) or keep_float), or use 'fp16'"

    def build(self, job: ConversionJob) -> ConversionResult:
        opset = int(job.profile.converter.get("opset", DEFAULT_OPSET))
        if opset < 17:
            raise ProfileError(f"device profile {job.profile.id!r}: [converter] opset must be >= 17 "
                               f"(the first with LayerNormalization), got {opset}")
        quantize = _QUANTIZERS.get(job.precision.name)
        if quantize is not None:
            _check_request(job)
        export_opset = DEFAULT_OPSET if quantize else opset  # quantized: TorchScript names, raised afterwards
        with driver.stage(_EXPORT_STAGE):
            if export_opset >= DYNAMO_MIN_OPSET:
                model = _export_dynamo(job, export_opset)
            else:
                with driver.refuse_traced_branches(job) as traced:
                    model = _export_torchscript(traced, export_opset)
        if _opset(model) > opset:  # an exporter that could not reach the opset keeps its own, silently
            raise ConversionError(f"the exporter wrote opset {_opset(model)}, the device parses up to {opset}",
                                  fmt="onnx", device=job.profile.id,
                                  hint="raise [converter] opset in the device profile if its TensorRT reads it")
        if len(model.graph.output) != len(job.output_names):
            raise ConversionError(f"the exported graph has {len(model.graph.output)} output(s), the model "
                                  f"{len(job.output_names)}", fmt="onnx", device=job.profile.id,
                                  hint="return only tensors (no None / Python numbers) from forward()")
        # onnxslim's FusionGemm turns a 3-D MatMul + Add into Reshape-Gemm-Reshape, which INT4 (MatMul only) cannot take
        model = onnxslim.slim(model, skip_fusion_patterns=["FusionGemm"]) if quantize else onnxslim.slim(model)
        account, float_reasons = None, {}
        if quantize is not None:
            with driver.stage(f"quantizing the ONNX graph ({job.precision})"):
                model, account, float_reasons = quantize(job, model)
        path = Path(job.workdir) / MODEL_FILE
        _save(model, path)
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ConversionError(f"the exported graph is not valid ONNX: {str(exc).splitlines()[0]}",
                                  fmt="onnx", device=job.profile.id,
                                  hint="report this with the model; another [converter] opset may avoid it") from exc
        if account is not None:
            account = _read_back(job, onnx.load(str(path)), account, float_reasons)
        elif job.precision.name == "fp16":
            account = _fp16_account(model)
        return ConversionResult(model_file=MODEL_FILE, coverage=Unavailable(COVERAGE_REASON),
                                quantization=account, notes=_notes(model, job, export_opset),
                                runtime_options={"opset": _opset(model)})


def _check_request(job: ConversionJob) -> None:
    """Refuse, before any export, what the quantizers or TensorRT cannot do."""
    group = getattr(job.precision, "group_size", None)
    if job.precision.name == "int4" and group not in TENSORRT_INT4_BLOCKS:
        raise UnsupportedRecipeError(
            f"{job.precision} (INT4 blocks of {group}; TensorRT's INT4 weight-only quantization takes blocks of "
            f"{' or '.join(map(str, TENSORRT_INT4_BLOCKS))})", "onnx", job.profile.id,
            [p for p in job.profile.precisions if p in ONNXConverter.supported and p != "int4"]
            + [f"int4:{b}" for b in TENSORRT_INT4_BLOCKS])


def _notes(model: onnx.ModelProto, job: ConversionJob, export_opset: int) -> list[str]:
    ops = Counter(node.op_type for node in model.graph.node)
    exporter = ("torch.export-based" if export_opset >= DYNAMO_MIN_OPSET
                else "TorchScript (deprecated; its node names carry the module paths keep_float maps onto)"
                if job.precision.name in _QUANTIZERS
                else "TorchScript (deprecated; the only torch exporter that writes opset 17)")
    raised = (f" (exported at opset {export_opset}, raised with ONNX's version converter)"
              if _opset(model) != export_opset else "")
    notes = [f"ONNX opset {_opset(model)}{raised} from the {exporter} exporter, {sum(ops.values())} nodes: "
             + ", ".join(f"{op} x{n}" for op, n in ops.most_common())]
    if ops.get("BatchNormalization"):
        notes.append(f"{ops['BatchNormalization']} BatchNormalization node(s) not after a Conv stay unfolded "
                     "(TensorRT runs them as scale layers)")
    if job.precision.name == "fp16":
        notes.append("fp16: the file keeps fp32 weights; the device's TensorRT engine is built with fp16 enabled, "
                     "so the bundle's size is the fp32 size")
    if job.precision.name == "int8":
        notes.append("int8: explicit Q/DQ graph; TensorRT runs the quantized Conv/Gemm/MatMul in INT8 on the GPU's "
                     "Tensor Cores (the tensorrt runtime enables its INT8 builder flag). On this host ONNX Runtime's "
                     "CPU kernels stand in for parity only: their speed says nothing about the Jetson's")
    if job.precision.name == "int4":
        notes.append(f"int4: opset {INT4_OPSET} graph with INT4 DequantizeLinear blocks: it needs TensorRT >= 10 "
                     "(JetPack 6.1+); TensorRT 8.6 (JetPack 5 / 6.0) cannot build it. Weight-only INT4 cuts weight "
                     "memory and bandwidth; the matrix multiplies still run in fp16 (W4A16)")
    return notes
