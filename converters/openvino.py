"""torch -> OpenVINO IR (model.xml + model.bin) for Intel CPU / GPU / NPU, quantized with NNCF.

The graph is captured with `torch.export` (`ov.convert_model(..., dynamo=True)`; the TorchScript
path is deprecated in torch 2.13) at the example inputs' static shapes, which the NPU plugin
requires. Graph inputs and outputs are renamed in_i / out_i so the backend can bind by name.

Quantized recipes run NNCF on the converted `ov.Model` (its documented path for OpenVINO
deployment): `nncf.quantize` for static INT8 (FakeQuantize on activations, int8 weights), and
`nncf.compress_weights` for INT8 / INT4 weight-only. Layers are kept in float through NNCF's
`IgnoredScope`, by IR op name. Those names come from the FX graph and lose the torch module path
wherever OpenVINO fuses ops (a conv with its BatchNorm becomes `Multiply_123`), so each IR weight is
matched to its torch module by value instead: the same tensor, up to the per-output-channel scale
that BatchNorm folding applies. What the report says is stored is read back from the saved IR.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import torch

import converters
from converters import driver
from converters.base import ConversionJob, ConversionResult, Converter
from sdk.core.errors import ConversionError, InvalidInputsError

__all__ = ["OpenVINOConverter"]

MODEL_FILE = "model.xml"
_QUANTIZE_STAGE = "NNCF quantization"
_NOT_COMPUTE = {"Parameter", "Constant", "Result"}
_CONVOLUTIONS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData"}
#: ops between a weight Constant and its consumer: decompression (Convert/Subtract/Multiply), layout, FakeQuantize
_WEIGHT_PATH = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose", "FakeQuantize"}
_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "i8": "int8", "u8": "uint8", "i4": "int4",
           "u4": "uint4", "nf4": "nf4"}
# OpenVINO CPU's FullyConnected quantizes its f32 input per group at run time on VNNI CPUs
# (intel_cpu DnnlFCPrimitive::useDynamicQuantizationImpl); convolutions decompress their weights at compile time.
_CPU_RUNTIME = ("activations stay float32 in the IR; at run time OpenVINO CPU quantizes the input of each MatMul "
                "with compressed weights (FullyConnected) to int8 in groups of DYNAMIC_QUANTIZATION_GROUP_SIZE "
                "(default 32; 0 turns it off) when the CPU has AVX-VNNI or AVX512-VNNI and computes in f32, and "
                "decompresses convolution weights to f32 when the model is compiled")


@converters.register
class OpenVINOConverter(Converter):
    """fp32 IR, fp16-compressed IR, or NNCF-quantized IR (static INT8, INT8 / INT4 weight-only)."""

    format = "openvino"
    supported = frozenset({"fp32", "fp16", "int8", "int8-dynamic", "int4"})  # the quantized ones: _SCHEMES
    options = {"device": "OpenVINO device the IR targets (CPU, NPU, GPU)",
               "symmetric_int8": "true where the device takes symmetric int8 only: activations are quantized "
                                 "symmetrically and INT4's int8 backup weights are symmetric"}

    def failed_op(self, message: str) -> str | None:
        return _failed_op(message)[0]

    def summary(self, exc: Exception) -> str:
        return _failed_op(str(exc))[1]

    def hint_for(self, exc: Exception, op: str | None, stage: str | None) -> str:
        if stage == _QUANTIZE_STAGE:
            return ("keep the failing layer in float (tolerance= keeps sensitive layers float), or try a gentler "
                    "scheme (int8-dynamic, fp16)")
        if op:
            return ("replace that op with ones OpenVINO converts (see the PyTorch frontend's supported operations), "
                    "or register an OpenVINO frontend extension for it")
        return ("the model must be capturable by torch.export at these shapes (no data-dependent Python control "
                "flow); torch.export.export(model, example_inputs) shows where it stops")

    def build(self, job: ConversionJob) -> ConversionResult:
        device = str(job.profile.converter.get("device", "CPU")).upper()
        model = self._capture(job)
        _name_ports(model, job)
        precision = job.precision.name
        quantizing = precision in _SCHEMES
        notes = [(f"OpenVINO {ov.get_version().split('-')[0]} IR for {device}, "
                  f"static shapes {[list(t.shape) for t in job.example_inputs]}")]
        if quantizing:
            layers = _layer_map(model, job)
            model, plan = _quantize(model, layers, job, device)
            notes += plan.notes
        # save_model compresses float weights to fp16 unless told not to; it never does for a quantized model
        # (ov::pass::is_model_optimized: FakeQuantize or compressed weights present), whose float parts stay f32.
        fp16 = precision == "fp16"
        path = Path(job.workdir) / MODEL_FILE
        ov.save_model(model, str(path), compress_to_fp16=fp16)
        coverage, reason = _coverage(path, device)
        if quantizing:
            quantization = _account(path, layers, plan, job)
        elif fp16:
            quantization = {"weights": "fp16", "activations": "device default (fp16 on NPU/GPU, f32 on CPU)",
                            "method": "openvino.save_model(compress_to_fp16=True)"}
        else:
            quantization = None
        return ConversionResult(model_file=MODEL_FILE, coverage=coverage, coverage_reason=reason,
                                quantization=quantization, notes=notes)

    @staticmethod
    def _capture(job: ConversionJob) -> ov.Model:
        shapes = [ov.PartialShape(list(t.shape)) for t in job.example_inputs]
        with driver.stage("ov.convert_model"):
            return ov.convert_model(job.model, example_input=tuple(job.example_inputs), input=shapes, dynamo=True)


def _name_ports(model: ov.Model, job: ConversionJob) -> None:
    """Give graph inputs/outputs the SDK's names; a tensor that is two outputs keeps both names."""
    if len(model.inputs) != len(job.input_names) or len(model.outputs) != len(job.output_names):
        raise ConversionError(
            f"the converted graph has {len(model.inputs)} input(s) / {len(model.outputs)} output(s), the model "
            f"{len(job.input_names)} / {len(job.output_names)}", fmt="openvino", device=job.profile.id,
            hint="make every input reach an output (unused inputs are dropped) and return only tensors")
    ours = set(job.input_names) | set(job.output_names)
    for port, name in zip(model.inputs, job.input_names):
        port.get_tensor().set_names({name})
        port.get_node().set_friendly_name(name)
    for port, name in zip(model.outputs, job.output_names):
        tensor = port.get_tensor()
        tensor.set_names((set(tensor.get_names()) & ours) | {name})


# --- quantization (NNCF on the ov.Model) ---

@dataclass
class _Plan:
    """How NNCF was called, in words for the report."""

    toolchain: str
    scheme: str
    activations: str
    backup: str | None  # the stored dtype of NNCF's backup precision (INT4 only)
    notes: list[str]


def _quantize(model: ov.Model, layers: dict[str, str], job: ConversionJob, device: str) -> tuple[ov.Model, _Plan]:
    """Run the NNCF algorithm the recipe names, with the kept layers in NNCF's IgnoredScope."""
    try:
        import nncf
    except ImportError as exc:
        raise ConversionError(f"NNCF is not installed ({exc})", fmt="openvino", device=job.profile.id,
                              hint="pip install 'edge-sdk[openvino]' (NNCF quantizes OpenVINO models)") from exc
    ignored = nncf.IgnoredScope(names=sorted(op for op, layer in layers.items()
                                             if driver.kept_by(layer, job.keep_float)))
    with driver.stage(_QUANTIZE_STAGE):
        return _SCHEMES[job.precision.name](nncf, model, ignored, job, device)


def _static_int8(nncf: Any, model: ov.Model, ignored: Any, job: ConversionJob, device: str) -> tuple[ov.Model, _Plan]:
    """nncf.quantize: int8 weights, FakeQuantize on activations with ranges from the calibration set."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    config, samples = job.precision, job.calibration
    if not samples:
        raise InvalidInputsError(f"static INT8 for {job.profile.id} needs calibration data (nncf.quantize sets "
                                 "activation ranges from it); or use 'int8-dynamic'")
    symmetric = config.symmetric_activations or _symmetric_only(job)
    preset = nncf.QuantizationPreset.PERFORMANCE if symmetric else nncf.QuantizationPreset.MIXED
    target = nncf.TargetDevice(device) if device in nncf.TargetDevice.__members__ else nncf.TargetDevice.ANY
    advanced = AdvancedQuantizationParameters(
        weights_quantization_params=QuantizationParameters(per_channel=config.per_channel))
    transformer = _is_transformer(model)
    quantized = nncf.quantize(model, nncf.Dataset(samples, _feed), preset=preset, target_device=target,
                              subset_size=len(samples), ignored_scope=ignored, advanced_parameters=advanced,
                              model_type=nncf.ModelType.TRANSFORMER if transformer else None)
    notes = [f"OpenVINO {device} runs the FakeQuantize-annotated IR with its int8 kernels"
             + (" (VNNI/AMX where the CPU has them)" if device == "CPU" else "")
             + "; no speed-up is assumed: measure it on the target"]
    if _symmetric_only(job) and not config.symmetric_activations:
        notes.append(f"{job.profile.id}: activations are quantized symmetrically (preset=performance): the device "
                     "takes symmetric int8 only (profile [converter] symmetric_int8); the recipe's asymmetric "
                     "activations are not used there")
    return quantized, _Plan(
        toolchain=f"NNCF {nncf.__version__} nncf.quantize on the ov.Model (preset={preset.value}, "
                  f"target_device={target.value}{', model_type=TRANSFORMER' if transformer else ''})",
        scheme=(f"weights int8 {'per-channel' if config.per_channel else 'per-tensor'} symmetric; activations int8 "
                f"per-tensor {'symmetric' if symmetric else 'asymmetric'} (FakeQuantize ops), ranges calibrated on "
                f"{len(samples)} samples with fast bias correction; biases and norms stay float"),
        activations="int8", backup=None, notes=notes)


def _symmetric_only(job: ConversionJob) -> bool:
    """The device takes symmetric int8 only (a profile fact, e.g. the Intel NPU)."""
    return bool(job.profile.converter.get("symmetric_int8", False))


def _is_transformer(model: ov.Model) -> bool:
    """Attention (a Softmax and a MatMul of two activations) in the graph, not a classifier that merely ends in
    a softmax: NNCF's TRANSFORMER model type then keeps the attention-mask add, the softmax and the embedding
    gathers out of activation quantization, as NNCF advises for transformers (its default setup fails outright
    on Hugging Face BERT embeddings)."""
    def constant(node: Any) -> bool:  # a weight, possibly stored narrow and converted
        while node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"
    ops = model.get_ops()
    return any(op.get_type_name() == "Softmax" for op in ops) and any(
        op.get_type_name() == "MatMul" and not any(constant(i.get_source_output().get_node()) for i in op.inputs())
        for op in ops)


def _int8_weights(nncf: Any, model: ov.Model, ignored: Any, job: ConversionJob,
                  device: str) -> tuple[ov.Model, _Plan]:
    """nncf.compress_weights INT8_ASYM: weight-only, per output channel, uint8 with a zero point."""
    quantized = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, ignored_scope=ignored)
    scheme, activations = _weight_only_activations(device)
    return quantized, _Plan(
        toolchain=f"NNCF {nncf.__version__} nncf.compress_weights(mode=INT8_ASYM)",
        scheme="weights int8 per-output-channel asymmetric (uint8 + zero point), weight-only; " + scheme,
        activations=activations, backup=None,
        notes=[("INT8 weight-only mainly shrinks the IR; only MatMul layers can gain speed (run-time int8 on VNNI "
                "CPUs), convolutions compute in float")])


def _int4_weights(nncf: Any, model: ov.Model, ignored: Any, job: ConversionJob,
                  device: str) -> tuple[ov.Model, _Plan]:
    """nncf.compress_weights INT4_SYM, group-wise, every eligible MatMul in 4 bits (ratio 1.0)."""
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode

    group = job.precision.group_size
    backup = nncf.BackupMode.INT8_SYM if _symmetric_only(job) else nncf.BackupMode.INT8_ASYM
    quantized = nncf.compress_weights(
        model, mode=nncf.CompressWeightsMode.INT4_SYM, group_size=group, ratio=1.0, ignored_scope=ignored,
        backup_mode=backup,
        # a layer whose width the group does not divide stays float (reported) instead of failing the export
        advanced_parameters=AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.IGNORE))
    scheme, activations = _weight_only_activations(device)
    return quantized, _Plan(
        toolchain=(f"NNCF {nncf.__version__} nncf.compress_weights(mode=INT4_SYM, group_size={group}, ratio=1.0, "
                   f"backup_mode={backup.value})"),
        scheme=(f"MatMul weights int4 symmetric, one scale per {group} input channels; convolutions, embeddings and "
                f"the last MatMul at the backup precision ({backup.value}, per-channel), as NNCF does by default; "
                "weight-only: " + scheme),
        activations=activations, backup="int8" if backup == nncf.BackupMode.INT8_SYM else "uint8", notes=[])


def _weight_only_activations(device: str) -> tuple[str, str]:
    """What the target does with the activations of a weight-compressed IR: (scheme text, activations field)."""
    if device == "CPU":
        return _CPU_RUNTIME, "float32 (int8 at run time on VNNI CPUs, see scheme)"
    return f"activations stay float; the {device} plugin computes in fp16", "float16"


_SCHEMES = {"int8": _static_int8, "int8-dynamic": _int8_weights, "int4": _int4_weights}


def _feed(sample: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """A calibration tuple as the positional inputs OpenVINO's infer takes."""
    return [t.detach().cpu().numpy() for t in sample]


# --- which torch module each IR weight belongs to ---

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


def _account(path: Path, layers: dict[str, str], plan: _Plan, job: ConversionJob) -> dict[str, Any]:
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
    float_layers = [{"name": n, "reason": _float_reason(n, dtypes[n], job)} for n in names
                    if dtypes[n].startswith(("float", "bfloat"))]
    mapped = {f"{layer}.weight" for layer in layers.values()}
    float_layers += [{"name": p, "reason": "not the weight of a convolution, MatMul or embedding in the IR (NNCF "
                                           "quantizes only those); stays float"}
                     for p, t in job.model.named_parameters() if t.dim() >= 2 and p not in mapped]
    report = {
        "toolchain": plan.toolchain,
        "scheme": plan.scheme,
        "activations": plan.activations,
        "quantized_layers": [n for n in names if not dtypes[n].startswith(("float", "bfloat"))],
        "float_layers": float_layers,
        "layer_dtypes": {n: dtypes[n] for n in names},
        "weight_dtypes": dict(Counter({info["const"]: info["dtype"] for info in stored.values()}.values())),
    }
    if plan.backup:
        report["backup_layers"] = [{"name": n, "dtype": dtypes[n], "reason": _backup_reason(types[n], n == last_matmul)}
                                   for n in names if dtypes[n] == plan.backup]
    if job.precision.name == "int8":
        report["activation_quantizers"] = sum(op.get_type_name() == "FakeQuantize" for op in saved.get_ordered_ops())
    return report


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


# --- op coverage and errors ---

def _coverage(path: Path, device: str) -> tuple[dict[str, Any] | None, str | None]:
    """Which compute ops the target device's plugin accepts (`Core.query_model`), if that device is here."""
    core = ov.Core()
    available = core.available_devices
    if not any(d.split(".")[0] == device for d in available):
        return None, (f"no {device} on this host (OpenVINO sees: {', '.join(available) or 'nothing'}); "
                      f"op coverage needs the {device} plugin and its device, so it is measured on the target")
    model = core.read_model(str(path))
    placed = core.query_model(model, device)
    ops = _compute_ops(model)
    unsupported = [f"{op.get_friendly_name()} ({op.get_type_name()})" for op in ops
                   if placed.get(op.get_friendly_name(), "").split(".")[0] != device]
    return {"device": device, "supported_ops": len(ops) - len(unsupported), "total_ops": len(ops),
            "unsupported_ops": unsupported}, None


def _compute_ops(model: ov.Model) -> list[ov.Node]:
    """Ops that compute on inputs; weight storage (fp16/int8/int4 decompression: ops on constants only) is not."""
    constant: set[str] = set()
    ops = []
    for op in model.get_ordered_ops():
        sources = [op.input_value(i).get_node().get_name() for i in range(op.get_input_size())]
        if op.get_type_name() == "Constant" or (sources and all(s in constant for s in sources)):
            constant.add(op.get_name())
        elif op.get_type_name() not in _NOT_COMPUTE:
            ops.append(op)
    return ops


def _failed_op(message: str) -> tuple[str | None, str]:
    """The op named by OpenVINO's 'Model wasn't fully converted' summary, and why, if it names one."""
    for pattern, why in ((r"No conversion rule found for operations: ([^\n]+)",
                          "OpenVINO's PyTorch frontend has no conversion rule for it"),
                         (r"Conversion is failed for: ([^\n]+)", "OpenVINO's PyTorch frontend failed to convert it")):
        found = re.search(pattern, message)
        if found:
            return found.group(1).strip(), why
    return None, _summary(message)


def _summary(message: str) -> str:
    """The useful line of an OpenVINO/torch.export error (the first lines are C++ check locations)."""
    lines = [ln.strip(" -|") for ln in message.splitlines() if ln.strip(" -|")]
    useful = [ln for ln in lines if not ln.startswith(("Check '", "FrontEnd API failed"))]
    return (useful or lines or ["unknown error"])[0].rstrip(".")
