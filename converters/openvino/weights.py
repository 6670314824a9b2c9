"""Which torch module each IR weight belongs to, and the quantization account read back from the saved IR.

IR op names come from the FX graph and lose the torch module path wherever OpenVINO fuses ops (a conv
with its BatchNorm becomes `Multiply_123`), so each IR weight is matched to its torch module by value
instead: the same tensor, up to the per-output-channel scale that BatchNorm folding applies. What the
report says is stored is read back from the saved IR.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

from converters import driver
from converters.base import ConversionJob
from converters.openvino.nncf import _Plan
from sdk.core.results import FloatLayer, QuantAccount

_CONVOLUTIONS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData"}
#: ops between a weight Constant and its consumer: decompression (Convert/Subtract/Multiply), layout, FakeQuantize
_WEIGHT_PATH = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "FakeQuantize"}
_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i8": "int8", "u8": "uint8", "i4": "int4",
           "u4": "uint4", "nf4": "nf4"}


def _layer_map(model: ov.Model, job: ConversionJob) -> dict[str, str]:
    """IR op friendly name -> torch module name, for every op that reads a weight Constant."""
    weights = [(name, module.weight.detach().float().numpy()) for name, module in job.model.named_modules()
               if isinstance(getattr(module, "weight", None), torch.Tensor) and module.weight.dim() >= 2]
    found: dict[str, str] = {}
    taken: set[str] = set()
    for op, const in _weighted_ops(model):
        data = const.get_data().astype(np.float32)
        matches = [name for name, w in weights if _same_weight(data, w)]
        if matches:  # equal weights in two modules: take them in definition order
            name = next((m for m in matches if m not in taken), matches[0])
            taken.add(name)
            found[op.get_friendly_name()] = name
    return found


def _weighted_ops(model: ov.Model) -> list[tuple[ov.Node, ov.Node]]:
    """(op, weight Constant) for convolutions, MatMuls with a constant operand and embedding Gathers."""
    out = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        ports = [1] if kind in _CONVOLUTIONS else [1, 0] if kind == "MatMul" else [0] if kind == "Gather" else []
        for port in ports:
            const = _weight_root(op.input_value(port))
            if const is None or len(const.get_output_partial_shape(0)) < 2:
                continue
            # an integer table read as is (not decompressed) is an index lookup, not an embedding's weights
            if kind != "Gather" or const.get_element_type().is_real() or op.input_value(0).get_node() != const:
                out.append((op, const))
            break
    return out


def _weight_root(value: ov.Output) -> ov.Node | None:
    """The Constant behind an op input, through decompression and layout ops (following the largest input)."""
    node = value.get_node()
    while node.get_type_name() in _WEIGHT_PATH:
        node = max((node.input_value(i) for i in range(node.get_input_size())),
                   key=lambda v: _numel(v.get_partial_shape())).get_node()
    return node if node.get_type_name() == "Constant" else None


def _numel(shape: ov.PartialShape) -> int:
    return int(np.prod([d.get_length() for d in shape])) if shape.is_static else -1


def _same_weight(const: np.ndarray, weight: np.ndarray) -> bool:
    """The same tensor, up to a per-output-channel scale (folded BatchNorm), in torch's or the transposed layout."""
    if const.size != weight.size:
        return False
    views = [const.reshape(weight.shape)]
    if const.ndim == 2 and weight.ndim == 2 and const.shape == weight.shape[::-1] != weight.shape:
        views.append(const.T)
    return any(_proportional(view, weight, axis) for view in views for axis in range(min(2, weight.ndim)))


def _proportional(a: np.ndarray, b: np.ndarray, axis: int) -> bool:
    """Every slice of `a` along `axis` is a scalar multiple of that slice of `b` (equal for 1-element slices)."""
    a2 = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).astype(np.float64)
    b2 = np.moveaxis(b, axis, 0).reshape(b.shape[axis], -1).astype(np.float64)
    if a2.shape[1] < 2:
        return bool(np.allclose(a2, b2, rtol=1e-5, atol=1e-7))
    scale = (a2 * b2).sum(1) / np.maximum((b2 * b2).sum(1), 1e-30)
    residual = np.linalg.norm(a2 - scale[:, None] * b2, axis=1)
    return bool(np.all(residual <= 1e-4 * np.linalg.norm(a2, axis=1) + 1e-12))


# --- the report, read back from the saved IR ---

def _ir_weights(model: ov.Model) -> dict[str, dict[str, Any]]:
    """Every weight an op of the IR reads: op name -> {op_type, const (its name), dtype as stored}."""
    return {op.get_friendly_name(): {"op_type": op.get_type_name(), "const": const.get_friendly_name(),
                                     "dtype": _DTYPES.get(const.get_element_type().get_type_name(),
                                                          const.get_element_type().get_type_name())}
            for op, const in _weighted_ops(model)}


def _weight_dtypes(stored: dict[str, dict[str, Any]]) -> dict[str, int]:
    """How many weight constants the IR stores in each dtype (one count per constant, however many ops read it)."""
    return dict(Counter({info["const"]: info["dtype"] for info in stored.values()}.values()))


def _fp16_account(path: Path, device: str, precision: str = "fp16") -> QuantAccount:
    """fp16/bf16 store no integer layer; the account says how the weights were compressed and where it computes."""
    bf16 = precision == "bf16" and device == "CPU"
    compute = ("the CPU plugin computes in bf16 where the CPU has AVX512_BF16 or AMX, else in f32" if bf16 else
               "the CPU plugin computes in f32, the NPU and GPU plugins in fp16")
    return QuantAccount(scheme=f"weights compressed to float16 in the IR; {compute}",
                        activations="bfloat16" if bf16 else "float32" if device == "CPU" else "float16",
                        toolchain=f"OpenVINO {ov.get_version().split('-')[0]} save_model(compress_to_fp16=True)",
                        weight_dtypes=_weight_dtypes(_ir_weights(ov.Core().read_model(str(path)))))


def _account(path: Path, layers: dict[str, str], plan: _Plan, job: ConversionJob) -> QuantAccount:
    """What the saved IR stores for each torch layer's weights, and why each one that is not int stays float."""
    saved = ov.Core().read_model(str(path))
    stored = _ir_weights(saved)
    order = {name: i for i, (name, _) in enumerate(job.model.named_modules())}
    dtypes: dict[str, str] = {}
    types: dict[str, str] = {}
    for op, info in stored.items():
        layer = layers.get(op, f"<IR op {op}>")
        dtypes[layer], types[layer] = info["dtype"], info["op_type"]
    names = sorted(dtypes, key=lambda n: (order.get(n, len(order)), n))
    last_matmul = next((n for n in reversed(names) if types[n] == "MatMul"), None)
    float_layers = [FloatLayer(n, _float_reason(n, dtypes[n], job)) for n in names
                    if dtypes[n].startswith(("float", "bfloat"))]
    mapped = {f"{layer}.weight" for layer in layers.values()}
    float_layers += [FloatLayer(p, "not the weight of a convolution, MatMul or embedding in the IR (NNCF quantizes "
                                   "only those); stays float")
                     for p, t in job.model.named_parameters() if t.dim() >= 2 and p not in mapped]
    details: dict[str, Any] = {"layer_dtypes": {n: dtypes[n] for n in names}}
    if plan.backup:
        details["backup_layers"] = [
            {"name": n, "dtype": dtypes[n], "reason": _backup_reason(types[n], n == last_matmul)}
            for n in names if dtypes[n] == plan.backup]
    if job.precision.name == "int8":
        details["activation_quantizers"] = sum(op.get_type_name() == "FakeQuantize" for op in saved.get_ordered_ops())
    return QuantAccount(scheme=plan.scheme, activations=plan.activations, toolchain=plan.toolchain,
                        quantized_layers=[n for n in names if not dtypes[n].startswith(("float", "bfloat"))],
                        float_layers=float_layers, weight_dtypes=_weight_dtypes(stored), details=details)


def _float_reason(layer: str, dtype: str, job: ConversionJob) -> str:
    kept = driver.kept_reason(layer, job.keep_float)
    if kept is not None:
        return kept
    weight = getattr(dict(job.model.named_modules()).get(layer), "weight", None)
    width = weight[0].numel() if isinstance(weight, torch.Tensor) else None
    group = getattr(job.precision, "group_size", None)
    if group and width and width % group:
        return (f"its {width} input channels are not a multiple of group_size {group}: NNCF "
                f"(group_size_fallback_mode=IGNORE) leaves it {dtype}")
    return f"NNCF did not quantize it (no quantizer for it in NNCF's {job.precision} scheme); stays {dtype}"


def _backup_reason(op_type: str, last_matmul: bool) -> str:
    if op_type in _CONVOLUTIONS:
        return "a convolution: NNCF's INT4 compresses MatMul weights only; convolutions get the backup precision"
    if op_type == "Gather":
        return "an embedding: NNCF keeps embeddings at the backup precision unless all_layers=True"
    if last_matmul:
        return "the model's last MatMul: NNCF keeps it at the backup precision unless all_layers=True"
    return "NNCF assigned it the backup precision"
