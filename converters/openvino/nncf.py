"""Quantization with NNCF on the converted `ov.Model` (its documented path for OpenVINO deployment).

`nncf.quantize` for static INT8 (FakeQuantize on activations, int8 weights), and `nncf.compress_weights`
for INT8 / INT4 weight-only. Layers are kept in float through NNCF's `IgnoredScope`, by IR op name (the
names `converters.openvino.weights` matches to torch modules).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import openvino as ov
import torch

from converters import driver
from converters.base import ConversionJob
from sdk.core.errors import ConversionError, InvalidInputsError
from sdk.core.results import ActivationMode

_QUANTIZE_STAGE = "NNCF quantization"
# OpenVINO CPU's FullyConnected quantizes its f32 input per group at run time on VNNI CPUs
# (intel_cpu DnnlFCPrimitive::useDynamicQuantizationImpl); convolutions decompress their weights at compile time.
_CPU_RUNTIME = ("activations stay float32 in the IR; at run time OpenVINO CPU quantizes the input of each MatMul "
                "with compressed weights (FullyConnected) to int8 in groups of DYNAMIC_QUANTIZATION_GROUP_SIZE "
                "(default 32; 0 turns it off) when the CPU has AVX-VNNI or AVX512-VNNI and computes in f32, and "
                "decompresses convolution weights to f32 when the model is compiled")


@dataclass
class _Plan:
    """How NNCF was called, in words for the report."""

    toolchain: str
    scheme: str
    activations: ActivationMode
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
        activations="int8-static", backup=None, notes=notes)


def _symmetric_only(job: ConversionJob) -> bool:
    """The device takes symmetric int8 only (a profile fact, e.g. the Intel NPU)."""
    return bool(job.profile.converter.get("symmetric_int8", False))


def _is_transformer(model: ov.Model) -> bool:
    """Attention (a fused ScaledDotProductAttention, as torch's SDPA converts, or a Softmax and a MatMul of two
    activations) in the graph, not a classifier that merely ends in a softmax: NNCF's TRANSFORMER model type then
    keeps the attention-mask add, the softmax and the embedding gathers out of activation quantization, as NNCF
    advises for transformers (its default setup fails outright on Hugging Face BERT embeddings)."""
    def constant(node: Any) -> bool:  # a weight, possibly stored narrow and converted
        while node.get_type_name() == "Convert":
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"
    ops = model.get_ops()
    if any(op.get_type_name() == "ScaledDotProductAttention" for op in ops):
        return True
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


def _weight_only_activations(device: str) -> tuple[str, ActivationMode]:
    """What the target does with the activations of a weight-compressed IR: (scheme text, how they run)."""
    if device == "CPU":
        return _CPU_RUNTIME, "float32"
    return f"activations stay float; the {device} plugin computes in fp16", "float16"


_SCHEMES = {"int8": _static_int8, "int8-dynamic": _int8_weights, "int4": _int4_weights}


def _feed(sample: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """A calibration tuple as the positional inputs OpenVINO's infer takes."""
    return [t.detach().cpu().numpy() for t in sample]
