"""LiteRT converter: torch -> `.tflite` flatbuffer with litert-torch (formerly ai-edge-torch), for XNNPACK on CPUs.

litert-torch converts the model once; a precision then adds its part. fp16 is litert-torch's own float16
recipe (`quant_recipes.full_fp16_recipe`: ai-edge-quantizer FLOAT_CASTING on every op's weights, weight-only
with explicit DEQUANTIZE ops), since the non-V2 converter takes no TFLite converter flags. int8 and
int8-dynamic run ai-edge-quantizer (LiteRT's quantizer, which litert-torch itself uses for its recipes) on
the float `.tflite`: static INT8 calibrated on `job.calibration`, or dynamic-range INT8. Layers in
`job.keep_float` get ai-edge-quantizer's NO_QUANTIZE on their ops, found through the module path that
litert-torch writes into every tensor name ('<class>_<attribute>' per module level).

Why not litert-torch's PT2E quantizer: the TFLite converter does not keep a layer that PT2E left float. In
STATIC mode it quantizes a float op that sits between a dequantize and a quantize (a kept conv between two
quantized convs comes out int8); in DYNAMIC mode it quantizes every conv/linear weight once any one is
quantized. Both read back from the .tflite with litert-torch 0.10.0 and ai-edge-litert 2.3.0. Every
precision's weight dtypes are read back from the file the same way, per layer.

The model is wrapped so that the signature's tensors are named `in_i`/`out_i`; `backends/litert` maps them
by those names.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from converters import driver, register
from converters.base import ConversionJob, ConversionResult, Converter
from converters.quant import ranges
from sdk.core.errors import ConversionError, UnsupportedRecipeError
from sdk.core.readers.litert import delegation, open_interpreter
from sdk.core.recipes import Int8Static

MODEL_FILE = "model.tflite"
_QUANTIZE_STAGE = "ai-edge-quantizer"
SIGNATURE = "serving_default"  # the one signature litert-torch writes for a single-signature model
#: where the toolchain names the op it failed on ("Lowering not found: aten.histc.default", fx "While executing")
_OP_PATTERNS = (re.compile(r"Lowering not found: (\S+)"), re.compile(r"target=torch\.ops\.([\w.]+)"))
#: LiteRT ops whose operand at this index is a layer's weight (behind a DEQUANTIZE when weight-only)
_WEIGHT_OPERAND = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "CONV_3D": 1, "TRANSPOSE_CONV": 1,
                   "FULLY_CONNECTED": 1, "BATCH_MATMUL": 1}
_DTYPE_LABELS = {"float32": "fp32", "float16": "fp16"}
_INT8_SPEED_NOTE = ("speed: INT8 makes the weights 4x smaller; XNNPACK's INT8 kernels gain most on CPUs with int8 "
                    "dot-product instructions (ARMv8.2+ SDOT/I8MM on phones, VNNI on x86) and little or nothing "
                    "without them: measure on the device before counting on a speed-up")
_FP16_REPORT = {
    "method": "litert-torch full_fp16_recipe (ai-edge-quantizer FLOAT_CASTING, weight-only)",
    "weights": "float16",
    "activations": "float32 (XNNPACK expands the float16 weights once, at load)",
}


class _NamedIO(torch.nn.Module):
    """Takes `in_i` keyword tensors and returns `{out_i: leaf}`, so LiteRT's signature carries the SDK's names.

    litert-torch names positional inputs `args_i` and outputs `output_i`; naming them here removes any reliance
    on the order in which a runtime lists a signature's tensors.
    """

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str]):
        super().__init__()
        self.model, self.input_names, self.output_names = model, list(input_names), list(output_names)
        self.training = False  # set directly: .eval() would recurse into exported (PT2E) models, which refuse it

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        leaves = pytree.tree_leaves(self.model(*(inputs[n] for n in self.input_names)))
        return dict(zip(self.output_names, leaves, strict=True))


def _fp16_config() -> Any:
    from litert_torch.generative.quantize import quant_recipes

    return quant_recipes.full_fp16_recipe()


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
              "calibration samples; quantized model inputs and outputs are int8 (the LiteRT backend quantizes "
              "inputs and dequantizes outputs with each tensor's own scale and zero point)" if static else
              f"weights int8 {weights} symmetric; activations float32 between ops, quantized per inference "
              "inside LiteRT's dynamic-range (hybrid) kernels; float32 model inputs and outputs")
    if transformer:
        scheme += ("; a transformer (SOFTMAX in the graph): only its " + ", ".join(_WEIGHT_OPS) + " ops are "
                   "quantized, as NNCF's TRANSFORMER model type does; adds, products, norms and softmax stay float")
    if wide:
        scheme += "; " + ranges.note(wide)
    return {"toolchain": f"ai-edge-quantizer {_version('ai-edge-quantizer')} "
                         f"({'static_wi8_ai8' if static else 'dynamic_wi8_afp32'}) on litert-torch's float .tflite",
            "scheme": scheme,
            "activations": "int8, calibrated" if static else "int8, quantized per inference (dynamic range)"}


#: what a transformer's static INT8 quantizes (see converters.executorch._WEIGHT_OPS for the measurement)
_WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")


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
        raise ConversionError(f"no op in the LiteRT graph carries the module path of {', '.join(missing)}, so it "
                              "cannot be kept in float", fmt=LiteRTConverter.format, device=job.profile.id,
                              hint="keep its parent module instead (a module whose weights its parent uses "
                                   "directly, like MultiheadAttention's out_proj, has no op of its own), or use 'fp16'")
    return scopes


def _check_request(job: ConversionJob) -> None:
    """Refuse what cannot be made before spending a conversion on it."""
    config = job.precision
    if isinstance(config, Int8Static) and config.symmetric_activations:
        raise UnsupportedRecipeError(f"{config} with symmetric_activations=True (LiteRT's int8 kernels take "
                                     "affine activations)", LiteRTConverter.format, job.profile.id,
                                     sorted(LiteRTConverter.supported))


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


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def _account(job: ConversionJob, quantization: dict[str, Any], table: list[dict[str, Any]]) -> dict[str, Any]:
    """Each module's weight dtypes read back from the `.tflite`; refuses a file where a kept one is not float."""
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

    return {**quantization,
            "quantized_layers": [name for name, dtype in layers.items() if dtype == "int8"],
            "float_layers": [{"name": name, "reason": reason(name)}
                             for name, dtype in layers.items() if dtype != "int8"],
            "weight_dtypes": _weight_dtypes(table)}


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide litert-torch's progress lines and ai-edge-quantizer's size prints, unless the user asked for
    them with LITERT_TORCH_SHOW_PROGRESS."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "n"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        os.environ.pop(key, None)


@register
class LiteRTConverter(Converter):
    """torch -> LiteRT flatbuffer; coverage is what the XNNPACK delegate takes when the model is loaded."""

    format = "litert"
    supported = frozenset({"fp32", "fp16", "int8", "int8-dynamic"})
    options = {"num_threads": "CPU threads the LiteRT interpreter uses on the device (default: every core)"}

    error_patterns = _OP_PATTERNS

    def summary(self, exc: Exception) -> str:
        """The first paragraph of the message, on one line (MLIR and JAX errors run to pages)."""
        return " ".join(str(exc).strip().split("\n\n")[0].split())[:500].rstrip(".")

    def hint_for(self, exc: Exception, op: str | None, stage: str | None) -> str:
        if stage == _QUANTIZE_STAGE:
            return "the float model converted but ai-edge-quantizer failed on it; try 'int8-dynamic' or 'fp16'"
        if op:
            return f"replace {op} with ops litert-torch can lower, or pick a device whose format supports it"
        return ("check that torch.export.export(model, example_inputs) succeeds and that the model avoids "
                "data-dependent shapes; or pick a device with another format")

    def build(self, job: ConversionJob) -> ConversionResult:
        _check_request(job)
        name = job.precision.name
        path = self._convert(job, job.model, _fp16_config() if name == "fp16" else None)
        quantization = _quantize(job, path) if name.startswith("int8") else None
        interpreter, runtime = open_interpreter(path, num_threads=1)
        stats = delegation(interpreter)
        coverage = {"delegate": "XNNPACK", **stats,
                    "fraction": stats["delegated_ops"] / stats["ops"] if stats["ops"] else 1.0}
        notes = [(f"coverage: XNNPACK delegation as {runtime} applies it on this host; "
                  "the device's LiteRT build decides for itself at load time")]
        if name == "fp16":
            quantization = {**_FP16_REPORT, "weight_dtypes": _weight_dtypes(_op_table(interpreter))}
        elif quantization is not None:
            quantization = _account(job, quantization, _op_table(interpreter))
            notes.append(_INT8_SPEED_NOTE)
        return ConversionResult(MODEL_FILE, coverage=coverage, quantization=quantization, notes=notes)

    def _convert(self, job: ConversionJob, model: torch.nn.Module, quant_config: Any) -> Path:
        """Convert `model` (float, or already PT2E-quantized) into `workdir/model.tflite`."""
        import litert_torch

        path = Path(job.workdir) / MODEL_FILE
        named = _NamedIO(model, job.input_names, job.output_names)
        with driver.stage("litert_torch.convert"), _quiet_progress():
            edge_model = litert_torch.convert(
                named, sample_kwargs=dict(zip(job.input_names, job.example_inputs, strict=True)),
                quant_config=quant_config)
            edge_model.export(str(path))
        return path
