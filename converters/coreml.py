"""Core ML converter: torch.export -> coremltools ML program (`model.mlpackage`) for the Apple Neural Engine.

coremltools converts anywhere but runs models only on macOS, so the check on a Linux host is the saved
spec: I/O names and static shapes, deployment target, and the weights' dtypes (fp16 really stored as fp16,
int8/int4/LUT weights really stored narrow).

Quantized recipes compress the converted program with coremltools.optimize.coreml: INT8 per-channel and
INT4 per-block weights (`linear_quantize_weights`), k-means palettization (`palettize_weights`), and, for
static INT8 where Core ML can run the model to calibrate (macOS), INT8 activations
(`linear_quantize_activations`). Layers kept in float are excluded by name through the toolchain's own
`op_name_configs={const: None}`; the torch module behind each weight is found through the debug handles
that coremltools carries from the exported graph's nodes onto the ops it makes from them.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from converters import driver, register
from converters.base import ConversionJob, ConversionResult, Converter
from sdk.core.errors import InternalError, ProfileError, UnsupportedRecipeError, first_line
from sdk.core.readers.coreml import runtime_unavailable_reason, spec_summary, weight_storage

__all__ = ["CoreMLConverter"]

MODEL_FILE = "model.mlpackage"
COVERAGE_REASON = ("which ops run on the Neural Engine is only known on macOS 14.4+ (MLComputePlan); "
                   "run the agent on a Mac")
# coremltools' messages that name the torch op it could not lower (frontend/torch/ops.py, internal_graph.py)
_OP_PATTERNS = (
    re.compile(r"convert function for op '([^']+)' not implemented"),
    re.compile(r"Unsupported fx node \S+, kind (\S+)"),
    re.compile(r"lowering for Torch `([^`]+)` op is not supported"),
    re.compile(r"node \S+ \(([^)]+)\) got \d+ input"),
)

_PASSTHROUGH = re.compile(r"input name, '([^']+)', is different from its corresponding var's name, '([^']+)'")

_QUANTIZING = ("int8", "int8-dynamic", "int4", "palettize")
_COMPRESS_STAGE = "coremltools.optimize.coreml"
#: coremltools' OpPalettizerConfig accepts these LUT widths (2**nbits entries)
_LUT_BITS = (1, 2, 3, 4, 6, 8)
#: how far back through the exported graph a fused op's debug handle is followed to reach its weight layer
#: (conv <- batch_norm <- getitem, linear <- add ...)
_MAX_HOPS = 4


@register
class CoreMLConverter(Converter):
    """fp32/fp16 ML programs (fp16 is the Neural Engine's native precision), and compressed fp16 ones."""

    format = "coreml"
    supported = frozenset({"fp32", "fp16", *_QUANTIZING})
    options = {
        "minimum_deployment_target": "oldest OS the model must load on, a coremltools.target name, e.g. iOS17, macOS15",
        "compute_units": "where Core ML may run it: ALL | CPU_AND_NE | CPU_AND_GPU | CPU_ONLY",
    }

    error_patterns = _OP_PATTERNS

    def summary(self, exc: Exception) -> str:
        passthrough = _PASSTHROUGH.search(str(exc))
        if passthrough:  # ct's own message is an assertion about block names; say what the user did
            return (f"output {passthrough.group(2)} is input {passthrough.group(1)} returned unchanged (or through "
                    "an identity such as clone), and a Core ML program cannot give one tensor two names")
        return first_line(exc)

    def hint_for(self, exc: Exception, op: str | None, stage: str | None) -> str:
        if stage == "torch.export":
            return ("make forward() exportable (no data-dependent Python control flow; the chained torch.export "
                    "error names the line)")
        if stage == _COMPRESS_STAGE:
            return "try another scheme (e.g. 'palettize:8' or 'int8'), or keep the failing layer in float"
        if _PASSTHROUGH.search(str(exc)):
            return "drop that output from forward(): the caller already has the tensor"
        if op:
            return ("rewrite it with ops Core ML supports, or register a translation with "
                    "coremltools.converters.mil.frontend.torch.register_torch_op; or export for a device whose "
                    "toolchain converts it, e.g. 'intel-cpu' (OpenVINO) or 'android-arm64' (ExecuTorch)")
        return "run with logging at DEBUG for coremltools' full message"

    def build(self, job: ConversionJob) -> ConversionResult:
        import coremltools as ct

        target = _options(job)
        precision = job.precision.name
        scheme = _scheme(job, target) if job.precision.quantizes else None  # refuses before any work

        exported = _export(job)
        out_dtypes = _output_dtypes(exported)
        with driver.stage("coremltools.convert"):
            mlmodel = ct.convert(
                exported, convert_to="mlprogram", minimum_deployment_target=target,
                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                skip_model_load=True,
                inputs=[ct.TensorType(name=name, shape=tuple(t.shape), dtype=_io_dtype(t.dtype))
                        for name, t in zip(job.input_names, job.example_inputs)],
                outputs=[ct.TensorType(name=name, dtype=_io_dtype(dtype))
                         for name, dtype in zip(job.output_names, out_dtypes)])
        if scheme is not None:
            weights = _weights(mlmodel, exported, job)
            mlmodel = _compress(mlmodel, scheme, weights, job)
        mlmodel.save(str(job.workdir / MODEL_FILE))

        summary = spec_summary(job.workdir / MODEL_FILE)
        _check_spec(summary, job, target.value)
        notes = [f"ML program, opset {summary['opset']}, spec v{summary['specification_version']}; ops: "
                 + ", ".join(f"{op} x{n}" for op, n in summary["ops"].items()),
                 f"weights by dtype (elements): {summary['weight_dtypes']}"]
        if precision != "fp32":
            notes.append("inputs/outputs stay float32; the program casts to fp16 on entry and back on exit")
        if precision == "fp16" and "float32" in summary["weight_dtypes"]:
            notes.append(f"{summary['weight_dtypes']['float32']} weight elements stay float32 "
                         "(ops coremltools keeps in fp32)")
        quantization = None
        if scheme is not None:
            quantization = _account(scheme, weights, weight_storage(job.workdir / MODEL_FILE), job)
            notes += scheme.notes
        elif precision == "fp16":
            quantization = {"scheme": "fp16", "tool": f"coremltools {ct.__version__}",
                            "weight_dtypes": summary["weight_dtypes"]}
        return ConversionResult(model_file=MODEL_FILE, coverage=None, coverage_reason=COVERAGE_REASON,
                                quantization=quantization, notes=notes)


def _options(job: ConversionJob) -> Any:
    """Check the profile's [converter] values (a typo surfaces here, not later on a Mac); return the target."""
    import coremltools as ct

    name = job.profile.converter.get("minimum_deployment_target")
    known = list(ct.target.__members__)
    if name not in known:
        raise ProfileError(f"device profile {job.profile.id!r}: [converter] minimum_deployment_target must be one of "
                           f"{', '.join(known)}, got {name!r}")
    units = job.profile.converter.get("compute_units", "ALL")
    if units not in ct.ComputeUnit.__members__:
        raise ProfileError(f"device profile {job.profile.id!r}: [converter] compute_units must be one of "
                           f"{', '.join(ct.ComputeUnit.__members__)}, got {units!r}")
    return ct.target[name]


def _export(job: ConversionJob) -> torch.export.ExportedProgram:
    """Capture the model as core ATen ops, the graph coremltools' torch.export frontend reads."""
    with driver.stage("torch.export"):
        exported = torch.export.export(job.model, tuple(job.example_inputs)).run_decompositions({})
    for handle, node in enumerate(exported.graph.nodes):  # coremltools copies it onto each op it makes
        node.meta["debug_handle"] = handle
    return exported


# --- weight compression (coremltools.optimize.coreml) ---

@dataclass(frozen=True)
class _Scheme:
    """A quantization recipe in coremltools' terms, and how to describe it."""

    function: str  #: the coremltools.optimize.coreml function that applies it
    options: dict[str, Any]  #: its OpLinearQuantizerConfig / OpPalettizerConfig arguments
    activations: bool  #: also quantize activations (static INT8 where Core ML can run to calibrate)
    scheme: str
    notes: tuple[str, ...]

    @property
    def op_config(self) -> Any:
        import coremltools.optimize.coreml as cto

        kind = cto.OpPalettizerConfig if self.function == "palettize_weights" else cto.OpLinearQuantizerConfig
        return kind(**self.options)

    @property
    def toolchain(self) -> str:
        import coremltools as ct

        config = self.op_config
        args = ", ".join(f"{k}={v!r}" for k, v in {**self.options, "weight_threshold": config.weight_threshold}.items())
        calls = (["linear_quantize_activations(OpLinearQuantizerConfig(mode='linear_symmetric'))"]
                 if self.activations else []) + [f"{self.function}({type(config).__name__}({args}))"]
        return f"coremltools {ct.__version__}: coremltools.optimize.coreml." + " then ".join(calls)


def _scheme(job: ConversionJob, target: Any) -> _Scheme:
    """The recipe as a coremltools config; a combination the deployment target cannot load is refused."""
    import coremltools as ct

    config, speed = job.precision, _SPEED_NOTE
    if config.name in ("int8", "int8-dynamic"):
        options = {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}
        weights = "weights int8 per output channel, symmetric, with an fp16 scale per channel"
        unavailable = runtime_unavailable_reason()  # calibrating activations runs Core ML predictions
        if config.name == "int8" and unavailable is None and target.value >= ct.target.iOS17.value:
            samples = len(job.calibration or [job.example_inputs])
            return _Scheme("linear_quantize_weights", options, True,
                           f"{weights}; activations int8 symmetric per tensor, calibrated on {samples} sample(s) "
                           "by running the model in Core ML (W8A8)", (speed,))
        if config.name == "int8-dynamic":
            why = "Core ML has no run-time (dynamic) activation quantization, so 'int8-dynamic' is weight-only INT8"
        elif unavailable:
            why = ("activation quantization (W8A8, coremltools.optimize.coreml.linear_quantize_activations) "
                   f"calibrates by running Core ML predictions, which only macOS can do ({unavailable}); convert on "
                   "a Mac for W8A8")
        else:
            why = "activation quantization needs minimum_deployment_target iOS17/macOS14 or later"
        return _Scheme("linear_quantize_weights", options, False,
                       f"{weights}; activations stay float16 (W8A16): {why}",
                       (speed, _SIMULATION_NOTE) if unavailable else (speed,))
    if config.name == "int4":
        if target.value < ct.target.iOS18.value:
            raise _unsupported(job, target, f"INT4 per-block weights (constexpr_blockwise_shift_scale) need Core ML 8, "
                                            f"i.e. minimum_deployment_target iOS18/macOS15 or later, and "
                                            f"{job.profile.id} targets {target.name}. 'palettize:4' stores 4-bit "
                                            "weights on iOS16+ too.")
        options = {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_block",
                   "block_size": config.group_size}
        return _Scheme("linear_quantize_weights", options, False,
                       f"weights int4 symmetric in blocks of {config.group_size} along the input channels, an fp16 "
                       "scale per block; activations stay float16", (speed,))
    if config.nbits not in _LUT_BITS:
        raise _unsupported(job, target, f"coremltools' k-means palettization takes {', '.join(map(str, _LUT_BITS))} "
                                        "bits (e.g. 'palettize:4').")
    options = {"mode": "kmeans", "nbits": config.nbits, "granularity": "per_tensor"}
    return _Scheme("palettize_weights", options, False,
                   f"weights palettized by k-means: each tensor's values replaced by {2 ** config.nbits} fp16 "
                   f"centroids (a lookup table per tensor) and stored as {config.nbits}-bit indices; activations stay "
                   "float16", (speed,))


_SPEED_NOTE = ("speed not promised: compressed weights mainly cut size and memory traffic (Core ML decompresses "
               "them for fp16 compute); Apple documents int8-int8 compute gains on the Neural Engine only for W8A8 "
               "on A17 Pro/M4 and later")
_SIMULATION_NOTE = ("held-out parity off macOS is the SDK's torch simulation of the recipe, which fake-quantizes "
                    "activations too; this artifact keeps activations float16, so that estimate includes activation "
                    "error the artifact does not have")


def _unsupported(job: ConversionJob, target: Any, why: str) -> UnsupportedRecipeError:
    import coremltools as ct

    here = [p for p in job.profile.precisions if p in CoreMLConverter.supported
            and not (p == "int4" and target.value < ct.target.iOS18.value)]
    error = UnsupportedRecipeError(job.precision.to_string(), CoreMLConverter.format, job.profile.id, here)
    error.args = (f"{error.args[0]} {why}",)
    return error


@dataclass(frozen=True)
class _Weight:
    """A float weight of the converted program: the const an op reads, and the torch layer it came from."""

    const: str
    layer: str


def _weights(mlmodel: Any, exported: torch.export.ExportedProgram,
             job: ConversionJob) -> dict[tuple[str, str], _Weight]:
    """Every float constant of rank >= 2 that an op reads, keyed by (op name, input name).

    Read from the program coremltools keeps on the model (`_mil_program`), since the saved spec drops
    the debug handles; compression keeps op names, so the same key finds the weight in the saved spec.
    The layer is the torch module that owns the parameter (read from the placeholder name), else the
    module whose weight the op's debug handle leads to (a conv with its batch norm folded in carries
    the norm's handle), else the constant's own name.
    """
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.scope import ScopeSource

    nodes = {node.meta["debug_handle"]: node for node in exported.graph.nodes}
    signature = exported.graph_signature
    params = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    modules = dict(job.model.named_modules())
    found: dict[tuple[str, str], _Weight] = {}
    for op in _ops(mlmodel._mil_program.functions["main"]):
        if op.op_type == "const":
            continue
        for param, var in op.inputs.items():
            source = getattr(var, "op", None)
            if source is None or source.op_type != "const" or var.rank < 2 or not types.is_float(var.dtype):
                continue
            layer = (_owner(source.name, params, modules)
                     or _handled_layer(op.scopes.get(ScopeSource.EXIR_DEBUG_HANDLE, []), nodes, modules, var.val.size)
                     or source.name)
            found[(op.name, param)] = _Weight(source.name, layer)
    return found


def _ops(block: Any):
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _ops(inner)


def _owner(const: str, params: dict[str, str], modules: dict[str, torch.nn.Module]) -> str | None:
    """'p_features_0_weight_to_fp16' -> 'features.0' (the module), or the parameter's own name."""
    fqn = params.get(const.removesuffix("_to_fp16"))
    if fqn is None:
        return None
    module, _, leaf = fqn.rpartition(".")
    return module if leaf == "weight" and module in modules else fqn


def _handled_layer(handles: list, nodes: dict[int, torch.fx.Node], modules: dict[str, torch.nn.Module],
                   numel: int) -> str | None:
    """The module whose weight has `numel` elements, found from the op's graph nodes back through first inputs."""
    for handle in handles:
        node = nodes.get(handle)
        for _ in range(_MAX_HOPS):
            if not isinstance(node, torch.fx.Node):
                break
            stack = list(node.meta.get("nn_module_stack", {}).values())
            weight = getattr(modules.get(stack[-1][0]), "weight", None) if stack else None
            if isinstance(weight, torch.Tensor) and weight.numel() == numel:
                return stack[-1][0]
            node = node.args[0] if node.args else None
    return None


def _compress(mlmodel: Any, scheme: _Scheme, weights: dict[tuple[str, str], _Weight], job: ConversionJob) -> Any:
    """Apply the scheme with coremltools, every weight of a kept layer excluded by its const's name."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    kept = {key: w for key, w in weights.items() if driver.kept_by(w.layer, job.keep_float)}
    with driver.stage(_COMPRESS_STAGE):
        if scheme.activations:  # Apple's order: activations first, on a loaded (runnable) float model
            runnable = ct.models.MLModel(mlmodel.get_spec(), weights_dir=mlmodel.weights_dir,
                                         compute_units=ct.ComputeUnit.CPU_ONLY)
            samples = [{name: t.numpy().astype(_io_dtype(t.dtype) or np.float32)
                        for name, t in zip(job.input_names, sample)}
                       for sample in job.calibration or [job.example_inputs]]
            activations = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"),
                                                 op_name_configs={op: None for op, _ in kept})
            mlmodel = cto.linear_quantize_activations(runnable, activations, samples)
        config = cto.OptimizationConfig(global_config=scheme.op_config,
                                        op_name_configs={w.const: None for w in kept.values()})
        return getattr(cto, scheme.function)(mlmodel, config)


def _account(scheme: _Scheme, weights: dict[tuple[str, str], _Weight], storage: list[dict[str, Any]],
             job: ConversionJob) -> dict[str, Any]:
    """What the saved program stores for each weight, per torch layer, with the reason for each float one."""
    outcome: dict[str, str | None] = {}  # layer -> None if every use is compressed, else why it stays float
    stored: dict[str, str] = {}  # one entry per constant, however many ops read it
    for entry in storage:
        weight = weights.get((entry["op"], entry["input"]))
        layer = weight.layer if weight else f"{entry['op']}.{entry['input']}"
        stored[weight.const if weight else layer] = entry["stored"]
        reason = _float_reason(entry, layer, scheme, job) if entry["stored"].startswith("float") else None
        if reason is not None or layer not in outcome:
            outcome[layer] = reason
    return {
        "toolchain": scheme.toolchain,
        "scheme": scheme.scheme,
        "activations": "int8" if scheme.activations else "float16",
        "quantized_layers": [layer for layer, reason in outcome.items() if reason is None],
        "float_layers": [{"name": layer, "reason": reason} for layer, reason in outcome.items() if reason is not None],
        "weight_dtypes": dict(Counter(stored.values())),
    }


def _float_reason(entry: dict[str, Any], layer: str, scheme: _Scheme, job: ConversionJob) -> str:
    kept = driver.kept_reason(layer, job.keep_float)
    if kept is not None:
        return kept
    threshold = scheme.op_config.weight_threshold
    if threshold is not None and entry["numel"] <= threshold:
        return (f"{entry['numel']} elements, not above coremltools' weight_threshold ({threshold}): too small to "
                f"be worth compressing; stays {entry['stored']}")
    block, shape = getattr(job.precision, "group_size", None), entry["shape"]
    if job.precision.name == "int4" and shape[1] % block:
        depthwise = " (a depthwise conv: 1 input channel per group)" if shape[1] == 1 else ""
        return (f"axis 1 of its weight {shape} has {shape[1]} elements{depthwise}, not a multiple of the block size "
                f"{block}: coremltools' per-block INT4 skips it; stays {entry['stored']}")
    return f"coremltools left it uncompressed (see its log); stays {entry['stored']}"


def _output_dtypes(exported: torch.export.ExportedProgram) -> list[torch.dtype]:
    """Dtypes of the model's own outputs (buffer mutations, if any, come first in the graph's output node)."""
    from torch.export.graph_signature import OutputKind

    nodes = exported.graph.output_node().args[0]
    return [node.meta["val"].dtype for node, spec in zip(nodes, exported.graph_signature.output_specs)
            if spec.kind == OutputKind.USER_OUTPUT]


def _io_dtype(dtype: torch.dtype) -> type | None:
    """Core ML feature dtype for a torch I/O tensor: floats keep their width, ints become int32 (no int64 features)."""
    if dtype.is_floating_point:
        return {torch.float32: np.float32, torch.float16: np.float16}.get(dtype)  # None: coremltools decides
    return None if dtype.is_complex or dtype == torch.bool else np.int32


def _check_spec(summary: dict[str, Any], job: ConversionJob, spec_version: int) -> None:
    """Fail loudly if the saved model does not declare what the bundle's manifest will promise."""
    problems = []
    if summary["specification_version"] != spec_version:
        problems.append(f"specification version {summary['specification_version']}, expected {spec_version}")
    got_in = [(f["name"], f.get("shape")) for f in summary["inputs"]]
    want_in = [(name, list(t.shape)) for name, t in zip(job.input_names, job.example_inputs)]
    if got_in != want_in:
        problems.append(f"inputs {got_in}, expected {want_in}")
    got_out = [f["name"] for f in summary["outputs"]]
    if got_out != list(job.output_names):
        problems.append(f"outputs {got_out}, expected {list(job.output_names)}")
    weights = summary["weight_dtypes"]
    if job.precision.name == "fp16" and weights and "float16" not in weights:
        problems.append(f"fp16 recipe but no fp16 weights (weights by dtype: {weights})")
    if job.precision.name == "fp32" and "float16" in weights:
        problems.append(f"fp32 recipe but fp16 weights (weights by dtype: {weights})")
    if problems:
        raise InternalError(f"coreml conversion for device {job.profile.id!r}: the saved model.mlpackage does not "
                            f"match the request: {'; '.join(problems)}. Please report this with the model")
