"""Quantization with ONNX Runtime's own quantizers; keep_float mapped onto their nodes_to_exclude.

Quantized recipes write explicit Q/DQ graphs, in the form TensorRT builds engines from (symmetric, zero point 0):
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

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
from onnx import version_converter
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from converters import driver
from converters.base import ConversionJob
from converters.onnx.export import DEFAULT_OPSET, _opset
from converters.onnx.weights import WEIGHTED_OPS, layer_weights, module_of
from sdk.core.results import QuantAccount

#: DequantizeLinear with block_size (blocked INT4 weights) exists from this opset on
INT4_OPSET = 21
#: block sizes TensorRT's INT4 weight-only quantization takes
TENSORRT_INT4_BLOCKS = (64, 128)
_INT4_SKIPS = {"Conv": "a Conv weight: TensorRT's INT4 is weight-only for matrix multiplies, and ONNX Runtime's "
                       "block-wise quantizer takes MatMul only",
               "ConvTranspose": "a ConvTranspose weight: TensorRT's INT4 is weight-only for matrix multiplies",
               "Gemm": "exported as Gemm (a Linear on a 2-D input): ONNX Runtime's block-wise INT4 quantizer "
                       "takes MatMul only"}

#: a quantizer: (job, slimmed fp32 graph) -> (quantized graph, its account before the read-back fills the layers,
#: {node name: why it stays float})
Quantizer = Callable[[ConversionJob, onnx.ModelProto], tuple[onnx.ModelProto, QuantAccount, dict[str, str]]]


def _int8(job: ConversionJob, model: onnx.ModelProto) -> tuple[onnx.ModelProto, QuantAccount, dict[str, str]]:
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
    return model, QuantAccount(
        toolchain=f"ONNX Runtime {onnxruntime.__version__} quantize_static (QuantFormat.QDQ), for TensorRT "
                  "explicit quantization",
        scheme=f"weights int8 {'per-channel' if config.per_channel else 'per-tensor'} symmetric; activations "
               f"int8 per-tensor symmetric (TensorRT requires zero point 0), MinMax ranges over "
               f"{len(calibration)} calibration samples, on the inputs of Conv/Gemm/MatMul only (their outputs "
               f"and biases stay float); opset {_opset(model)}",
        activations="int8-static"), {}


def _int4(job: ConversionJob, model: onnx.ModelProto) -> tuple[onnx.ModelProto, QuantAccount, dict[str, str]]:
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
    return model, QuantAccount(
        toolchain=f"ONNX Runtime {onnxruntime.__version__} MatMulNBitsQuantizer (DefaultWeightOnlyQuantConfig, "
                  "QuantFormat.QDQ), for TensorRT >= 10 weight-only INT4",
        scheme=f"weights int4 symmetric in blocks of {block} along the input dimension, one fp32 scale per block "
               f"(DequantizeLinear block_size={block} -> MatMul); activations stay float (weight-only; TensorRT "
               f"runs the matrix multiplies in fp16); opset {_opset(model)}, IR {model.ir_version}",
        activations="float16"), skipped


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


def _nodes_in(model: onnx.ModelProto, torch_model: torch.nn.Module, keep_float: frozenset[str]) -> list[str]:
    """Names of the graph nodes that come from a kept module or from inside one: ORT's nodes_to_exclude."""
    if not keep_float:
        return []
    modules = [name for name, _ in torch_model.named_modules() if name]
    return [node.name for node in model.graph.node
            if driver.kept_by(module_of(node.name, modules) or "", keep_float) is not None]
