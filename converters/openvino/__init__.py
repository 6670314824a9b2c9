"""torch -> OpenVINO IR (model.xml + model.bin) for Intel CPU / GPU / NPU, quantized with NNCF.

The graph is captured with `torch.export` (`ov.convert_model(..., dynamo=True)`; the TorchScript
path is deprecated in torch 2.13) at the example inputs' static shapes, which the NPU plugin
requires. Graph inputs and outputs are renamed in_i / out_i so the backend can bind by name.

The plug-in's helpers, by what they hold: `nncf` (quantization with NNCF on the converted
`ov.Model`), `weights` (which torch module each IR weight belongs to, and the account read back
from the saved IR), `coverage` (op coverage on the device's plugin, and OpenVINO's error messages).
"""
from __future__ import annotations

from pathlib import Path

import openvino as ov

import converters
from converters import driver
from converters.base import ConversionJob, ConversionResult, Converter
from converters.openvino.coverage import _coverage, _failed_op
from converters.openvino.nncf import _QUANTIZE_STAGE, _SCHEMES, _quantize
from converters.openvino.weights import _account, _fp16_account, _layer_map
from converters.pooling import global_pools_as_means
from sdk.core.errors import ConversionError

__all__ = ["OpenVINOConverter"]

MODEL_FILE = "model.xml"


@converters.register
class OpenVINOConverter(Converter):
    """fp32 IR, fp16-compressed IR (computed in f32, or in bf16 with the bf16 hint), or NNCF-quantized IR
    (static INT8, INT8 / INT4 weight-only)."""

    format = "openvino"
    supported = frozenset({"fp32", "fp16", "bf16", "int8", "int8-dynamic", "int4"})  # the quantized: _SCHEMES
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
        if "While validating node" in str(exc):
            return ("give that op arguments OpenVINO's version of it accepts, or rewrite it (e.g. an average pool "
                    "whose kernel is larger than its input is the mean x.mean(dim=(-2, -1), keepdim=True)); or "
                    "export for a device whose toolchain converts it, e.g. 'android-arm64' (ExecuTorch)")
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
        fp16 = precision in ("fp16", "bf16")
        path = Path(job.workdir) / MODEL_FILE
        ov.save_model(model, str(path), compress_to_fp16=fp16)
        quantization = (_account(path, layers, plan, job) if quantizing
                        else _fp16_account(path, device, precision) if fp16 else None)
        # the backend asks the CPU plugin for f32 unless the recipe asks for bf16 (OpenVINO's own CPU default)
        options = {"inference_precision": "bf16"} if precision == "bf16" else {}
        return ConversionResult(model_file=MODEL_FILE, coverage=_coverage(path, device), quantization=quantization,
                                notes=notes, runtime_options=options)

    @staticmethod
    def _capture(job: ConversionJob) -> ov.Model:
        """torch.export at the example's shapes (with no `input=` shapes OpenVINO passes torch.export no
        dynamic_shapes, so the graph is static; given them, it builds dynamic_shapes per example tensor, which
        torch.export refuses for a `forward(self, *args)`: one parameter, several tensors). Pools spanning their
        input are given as means (`converters.pooling`): OpenVINO's AvgPool refuses a kernel beyond its input."""
        model = global_pools_as_means(job.model, job.example_inputs)
        with driver.stage("ov.convert_model"):
            return ov.convert_model(model, example_input=tuple(job.example_inputs), dynamo=True)


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
