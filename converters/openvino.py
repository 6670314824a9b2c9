"""torch -> OpenVINO IR (model.xml + model.bin) for Intel CPU / GPU / NPU.

The graph is captured with `torch.export` (`ov.convert_model(..., dynamo=True)`; the TorchScript
path is deprecated in torch 2.13) at the example inputs' static shapes, which the NPU plugin
requires. Graph inputs and outputs are renamed in_i / out_i so the backend can bind by name.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openvino as ov

import converters
from converters.base import ConversionJob, ConversionResult, Converter
from sdk.errors import ConversionError

__all__ = ["OpenVINOConverter"]

MODEL_FILE = "model.xml"
_NOT_COMPUTE = {"Parameter", "Constant", "Result"}


@converters.register
class OpenVINOConverter(Converter):
    """Writes an IR with fp32 weights, or fp16-compressed weights (`compress_to_fp16`) for the fp16 recipe."""

    format = "openvino"
    supported = frozenset({"fp32", "fp16"})
    options = {"device": "OpenVINO device the IR targets (CPU, NPU, GPU)"}

    def convert(self, job: ConversionJob) -> ConversionResult:
        device = str(job.profile.converter.get("device", "CPU")).upper()
        model = self._capture(job)
        _name_ports(model, job)
        # INT8 / INT4 land here: nncf.quantize / nncf.compress_weights on `model`, before the IR is saved.
        fp16 = job.precision.name == "fp16"
        path = Path(job.workdir) / MODEL_FILE
        # save_model compresses float weights to fp16 unless told not to: fp32 must say so.
        ov.save_model(model, str(path), compress_to_fp16=fp16)
        coverage, reason = _coverage(path, device)
        quantization = {"weights": "fp16", "activations": "device default (fp16 on NPU/GPU, f32 on CPU)",
                        "method": "openvino.save_model(compress_to_fp16=True)"} if fp16 else None
        note = (f"OpenVINO {ov.get_version().split('-')[0]} IR for {device}, "
                f"static shapes {[list(t.shape) for t in job.example_inputs]}")
        return ConversionResult(model_file=MODEL_FILE, coverage=coverage, coverage_reason=reason,
                                quantization=quantization, notes=[note])

    @staticmethod
    def _capture(job: ConversionJob) -> ov.Model:
        shapes = [ov.PartialShape(list(t.shape)) for t in job.example_inputs]
        try:
            return ov.convert_model(job.model, example_input=tuple(job.example_inputs), input=shapes, dynamo=True)
        except Exception as exc:
            op, why = _failed_op(str(exc))
            hint = ("replace that op with ones OpenVINO converts (see the PyTorch frontend's supported operations), "
                    "or register an OpenVINO frontend extension for it") if op else (
                    "the model must be capturable by torch.export at these shapes (no data-dependent Python control "
                    "flow); torch.export.export(model, example_inputs) shows where it stops")
            raise ConversionError(why, fmt="openvino", device=job.profile.id, op=op, hint=hint) from exc


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


def _coverage(path: Path, device: str) -> tuple[dict[str, Any] | None, str | None]:
    """Which compute ops the target device's plugin accepts (`Core.query_model`), if that device is here."""
    core = ov.Core()
    available = core.available_devices
    if not any(d.split(".")[0] == device for d in available):
        return None, (f"no {device} on this host (OpenVINO sees: {', '.join(available) or 'nothing'}); "
                      f"op coverage needs the {device} plugin and its device, so it is measured on the target")
    model = core.read_model(str(path))
    placed = core.query_model(model, device)
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() not in _NOT_COMPUTE and not _decompression(op)]
    unsupported = [f"{op.get_friendly_name()} ({op.get_type_name()})" for op in ops
                   if placed.get(op.get_friendly_name(), "").split(".")[0] != device]
    return {"device": device, "supported_ops": len(ops) - len(unsupported), "total_ops": len(ops),
            "unsupported_ops": unsupported}, None


def _decompression(op: ov.Node) -> bool:
    """A Convert that widens an fp16-compressed constant: weight storage, not a compute op."""
    return op.get_type_name() == "Convert" and op.input_value(0).get_node().get_type_name() == "Constant"


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
