"""INT8 with ai-edge-quantizer (LiteRT's quantizer, which litert-torch itself uses for its recipes) on the float
`.tflite`: static INT8 calibrated on `job.calibration`, or dynamic-range INT8. Layers in `job.keep_float` get
ai-edge-quantizer's NO_QUANTIZE on their ops, found through the module path that litert-torch writes into every
tensor name ('<class>_<attribute>' per module level).

Why not litert-torch's PT2E quantizer: the TFLite converter does not keep a layer that PT2E left float. In
STATIC mode it quantizes a float op that sits between a dequantize and a quantize (a kept conv between two
quantized convs comes out int8); in DYNAMIC mode it quantizes every conv/linear weight once any one is
quantized. Both read back from the .tflite with litert-torch 0.10.0 and ai-edge-litert 2.3.0.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from converters import driver
from converters.base import ConversionJob
from converters.litert.toolchain import _quiet_progress, _version
from converters.litert.weights import _op_table, _Provenance
from converters.quant import ranges
from sdk.core.errors import ConversionError
from sdk.core.readers.litert import open_interpreter
from sdk.core.recipes import Int8Static

_QUANTIZE_STAGE = "ai-edge-quantizer"
SIGNATURE = "serving_default"  # the one signature litert-torch writes for a single-signature model
_INT8_SPEED_NOTE = ("speed: INT8 makes the weights 4x smaller; XNNPACK's INT8 kernels gain most on CPUs with int8 "
                    "dot-product instructions (ARMv8.2+ SDOT/I8MM on phones, VNNI on x86) and little or nothing "
                    "without them: measure on the device before counting on a speed-up")


def _quantize(job: ConversionJob, path: Path) -> dict[str, Any]:
    """Quantize the float `.tflite` at `path` in place with ai-edge-quantizer; return its account."""
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    config, every_op = job.precision, qtyping.TFLOperationName.ALL_SUPPORTED
    static = isinstance(config, Int8Static)
    interpreter, _ = open_interpreter(path, num_threads=1)
    table = _op_table(interpreter)
    keep = _kept_scopes(job, table)
    ops = {row["op"] for row in table}
    transformer = static and {"SOFTMAX", "BATCH_MATMUL"} <= ops  # attention, not a classifier ending in softmax
    recipe = recipe_manager.RecipeManager()
    if static:
        granularity = (qtyping.QuantGranularity.CHANNELWISE if config.per_channel
                       else qtyping.QuantGranularity.TENSORWISE)
        for op in [qtyping.TFLOperationName[name] for name in _WEIGHT_OPS] if transformer else [every_op]:
            recipe.add_static_config(".*", op, activation_num_bits=8, weight_num_bits=8, weight_granularity=granularity)
        float_outputs = [_float_output(recipe, row, granularity) for row in _output_ops(table, interpreter)]
    else:
        recipe.add_dynamic_config(".*", every_op, num_bits=8)
    for scope in keep:  # added last: ai-edge-quantizer applies the last matching scope
        recipe.add_quantization_config(scope, every_op, algorithm_key=AlgorithmName.NO_QUANTIZE)
    wide: list[str] = []
    with driver.stage(_QUANTIZE_STAGE), _quiet_progress():
        float_model = path.read_bytes()
        qsvs = _calibrate(job, float_model, recipe, interpreter) if static else None
        if qsvs:
            wide = _wide_ops(table, qsvs)
            for name in wide:
                recipe.add_quantization_config(f"(^|;){re.escape(name)};", every_op,
                                               algorithm_key=AlgorithmName.NO_QUANTIZE)
        aeq = quantizer.Quantizer(float_model, recipe.get_quantization_recipe())
        path.write_bytes(aeq.quantize(qsvs, enable_progress_report=False).quantized_model)
    samples = len(job.calibration or [job.example_inputs])
    weights = "per-channel" if not static or config.per_channel else "per-tensor"
    scheme = (f"weights int8 {weights} symmetric; activations int8 per-tensor affine, min/max over {samples} "
              "calibration samples; quantized model inputs are int8 (the LiteRT backend quantizes them with each "
              "tensor's own scale and zero point); model outputs are float32, unclipped: the ops that write them "
              f"({', '.join(float_outputs)}) compute their output in float" if static else
              f"weights int8 {weights} symmetric; activations float32 between ops, quantized per inference "
              "inside LiteRT's dynamic-range (hybrid) kernels; float32 model inputs and outputs")
    if transformer:
        scheme += ("; a transformer (SOFTMAX in the graph): only its " + ", ".join(_WEIGHT_OPS) + " ops are "
                   "quantized, as NNCF's TRANSFORMER model type does; adds, products, norms and softmax stay float")
    if wide:
        scheme += "; " + ranges.note(wide)
    return {"toolchain": f"ai-edge-quantizer {_version('ai-edge-quantizer')} "
                         f"({'static_wi8_ai8' if static else 'dynamic_wi8_afp32'}) on litert-torch's float .tflite",
            "scheme": scheme}


#: what a transformer's static INT8 quantizes (see converters.executorch.quantize._WEIGHT_OPS for the measurement)
_WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


def _output_ops(table: list[dict[str, Any]], interpreter: Any) -> list[dict[str, Any]]:
    """The rows of the ops that write the model's outputs."""
    outputs = {d["name"] for d in interpreter.get_output_details()}
    return [row for row in table if outputs & set(row["outputs"])]


def _float_output(recipe: Any, row: dict[str, Any], granularity: Any) -> str:
    """Give an op that writes a model output a float output, so that no calibrated range clips it (a classifier's
    logits on confident inputs go beyond those seen in calibration): ai-edge-quantizer's dynamic-range config
    where the op has one (int8 weights, float activations), else none (the op stays float); and no QUANTIZE for
    the graph's OUTPUT, whose scope is the same tensor name. Returns how the op runs.

    Measured on EfficientNet-Lite0 (320 labeled photos as in benchmarks/labeled_accuracy.py, 300 calibration
    crops): int8 logits clip at 13.2 (fp32 reaches 15.5) on 5.9% of the photos, max abs error 2.29; float logits
    reach 15.3, max abs error 1.49, logits cosine 0.9918 -> 0.9919, top-1 87.5% -> 88.4% (fp32 86.6%), with the
    same file size and every op still delegated to XNNPACK."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    scope = f"(^|;){re.escape(row['outputs'][0])};"
    try:
        recipe.add_dynamic_config(scope, qtyping.TFLOperationName[row["op"]], num_bits=8, granularity=granularity)
    except (KeyError, ValueError):  # an op ai-edge-quantizer does not know, or one with no dynamic-range form
        recipe.add_quantization_config(scope, qtyping.TFLOperationName.ALL_SUPPORTED,
                                       algorithm_key=AlgorithmName.NO_QUANTIZE)
        return f"{row['op']} in float"
    recipe.add_quantization_config(scope, qtyping.TFLOperationName.OUTPUT, algorithm_key=AlgorithmName.NO_QUANTIZE)
    return f"{row['op']} with int8 weights, dynamic range"


def _wide_ops(table: list[dict[str, Any]], qsvs: dict[str, Any]) -> list[str]:
    """Output names of the ops with an input or output beyond `ranges.EXTREME_ABS` in the calibrated ranges."""
    def peak(tensor: str) -> float:
        qsv = qsvs.get(tensor) or {}
        return max((float(np.max(np.abs(qsv[k]))) for k in ("min", "max") if k in qsv), default=0.0)
    return [row["outputs"][0] for row in table
            if row["outputs"] and any(ranges.extreme(peak(t)) for t in row["outputs"] + row["inputs"])]


def _kept_scopes(job: ConversionJob, table: list[dict[str, Any]]) -> list[str]:
    """ai-edge-quantizer scopes (regexes over an op's output names) for every op of a `keep_float` module."""
    provenance, scopes, covered = _Provenance(job.model), [], set()
    for row in table:
        kept = {k for m in provenance.modules(row) if (k := driver.kept_by(m, job.keep_float))}
        if kept and row["outputs"]:
            covered |= kept
            scopes.append(f"(^|;){re.escape(row['outputs'][0])};")
    missing = sorted(job.keep_float - covered)
    if missing:
        from converters.litert import LiteRTConverter  # the package's plug-in, loaded by the time this runs

        raise ConversionError(f"no op in the LiteRT graph carries the module path of {', '.join(missing)}, so it "
                              "cannot be kept in float", fmt=LiteRTConverter.format, device=job.profile.id,
                              hint="keep its parent module instead (a module whose weights its parent uses "
                                   "directly, like MultiheadAttention's out_proj, has no op of its own), or use 'fp16'")
    return scopes


def _calibrate(job: ConversionJob, float_model: bytes, recipe: Any, interpreter: Any) -> dict[str, Any]:
    """Activation ranges: the min and max over all of `job.calibration`.

    ai-edge-quantizer's `Quantizer.calibrate` keeps a moving average (factor 0.95) of each sample's min/max,
    so with tens of single-sample batches the first sample weighs most and inputs beyond it are clipped;
    its `Calibrator` takes `min_max_update` instead.
    """
    from ai_edge_quantizer import calibrator
    from ai_edge_quantizer.utils import qsv_utils

    dtypes = {name: d["dtype"] for name, d in interpreter.get_signature_runner().get_input_details().items()}
    feeds = [{name: t.detach().numpy().astype(dtypes[name])  # litert-torch downcasts 64-bit inputs to 32 bits
              for name, t in zip(job.input_names, sample, strict=True)}
             for sample in (job.calibration or [job.example_inputs])]
    ranges = calibrator.Calibrator(float_model, num_threads=os.cpu_count() or 1,
                                   qsv_update_func=qsv_utils.min_max_update)
    ranges.calibrate({SIGNATURE: feeds}, recipe)
    return ranges.get_model_qsvs()
