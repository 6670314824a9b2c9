"""Which torch module each op of the `.tflite` came from, and the weight dtypes the file stores per layer: the
account of every precision is read back from the file this way.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np
import torch

from converters import driver
from converters.base import ConversionJob
from converters.litert.toolchain import _version
from sdk.core.recipes import Int8Static
from sdk.core.results import FloatLayer, QuantAccount

#: LiteRT ops whose operand at this index is a layer's weight (behind a DEQUANTIZE when weight-only)
_WEIGHT_OPERAND = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "CONV_3D": 1, "TRANSPOSE_CONV": 1,
                   "FULLY_CONNECTED": 1, "BATCH_MATMUL": 1}
_DTYPE_LABELS = {"float32": "fp32", "float16": "fp16"}


def _op_table(interpreter: Any) -> list[dict[str, Any]]:
    """The model's ops (delegate nodes left out) with their output names and, for conv/linear/matmul ops,
    the constant weight they read: followed back through DEQUANTIZE, since weight-only schemes store it
    narrow and widen it at run time."""
    ops = [n for n in interpreter._get_ops_details() if n["op_name"] != "DELEGATE"]
    tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
    producer = {int(t): n for n in ops for t in n["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    table = []
    for op in ops:
        row = {"op": op["op_name"], "outputs": [tensors[int(t)]["name"] for t in op["outputs"]],
               "inputs": [tensors[int(t)]["name"] for t in op["inputs"] if int(t) >= 0], "weight": None}
        slot = _WEIGHT_OPERAND.get(op["op_name"])
        if slot is not None and len(op["inputs"]) > slot:
            tensor = int(op["inputs"][slot])
            while tensor in producer and producer[tensor]["op_name"] == "DEQUANTIZE":
                tensor = int(producer[tensor]["inputs"][0])
            if tensor >= 0 and tensor not in producer and tensor not in graph_inputs:
                dtype = np.dtype(tensors[tensor]["dtype"]).name
                row["weight"] = (tensor, tensors[tensor]["name"], _DTYPE_LABELS.get(dtype, dtype))
        table.append(row)
    return table


def _module_pattern(model: torch.nn.Module, name: str) -> re.Pattern[str]:
    """The module path litert-torch writes into the names of a module's tensors.

    litert-torch (backend/debuginfo) names each module on the call stack '<module>.<class qualname>_<last
    part of its name>', under the `_NamedIO` wrapper's 'model' attribute, and ends the path with '/', ';'
    or the end of the location. Containers that are never called themselves (ModuleList, ModuleDict) are
    not on the stack, so every ancestor level is optional; the levels that are there must be this module's.
    """
    def label(module: torch.nn.Module, part: str) -> str:
        return re.escape(f"{type(module).__module__}.{type(module).__qualname__}_{part}")

    parts = name.split(".")
    levels = [label(model.get_submodule(".".join(parts[:depth + 1])), part) for depth, part in enumerate(parts)]
    return re.compile(label(model, "model") + "".join(f"(?:/{level})?" for level in levels[:-1])
                      + f"/{levels[-1]}(?:[/;]|$)")


class _Provenance:
    """Which torch module each op of the `.tflite` came from, read from the module paths in tensor names.

    A fused op's name joins several source locations with ';;' (a conv with its ReLU, a LayerNorm whose scale
    was folded into the next linear layer's weight, a constant shared by identical layers); a weight belongs
    to the first location whose module holds a weight matrix or kernel itself.
    """

    def __init__(self, model: torch.nn.Module):
        named = [(name, module) for name, module in model.named_modules() if name]
        self.order = [name for name, _ in named]
        self._patterns = sorted(((name, _module_pattern(model, name)) for name in self.order),
                                key=lambda item: -item[0].count("."))  # the deepest module that matches wins
        self._holds_weights = {name for name, module in named
                               if any(p.dim() >= 2 for p in module.parameters(recurse=False))}

    def _module_at(self, location: str) -> str | None:
        return next((name for name, pattern in self._patterns if pattern.search(location)), None)

    def modules(self, row: dict[str, Any]) -> list[str]:
        """The modules an op came from: its weight's owner for a weighted op, else every location's module."""
        names = ([row["weight"][1]] if row["weight"] else []) + row["outputs"]
        found = [m for m in (self._module_at(loc) for n in names for loc in n.split(";;") if loc) if m]
        if row["weight"]:
            return [next((m for m in found if m in self._holds_weights), found[0])] if found else []
        return found


def _weight_dtypes(table: list[dict[str, Any]]) -> dict[str, int]:
    """How many distinct layer weights the `.tflite` stores in each dtype."""
    weights = {row["weight"][0]: row["weight"][2] for row in table if row["weight"]}
    return dict(Counter(weights.values()))


def _account(job: ConversionJob, quantization: dict[str, Any], table: list[dict[str, Any]]) -> QuantAccount:
    """Each module's weight dtypes read back from the `.tflite`, under `_quantize`'s toolchain and scheme."""
    provenance = _Provenance(job.model)
    dtypes: dict[str, set[str]] = {}
    ops: dict[str, set[str]] = {}
    for row in (r for r in table if r["weight"]):
        for module in provenance.modules(row):
            dtypes.setdefault(module, set()).add(row["weight"][2])
            ops.setdefault(module, set()).add(row["op"])
    layers = {name: "/".join(sorted(dtypes[name])) for name in provenance.order if name in dtypes}

    def reason(name: str) -> str:
        return driver.kept_reason(name, job.keep_float) or (
            f"stored as {layers[name]}: ai-edge-quantizer did not quantize its {'/'.join(sorted(ops[name]))} op")

    return QuantAccount(scheme=quantization["scheme"], toolchain=quantization["toolchain"],
                        activations="int8-static" if isinstance(job.precision, Int8Static) else "int8-dynamic",
                        quantized_layers=[name for name, dtype in layers.items() if dtype == "int8"],
                        float_layers=[FloatLayer(name, reason(name))
                                      for name, dtype in layers.items() if dtype != "int8"],
                        weight_dtypes=_weight_dtypes(table))


def _fp16_account(table: list[dict[str, Any]]) -> QuantAccount:
    """fp16 stores no integer layer; its account says how the float16 weights were made and read back."""
    return QuantAccount(scheme="weights float16 with explicit DEQUANTIZE ops (weight-only); XNNPACK expands them to "
                               "float32 once, at load, and computes in float32",
                        activations="float32", weight_dtypes=_weight_dtypes(table),
                        toolchain=f"litert-torch {_version('litert-torch')} full_fp16_recipe (ai-edge-quantizer "
                                  "FLOAT_CASTING)")
