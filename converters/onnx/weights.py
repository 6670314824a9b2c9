"""Which torch module each node of a TorchScript-exported graph comes from, and what the saved graph stores:
each weight's dtype, and each conv/linear layer's outcome with a reason.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import onnx
from onnx import TensorProto

from converters import driver
from converters.base import ConversionJob
from converters.quant.sensitivity import quantizable_layers
from sdk.core.results import FloatLayer, QuantAccount

__all__ = ["layer_weights", "module_of"]

#: ops whose second input is a weight: the ones quantized, and the ones the report accounts for
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_DTYPES = {TensorProto.FLOAT: "fp32", TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16",
           TensorProto.INT8: "int8", TensorProto.UINT8: "uint8", TensorProto.INT4: "int4", TensorProto.UINT4: "uint4"}
_INTEGER = {"int8", "uint8", "int4", "uint4"}


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


def _read_back(job: ConversionJob, model: onnx.ModelProto, account: QuantAccount,
               float_reasons: dict[str, str]) -> QuantAccount:
    """The account completed from the saved file: each weight's dtype, and each conv/linear layer's outcome with
    a reason."""
    modules = [name for name, _ in job.model.named_modules() if name]
    outcome = {}
    for node, _, dtype in layer_weights(model):
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
        float_layers.append(FloatLayer(layer, reason))
    return replace(account, quantized_layers=quantized, float_layers=float_layers, weight_dtypes=_weight_dtypes(model))


def _weight_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """How many weight initializers the graph stores in each dtype (one count per initializer, however many
    nodes read it)."""
    return dict(Counter({weight: dtype for _, weight, dtype in layer_weights(model)}.values()))


def _fp16_account(model: onnx.ModelProto) -> QuantAccount:
    """fp16 is TensorRT's build flag, so the file keeps fp32 weights (as read back) and the engine runs fp16."""
    return QuantAccount(scheme="weights stay fp32 in the file; the device's TensorRT engine is built with fp16 "
                               "enabled and keeps fp32 where a layer has no faster fp16 kernel",
                        activations="float16", weight_dtypes=_weight_dtypes(model),
                        toolchain="TensorRT builder fp16 flag at engine build (ONNX Runtime "
                                  "TensorrtExecutionProvider trt_fp16_enable)")
