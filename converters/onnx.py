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

Quantized recipes write explicit Q/DQ graphs with ONNX Runtime's own quantizers, in the form TensorRT
builds engines from (symmetric, zero point 0):
- "int8": `quantize_static`, QDQ format, int8 weights per channel and int8 activations calibrated on
  the inputs of Conv/Gemm/MatMul only; biases and the ops' outputs stay float (NVIDIA's Q/DQ placement:
  TensorRT fuses them itself). Opset unchanged.
- "int4": weight-only, block-wise INT4 on MatMul weights (`MatMulNBitsQuantizer` in QDQ format:
  DequantizeLinear with `block_size`, an opset-21 op), so the graph is raised to opset 21 with ONNX's
  version converter and needs TensorRT >= 10, which takes blocks of 64 or 128 only.
- "int8-dynamic" is not offered: TensorRT has no run-time INT8 activation quantization, and ONNX
  Runtime's `quantize_dynamic` writes DynamicQuantizeLinear / ConvInteger / MatMulInteger, which
  TensorRT's ONNX parser does not import.
Quantized graphs always come from the TorchScript exporter: its node names carry the torch module path
('/layers/layers.0/attn/q/MatMul'), which is how `keep_float` becomes ORT's `nodes_to_exclude`. The
torch.export-based exporter keeps that path only in metadata that onnxslim drops, and names a Conv
with its BatchNorm folded in after the BatchNorm.
"""
from __future__ import annotations

import io
import logging
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import onnxslim
import torch
from onnx import TensorProto, version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

import converters
from converters import driver
from converters.base import ConversionJob, ConversionResult, Converter, first_match
from converters.quant.sensitivity import quantizable_layers
from sdk.core.errors import ConversionError, ProfileError, UnsupportedRecipeError

__all__ = ["ONNXConverter", "layer_weights", "module_of"]

MODEL_FILE = "model.onnx"
_EXPORT_STAGE = "torch.onnx.export"
DEFAULT_OPSET = 17
#: lowest opset the torch.export-based exporter writes natively
DYNAMO_MIN_OPSET = 18
#: DequantizeLinear with block_size (blocked INT4 weights) exists from this opset on
INT4_OPSET = 21
#: block sizes TensorRT's INT4 weight-only quantization takes
TENSORRT_INT4_BLOCKS = (64, 128)
#: ops whose second input is a weight: the ones quantized, and the ones the report accounts for
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: protobuf cannot serialise a message over 2 GiB: larger weights go to one external-data file
INLINE_LIMIT_BYTES = 2**31 - 1
COVERAGE_REASON = ("the device's runtime decides which layers run on its accelerator when it loads the model "
                   "(TensorRT's ONNX parser at engine build, ONNX Runtime's execution-provider partitioning); "
                   "the host cannot tell without that runtime and GPU")
_DTYPES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
           TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT4: "int4", TensorProto.UINT4: "uint4"}
_INTEGER = {"int8", "uint8", "int4", "uint4"}
_OP_PATTERNS = (re.compile(r"target=torch\.ops\.([\w.]+)"),  # torch.export-based exporter
                re.compile(r"Exporting the operator '([^']+)'"),  # TorchScript exporter
                re.compile(r"operator with unrecognized namespace ([\w:.]+?)\.?\s"))  # TorchScript, custom ops
_INT4_SKIPS = {"Conv": "a Conv weight: TensorRT's INT4 is weight-only for matrix multiplies, and ONNX Runtime's "
                       "block-wise quantizer takes MatMul only",
               "ConvTranspose": "a ConvTranspose weight: TensorRT's INT4 is weight-only for matrix multiplies",
               "Gemm": "exported as Gemm (a Linear on a 2-D input): ONNX Runtime's block-wise INT4 quantizer "
                       "takes MatMul only"}

#: a quantizer: (job, slimmed fp32 graph) -> (quantized graph, report fields, {node name: why it stays float})
Quantizer = Callable[[ConversionJob, onnx.ModelProto], tuple[onnx.ModelProto, dict[str, str], dict[str, str]]]


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
            model = (_export_dynamo(job, export_opset) if export_opset >= DYNAMO_MIN_OPSET
                     else _export_torchscript(job, export_opset))
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
        quantization = _precision_record(job)
        if account is not None:
            quantization = {**account, **_read_back(job, onnx.load(str(path)), float_reasons)}
        return ConversionResult(model_file=MODEL_FILE, coverage=None, coverage_reason=COVERAGE_REASON,
                                quantization=quantization, notes=_notes(model, job, export_opset),
                                runtime_options={"opset": _opset(model)})


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


# --- quantization (ONNX Runtime's quantizers; keep_float mapped onto their nodes_to_exclude) ---

def _check_request(job: ConversionJob) -> None:
    """Refuse, before any export, what the quantizers or TensorRT cannot do."""
    group = getattr(job.precision, "group_size", None)
    if job.precision.name == "int4" and group not in TENSORRT_INT4_BLOCKS:
        raise UnsupportedRecipeError(
            f"{job.precision} (INT4 blocks of {group}; TensorRT's INT4 weight-only quantization takes blocks of "
            f"{' or '.join(map(str, TENSORRT_INT4_BLOCKS))})", "onnx", job.profile.id,
            [p for p in job.profile.precisions if p in ONNXConverter.supported and p != "int4"]
            + [f"int4:{b}" for b in TENSORRT_INT4_BLOCKS])


def _int8(job: ConversionJob, model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str], dict[str, str]]:
    """Static INT8 QDQ the way TensorRT builds it: symmetric, Q/DQ on the inputs of weighted ops only."""
    config = job.precision
    opset = int(job.profile.converter.get("opset", DEFAULT_OPSET))
    model = _raise_opset(model, opset)
    calibration = job.calibration or [job.example_inputs]
    with tempfile.TemporaryDirectory(prefix="edge-sdk-ort-quant-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # ONNX shape inference only: ORT's graph optimisation would rename the nodes nodes_to_exclude names, and
        # symbolic shape inference adds nothing to a static-shape graph
        quant_pre_process(model, str(prepared), skip_optimization=True, skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(quantized), _Calibration(job.input_names, calibration), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(WEIGHTED_OPS), per_channel=config.per_channel,
            weight_type=QuantType.QInt8, activation_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=_nodes_in(model, job.model, job.keep_float),
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                           "QuantizeBias": False,  # TensorRT dequantizes int8/fp8/int4, not int32 biases
                           "MatMulConstBOnly": True,  # Linear layers, not attention's activation x activation
                           "OpTypesToExcludeOutputQuantization": list(WEIGHTED_OPS),
                           "DedicatedQDQPair": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})
        model = onnx.load(str(quantized))
    return model, {
        "toolchain": f"ONNX Runtime {onnxruntime.__version__} quantize_static (QuantFormat.QDQ), for TensorRT "
                     "explicit quantization",
        "scheme": f"weights int8 {'per-channel' if config.per_channel else 'per-tensor'} symmetric; activations "
                  f"int8 per-tensor symmetric (TensorRT requires zero point 0), MinMax ranges over "
                  f"{len(calibration)} calibration samples, on the inputs of Conv/Gemm/MatMul only (their outputs "
                  f"and biases stay float); opset {_opset(model)}",
        "activations": "int8 per-tensor symmetric, calibrated (inputs of Conv/Gemm/MatMul)",
    }, {}


def _int4(job: ConversionJob, model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str], dict[str, str]]:
    """INT4 weight-only, block-wise along each MatMul weight's input dimension, as QDQ (opset 21)."""
    block = job.precision.group_size
    model = _raise_opset(model, max(int(job.profile.converter.get("opset", DEFAULT_OPSET)), INT4_OPSET))
    model.ir_version = max(model.ir_version, 10)  # INT4 tensors need IR 10; the version converter keeps the old IR
    kept = _nodes_in(model, job.model, job.keep_float)
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    skipped = {}
    for node, weight, _ in layer_weights(model):
        if node.name in kept:
            continue
        if node.op_type != "MatMul":
            skipped[node.name] = _INT4_SKIPS.get(node.op_type, f"a {node.op_type} weight: INT4 takes MatMul only")
        elif shapes[weight][-2] % block:  # MatMul weights are (K, N): blocks run along K
            skipped[node.name] = (f"its input dimension {shapes[weight][-2]} is not a multiple of the block size "
                                  f"{block} (TensorRT needs whole blocks)")
    nbits = _matmul_nbits()
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True, quant_format=QuantFormat.QDQ,
                                                op_types_to_quantize=("MatMul",))
    quantizer = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=[*kept, *skipped], algo_config=config)
    quantizer.process()
    model = quantizer.model.model
    return model, {
        "toolchain": f"ONNX Runtime {onnxruntime.__version__} MatMulNBitsQuantizer (DefaultWeightOnlyQuantConfig, "
                     "QuantFormat.QDQ), for TensorRT >= 10 weight-only INT4",
        "scheme": f"weights int4 symmetric in blocks of {block} along the input dimension, one fp32 scale per block "
                  f"(DequantizeLinear block_size={block} -> MatMul); activations stay float (weight-only); "
                  f"opset {_opset(model)}, IR {model.ir_version}",
        "activations": "float (weight-only; TensorRT runs the matrix multiplies in fp16)",
    }, skipped


_QUANTIZERS: dict[str, Quantizer] = {"int8": _int8, "int4": _int4}


class _Calibration(CalibrationDataReader):
    """Feeds the calibration samples to ONNX Runtime's calibrator by graph input name."""

    def __init__(self, names: Sequence[str], samples: Sequence[tuple[torch.Tensor, ...]]):
        self._feeds = iter([{name: t.detach().numpy() for name, t in zip(names, sample)} for sample in samples])

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def _matmul_nbits() -> Any:
    """Import ORT's block-wise quantizer without the root-logger setup its import does.

    onnxruntime.quantization.matmul_nbits_quantizer calls logging.basicConfig(level=INFO) at import, which
    would print every library's INFO records in the user's process from then on.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        root.handlers[:], root.level = handlers, level
    matmul_nbits_quantizer.logger.setLevel(logging.WARNING)  # one INFO line per node otherwise
    return matmul_nbits_quantizer


def _raise_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    return model if _opset(model) >= opset else version_converter.convert_version(model, opset)


def module_of(node_name: str, modules: Sequence[str]) -> str | None:
    """The torch module a TorchScript-exported node comes from, read from its scoped name.

    '/layers/layers.0/attn/q/MatMul' is the op inside the scopes 'layers', 'layers.0', 'attn', 'q': each
    called module adds its qualified name from its last non-numeric part on ('layers.0', 'attn'); a
    container that is never called (ModuleList) adds none. Nodes outside any module give None.
    """
    current = ""
    for part in node_name.strip("/").split("/")[:-1]:
        below = [m for m in modules if (m == part or m.endswith("." + part))
                 and (not current or m.startswith(current + "."))]
        if not below:
            return None
        current = min(below, key=len)
    return current or None


def _nodes_in(model: onnx.ModelProto, torch_model: torch.nn.Module, keep_float: frozenset[str]) -> list[str]:
    """Names of the graph nodes that come from a kept module or from inside one: ORT's nodes_to_exclude."""
    if not keep_float:
        return []
    modules = [name for name, _ in torch_model.named_modules() if name]
    return [node.name for node in model.graph.node
            if driver.kept_by(module_of(node.name, modules) or "", keep_float) is not None]


def layer_weights(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str, str]]:
    """(node, weight initializer, dtype label) for every Conv/Gemm/MatMul with a constant weight, as stored.

    A quantized weight is the integer initializer behind the DequantizeLinear that feeds the op; a float
    one is the initializer itself. MatMuls of two activations (attention) have no weight and are left out.
    """
    stored = {t.name: t.data_type for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    found = []
    for node in model.graph.node:
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2:
            continue
        weight = node.input[1]
        if weight in producer and producer[weight].op_type == "DequantizeLinear":
            weight = producer[weight].input[0]
        if weight in stored:
            found.append((node, weight, _DTYPES.get(stored[weight], TensorProto.DataType.Name(stored[weight]).lower())))
    return found


def _read_back(job: ConversionJob, model: onnx.ModelProto, float_reasons: dict[str, str]) -> dict[str, Any]:
    """What the saved file holds: each weight's dtype, and each conv/linear layer's outcome with a reason."""
    modules = [name for name, _ in job.model.named_modules() if name]
    weights, outcome = {}, {}
    for node, weight, dtype in layer_weights(model):
        weights[weight] = dtype
        layer = module_of(node.name, modules)
        if layer is not None and (layer not in outcome or dtype not in _INTEGER):  # float if any use is float
            outcome[layer] = (node, dtype)
    quantized, float_layers = [], []
    for layer in quantizable_layers(job.model):
        node, dtype = outcome.get(layer, (None, None))
        if dtype in _INTEGER:
            quantized.append(layer)
            continue
        reason = driver.kept_reason(layer, job.keep_float)
        if reason is None and node is None:
            reason = "no weighted node of the ONNX graph traces back to it (unused in forward, or folded away)"
        elif reason is None:
            reason = float_reasons.get(node.name, f"ONNX Runtime's quantizer left this {node.op_type} in {dtype}")
        float_layers.append({"name": layer, "reason": reason})
    return {"quantized_layers": quantized, "float_layers": float_layers,
            "weight_dtypes": dict(Counter(weights.values()))}


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


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
