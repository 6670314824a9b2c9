"""What the program stores: each layer's weight dtype in the graph handed to lowering, the weight dtypes read back
from the XNNPACK payloads inside the written `.pte`, and the report's per-layer account built from them.
"""
from __future__ import annotations

import importlib.resources
import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from executorch.backends.xnnpack import serialization as xnnpack_serialization
from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
from executorch.exir._serialize._flatbuffer import _flatc_decompile
from executorch.exir._serialize._program import deserialize_pte_binary
from torch.export import ExportedProgram

from converters import driver
from converters.base import ConversionJob
from converters.executorch.quantize import _activations, _int4_skip_reason, _scheme
from sdk.core.recipes import Int4Weight, Int8Dynamic
from sdk.core.results import FloatLayer, QuantAccount

MODEL_FILE = "model.pte"
#: ops of the exported graph that are a conv or linear layer, with their weight as argument 1; a conv given
#: `padding="same"` / `"valid"` (Hugging Face EfficientNet's, every one) exports as the `.padding` overload
_LAYER_OPS = frozenset({torch.ops.aten.linear.default, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
                        torch.ops.aten.conv3d.default, torch.ops.aten.conv1d.padding, torch.ops.aten.conv2d.padding,
                        torch.ops.aten.conv3d.padding, torch.ops.aten.conv_transpose1d.default,
                        torch.ops.aten.conv_transpose2d.input, torch.ops.aten.conv_transpose3d.input})
#: what a quantizer puts between an integer weight and the op that reads it (PT2E, torchao's quantize_)
_DEQUANTIZE = frozenset({torch.ops.quantized_decomposed.dequantize_per_channel.default,
                         torch.ops.quantized_decomposed.dequantize_per_tensor.default,
                         torch.ops.torchao.dequantize_affine.default})
_FLOAT_LABELS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
#: XNNPACK weight datatypes (backends/xnnpack/serialization/schema.fbs, less the xnn_datatype_ prefix) as the
#: report's dtype names: qc = per channel, qb = per block, qd = dynamic (activations)
_XNN_LABELS = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "qint8": "int8", "qcint8": "int8", "qcint4": "int4",
               "qbint4": "int4"}
_XNNPACK_ID = "XnnpackBackend"


def _weight_dtype(weight: Any) -> str:
    """The dtype a conv/linear weight is stored in: int<bits> behind a dequantize (bits from its integer range,
    so torchao's int4-in-int8 storage reads as int4), else the float dtype of the constant."""
    if isinstance(weight, torch.fx.Node) and weight.target in _DEQUANTIZE:
        schema = weight.target._schema.arguments
        args = {**{a.name: a.default_value for a in schema if a.has_default_value()},
                **dict(zip((a.name for a in schema), weight.args)), **weight.kwargs}
        info = torch.iinfo(args.get("input_dtype", args.get("dtype")))
        low = info.min if args.get("quant_min") is None else args["quant_min"]
        high = info.max if args.get("quant_max") is None else args["quant_max"]
        return f"int{(high - low).bit_length()}"
    value = weight.meta.get("val") if isinstance(weight, torch.fx.Node) else None
    dtype = getattr(value, "dtype", None)
    return _FLOAT_LABELS.get(dtype, str(dtype).replace("torch.", ""))


def _layer_weights(exported: ExportedProgram) -> dict[str, str]:
    """Per torch module that runs a conv or linear op in the graph handed to lowering: its weight's dtype."""
    layers: dict[str, str] = {}
    for node in exported.graph.nodes:
        stack = list(node.meta.get("nn_module_stack", {}).values())
        if node.op == "call_function" and node.target in _LAYER_OPS and stack:
            layers.setdefault(stack[-1][0], _weight_dtype(node.args[1]))
    return layers


def _xnnpack_graphs(pte: bytes) -> Iterator[dict[str, Any]]:
    """The XNNGraph of every XNNPACK delegate in a `.pte`, as JSON.

    ExecuTorch has no public reader for a delegate's payload, so this uses its own serialization internals
    (`deserialize_pte_binary`, `XNNHeader`, `_flatc_decompile` with XNNPACK's schema.fbs): pinned to
    executorch 1.5.1 and covered by the tests.
    """
    program = deserialize_pte_binary(pte).program
    schema = importlib.resources.files(xnnpack_serialization).joinpath("schema.fbs").read_bytes()
    for plan in program.execution_plan:
        for delegate in plan.delegates:
            if delegate.id != _XNNPACK_ID:
                continue
            payload = program.backend_delegate_data[delegate.processed.index].data
            header = XNNHeader.from_bytes(payload[:XNNHeader.EXPECTED_LENGTH])
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                (folder / "schema.fbs").write_bytes(schema)
                (folder / "graph.bin").write_bytes(
                    payload[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size])
                _flatc_decompile(tmp, str(folder / "schema.fbs"), str(folder / "graph.bin"))
                text = (folder / "graph.json").read_text()
            # flatc writes non-finite floats (a ReLU's output_max) bare; JSON's spelling is Infinity / NaN
            yield json.loads(re.sub(r"(?<=: )(-?)inf\b", r"\1Infinity", text).replace(": nan", ": NaN"))


def _xnnpack_storage(pte: bytes) -> dict[str, Counter]:
    """XNNPACK datatypes of the weight, bias and input of every conv / fully-connected node in the `.pte`."""
    found: dict[str, Counter] = {"weights": Counter(), "biases": Counter(), "inputs": Counter()}
    roles = {"filter_id": "weights", "bias_id": "biases", "input1_id": "inputs"}
    for graph in _xnnpack_graphs(pte):
        dtypes = {}
        for value in graph["xvalues"]:
            tensor = value["xvalue_union"].get("tensor_value", value["xvalue_union"])
            dtypes[tensor["id_out"]] = tensor["datatype"].removeprefix("xnn_datatype_")
        for node in graph["xnodes"]:
            fields = node["xnode_union"]
            if "filter_id" in fields:
                for key, role in roles.items():
                    if key in fields and fields[key] in dtypes:
                        found[role][dtypes[fields[key]]] += 1
    return found


def _float_reason(layer: str, dtype: str, job: ConversionJob) -> str:
    module = dict(job.model.named_modules()).get(layer)
    if isinstance(job.precision, Int4Weight) and module is not None:
        reason = _int4_skip_reason(module, layer, job)
    else:
        reason = driver.kept_reason(layer, job.keep_float)
    if reason is None:
        reason = ("XNNPACKQuantizer's dynamic INT8 config does not take it (it quantizes linear layers and 2-D "
                  "convs that are neither depthwise nor followed by a ReLU)" if isinstance(job.precision, Int8Dynamic)
                  else "the quantizer left it float (no quantization pattern of its config matched the op)")
    return f"{reason}; stays {dtype}"


def _layers_account(job: ConversionJob, layers: dict[str, str]) -> QuantAccount:
    """Which layers read integer weights in the graph handed to lowering, and why the others stay float; checked
    by the driver before lowering, and completed by `_stored_dtypes` once the `.pte` is written."""
    toolchain, scheme = _scheme(job)
    return QuantAccount(scheme=scheme, activations=_activations(job), toolchain=toolchain,
                        quantized_layers=[name for name, dtype in layers.items() if dtype.startswith("int")],
                        float_layers=[FloatLayer(name, _float_reason(name, dtype, job))
                                      for name, dtype in layers.items() if not dtype.startswith("int")])


def _stored_dtypes(account: QuantAccount, pte: bytes) -> QuantAccount:
    """The account with the weight dtypes that the `.pte`'s XNNPACK payloads store."""
    storage = _xnnpack_storage(pte)
    return replace(account, weight_dtypes=dict(Counter(_XNN_LABELS.get(d, d) for d in storage["weights"].elements())),
                   details={"xnnpack_datatypes": {role: dict(counts) for role, counts in storage.items()},
                            "weight_dtypes_source": f"conv / fully-connected nodes of the XNNPACK payloads in "
                                                    f"{MODEL_FILE}; ops left outside XNNPACK are listed in coverage"})
