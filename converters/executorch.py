"""ExecuTorch converter: torch -> `.pte` program whose supported subgraphs are lowered to the XNNPACK delegate.

The flow is two steps so that a quantizer slots in between: `_export_program` (torch.export, ExportedProgram out)
then `_lower` (`to_edge_transform_and_lower` with the profile's partitioner). A PT2E quantize step takes and
returns an ExportedProgram, so it goes between them without touching either.

fp16: XNNPACK has no "run in fp16" switch; it computes in float16 when the graph's tensors are float16. So the
model is cast with `.half()` and wrapped to cast its float inputs to fp16 and its fp16 outputs back to fp32: the
program's I/O stays float32 (the bundle's contract) and the two boundary casts run as ExecuTorch portable kernels
(XNNPACK does not take dtype conversions). BatchNorm after a conv or linear is folded into it by XNNPACK's
FuseBatchNormPass during lowering, in fp32 and fp16 alike.

Quantization, each with ExecuTorch's own XNNPACK tooling:
- int8 / int8-dynamic: PT2E. `XNNPACKQuantizer` with `get_symmetric_quantization_config(is_per_channel=True,
  is_dynamic=...)` annotates the exported graph, torchao's `prepare_pt2e` inserts observers, the calibration
  samples run through it (static only), `convert_pt2e` folds the weights to int8, and the result is exported again
  and lowered: XNNPACK takes each dequantize -> op -> quantize group as one integer op.
- int4: torchao's 8da4w (`Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, PerGroup(g))`, what
  ExecuTorch's LLM export uses) on the nn.Module before torch.export; XNNPACK runs it as int4 block-wise weights
  with int8 per-token dynamic activations.
Layers in `job.keep_float` stay float through the quantizers' own filters: `XNNPACKQuantizer.set_filter_function`
with torchao's `get_module_name_filter` (its `set_module_name(name, None)` asserts "not supported yet" in 1.5.1),
and `quantize_`'s `filter_fn`. The report's per-layer account comes from the quantized graph; the weight dtypes
are read back from the XNNPACK payloads inside the written `.pte`.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.resources
import json
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.utils._pytree as pytree
import torchao
from executorch.backends.xnnpack import serialization as xnnpack_serialization
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
)
from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
from executorch.devtools.backend_debug import get_delegation_info
from executorch.exir import EdgeProgramManager, to_edge_transform_and_lower
from executorch.exir._serialize._flatbuffer import _flatc_decompile
from executorch.exir._serialize._program import deserialize_pte_binary
from executorch.exir.lowered_backend_module import get_lowered_backend_modules
from executorch.version import __version__ as EXECUTORCH_VERSION
from torch.export import ExportedProgram
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode
from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
from torchao.quantization.granularity import PerGroup
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import get_module_name_filter

from converters import driver, register
from converters.base import ConversionJob, ConversionResult, Converter
from converters.quant import ranges
from sdk.core.errors import ProfileError, UnsupportedRecipeError
from sdk.core.recipes import Int4Weight, Int8Dynamic, Int8Static

MODEL_FILE = "model.pte"
PARTITIONERS: dict[str, Callable[[], Any]] = {"xnnpack": XnnpackPartitioner}
#: where the toolchain names the op it failed on: edge verifier ("Operator aten.x.default is not in Core ATen",
#: "<EdgeOpOverload: aten.x.default>"), an fx pass ("While executing %n : ... target=...aten.x.default"),
#: to_executorch ("Missing out variants: {'aten::x'}")
_OP_PATTERNS = (
    re.compile(r"Operator (?:torch\._ops\.)?(\w+\.\w+\.\w+) is not in Core ATen"),
    re.compile(r"<EdgeOpOverload: (\w+\.\w+\.\w+)>"),
    re.compile(r"While executing %\S+ : .*?target=\S*?(aten\.\w+\.\w+)"),
    re.compile(r"Missing out variants: \{'([\w:.]+)'"),
)
#: XNNPACK's partitioner configs log each node they refuse, with the reason, at DEBUG under this logger
_XNNPACK_LOGGER = "executorch.backends.xnnpack.partition"
_WHY = re.compile(r"WhyNoPartition: Node (\w+) was not partitioned because (.*?)\.?$", re.DOTALL)
_OTHER_TARGETS = ("or export for a device whose toolchain handles it, e.g. 'android-litert' (LiteRT) "
                  "or 'intel-cpu' (OpenVINO)")


#: precisions quantized here (the others are float: fp32 as exported, fp16 via `_Fp16Program`)
QUANTIZED = frozenset({"int8", "int8-dynamic", "int4"})
#: ops of the exported graph that are a conv or linear layer, with their weight as argument 1
_LAYER_OPS = frozenset({torch.ops.aten.linear.default, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
                        torch.ops.aten.conv3d.default, torch.ops.aten.conv_transpose1d.default,
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


_FP16 = {
    "method": "model cast to float16 (torch .half()) before export; XNNPACK runs its fp16 kernels",
    "weights": "float16",
    "activations": "float16 inside XNNPACK; float32 inputs and outputs, cast at the program boundary",
}


class _Fp16Program(torch.nn.Module):
    """A float16 copy of `model` between float32 inputs and float32 outputs (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()

    def forward(self, *inputs: torch.Tensor) -> Any:
        halves = [x.half() if x.is_floating_point() else x for x in inputs]
        return pytree.tree_map_only(torch.Tensor, _to_fp32, self.model(*halves))


def _to_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype == torch.float16 else t


class _RefusalLog(logging.Handler):
    """Collects the partitioner's "why this node was not partitioned" messages, first reason per op type."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        found = _WHY.match(record.getMessage())
        if found:
            self.reasons.setdefault(_op_type(found.group(1)), found.group(2))


def _op_type(node_name: str) -> str:
    """`aten_mean_dim_1` -> `aten_mean_dim`, as `get_delegation_info` names op types."""
    return re.sub(r"_\d+$", "", node_name)


@contextlib.contextmanager
def _refusals() -> Iterator[_RefusalLog]:
    """Capture XNNPACK's refusal reasons during lowering without printing its debug log."""
    logger = logging.getLogger(_XNNPACK_LOGGER)
    handler, saved = _RefusalLog(), (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _coverage(edge: EdgeProgramManager, reasons: dict[str, str]) -> dict[str, Any]:
    """How many graph nodes the delegate took, per ExecuTorch's own `get_delegation_info`, and why not the rest.

    `getitem` nodes are left out: they unpack tuples (a delegate's outputs, a multi-output op) and run no kernel,
    as in ExecuTorch's `get_non_lowered_nodes`. Delegated counts are the ops as partitioned, before XNNPACK fuses
    them (a folded BatchNorm counts as one delegated node). Call it before `to_executorch`, which rewrites the
    graph in place (out-variant ops, `alloc` nodes).
    """
    graph_module = edge.exported_program().graph_module
    info = get_delegation_info(graph_module)
    ops = {op: b for op, b in info.delegation_by_operator.items() if op != "getitem"}
    delegated = sum(b.delegated for b in ops.values())
    total = delegated + sum(b.non_delegated for b in ops.values())
    left_out = {op: b.non_delegated for op, b in sorted(ops.items()) if b.non_delegated}
    return {
        "delegated_nodes": delegated,
        "non_delegated_nodes": total - delegated,
        "delegated_fraction": round(delegated / total, 4) if total else 1.0,
        "non_delegated_ops": left_out,
        "non_delegated_reasons": {op: reasons.get(op, "no partitioner config takes this op") for op in left_out},
        "delegates": sorted({m.backend_id for m in get_lowered_backend_modules(graph_module)}),
        "delegated_subgraphs": info.num_delegated_subgraphs,
    }


def _check_request(job: ConversionJob) -> None:
    """Refuse what cannot be made before any export work."""
    config = job.precision
    if isinstance(config, Int8Static) and config.symmetric_activations:
        raise UnsupportedRecipeError(f"{config} with symmetric_activations=True (XNNPACKQuantizer's INT8 "
                                     "activations are per-tensor affine)", ExecuTorchConverter.format,
                                     job.profile.id, sorted(ExecuTorchConverter.supported))


def _pt2e_quantizer(job: ConversionJob, skip: frozenset[str] = frozenset(),
                    only: frozenset[Any] | None = None) -> XNNPACKQuantizer:
    """XNNPACKQuantizer with the job's INT8 scheme; filtered out: every node of a `keep_float` module, every node
    named in `skip`, and (when `only` is given) every node whose op is not in `only`."""
    config = job.precision
    dynamic = isinstance(config, Int8Dynamic)
    per_channel = dynamic or config.per_channel
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel,
                                                                                is_dynamic=dynamic))
    if job.keep_float or skip or only is not None:
        kept = [get_module_name_filter(name) for name in sorted(job.keep_float)]
        quantizer.set_filter_function(
            lambda node: node.name not in skip and (only is None or node.target in only)
            and not any(in_kept(node) for in_kept in kept))
    return quantizer


#: the ops a transformer's static INT8 quantizes (NNCF's TRANSFORMER model type does the same): the weight
#: layers. Per-tensor int8 on the residual adds and products loses the outlier channels transformers carry
#: (all-MiniLM-L6-v2 on XNNPACK: embedding cosine 0.86 with them quantized, 0.95 without).
_WEIGHT_OPS = frozenset({torch.ops.aten.linear.default, torch.ops.aten.conv1d.default,
                         torch.ops.aten.conv2d.default})


def _is_transformer(graph: torch.fx.GraphModule) -> bool:
    """Attention in the graph: a softmax and a product of two activations (scores = q @ k^T), not a classifier
    that merely ends in a softmax (its linear layers export as aten.linear)."""
    targets = {node.target for node in graph.graph.nodes if node.op == "call_function"}
    return bool(targets & {torch.ops.aten.softmax.int, torch.ops.aten._softmax.default}) and bool(
        targets & {torch.ops.aten.matmul.default, torch.ops.aten.bmm.default})


#: calibration samples run through the float graph to find int8-unrepresentable ranges
_RANGE_SAMPLES = 8


def _wide_nodes(graph: torch.fx.GraphModule, samples: list[tuple[torch.Tensor, ...]]) -> list[str]:
    """Nodes whose floating output, or a floating input, goes beyond `ranges.EXTREME_ABS` on `samples`."""
    peak: dict[str, float] = {}

    class _Peaks(torch.fx.Interpreter):
        def run_node(self, node: torch.fx.Node) -> Any:
            out = super().run_node(node)
            if isinstance(out, torch.Tensor) and out.is_floating_point() and out.numel():
                peak[node.name] = max(peak.get(node.name, 0.0), float(out.detach().abs().max()))
            return out

    for sample in samples:
        _Peaks(graph).run(*sample)
    wide = {name for name, value in peak.items() if ranges.extreme(value)}
    return [node.name for node in graph.graph.nodes
            if node.op == "call_function" and (node.name in wide or any(a.name in wide for a in node.all_input_nodes))]


def _integer_scalar_ops(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Integer `add/mul.Tensor(x, scalar)` -> `add/mul.Scalar`, so XNNPACKQuantizer leaves them alone: its
    `transform_for_annotation` turns every scalar of add/mul.Tensor into a float32 tensor constant, which makes
    integer index arithmetic float (Hugging Face attention masks index with `arange(n) + offset`, and the
    calibration forward then fails with "tensors used as indices must be long")."""
    overloads = {torch.ops.aten.add.Tensor: torch.ops.aten.add.Scalar,
                 torch.ops.aten.mul.Tensor: torch.ops.aten.mul.Scalar}
    changed = False
    for node in graph.graph.nodes:
        value = node.meta.get("val")
        if (node.op == "call_function" and node.target in overloads and len(node.args) == 2
                and isinstance(node.args[1], (int, bool)) and isinstance(value, torch.Tensor)
                and not value.dtype.is_floating_point and not value.dtype.is_complex):
            node.target = overloads[node.target]
            changed = True
    if changed:
        graph.recompile()
    return graph


def _int4_skip_reason(module: torch.nn.Module, name: str, job: ConversionJob) -> str | None:
    """Why 8da4w leaves this module float (None: it quantizes it); the `quantize_` filter and the report share it."""
    kept = driver.kept_reason(name, job.keep_float)
    if kept is not None:
        return kept
    if not isinstance(module, torch.nn.Linear):
        return ("torchao's 8da4w (Int8DynamicActivationIntxWeightConfig) is applied to nn.Linear layers only, as in "
                "ExecuTorch's own LLM export; use 'int8' to quantize convolutions")
    group = job.precision.group_size
    if module.in_features % group:
        return (f"in_features {module.in_features} is not a multiple of group_size {group}, so its rows do not "
                "split into whole groups; use a group size that divides it")
    return None


def _int4_model(job: ConversionJob) -> torch.nn.Module:
    """A copy of the model with torchao's 8da4w on every Linear that `_int4_skip_reason` lets through."""
    model = copy.deepcopy(job.model).eval()
    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                   weight_granularity=PerGroup(job.precision.group_size))
    quantize_(model, config, filter_fn=lambda module, name: _int4_skip_reason(module, name, job) is None)
    return model


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


def _activations(job: ConversionJob) -> str:
    """How the quantized layers' activations run (the driver's sensitivity simulation reads this)."""
    if isinstance(job.precision, Int8Static):
        return "int8, static (calibrated ranges)"
    return "int8, dynamic (quantized at run time, one scale per row)"


def _scheme(job: ConversionJob) -> tuple[str, str]:
    """(toolchain, human description of the scheme) for the job's quantization config."""
    config = job.precision
    if isinstance(config, Int4Weight):
        toolchain = (f"torchao {torchao.__version__} quantize_(Int8DynamicActivationIntxWeightConfig(weight_dtype="
                     f"int4, PerGroup({config.group_size}))) ('8da4w'), executorch {EXECUTORCH_VERSION} "
                     "XnnpackPartitioner")
        scheme = (f"nn.Linear weights int4 symmetric in groups of {config.group_size} input values (one scale per "
                  "group); activations int8 affine, quantized at run time with one scale per token (row); biases "
                  "and everything else float32; float32 program inputs and outputs")
        return toolchain, scheme
    toolchain = (f"executorch {EXECUTORCH_VERSION} XNNPACKQuantizer, torchao {torchao.__version__} PT2E "
                 "(torchao.quantization.pt2e prepare_pt2e / convert_pt2e), lowered with XnnpackPartitioner")
    if isinstance(config, Int8Dynamic):
        scheme = ("weights int8 per-channel symmetric; activations int8 affine, quantized at run time (no "
                  "calibration) with one scale per row, as XNNPACK's qdint8 does (the PT2E graph annotates "
                  "per-tensor); biases float32; XNNPACKQuantizer's dynamic config covers linear layers and 2-D "
                  "convs that are neither depthwise nor followed by a ReLU; float32 program inputs and outputs")
        return toolchain, scheme
    samples = len(job.calibration or [job.example_inputs])
    weights = "per-channel" if config.per_channel else "per-tensor"
    scheme = (f"weights int8 {weights} symmetric; activations int8 per-tensor affine, ranges from "
              f"HistogramObserver over {samples} calibration samples; biases int32; float32 program inputs "
              "and outputs (XNNPACK converts at the boundary)")
    return toolchain, scheme


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


def _layers_account(job: ConversionJob, layers: dict[str, str]) -> dict[str, Any]:
    """Which layers read integer weights in the quantized graph, and why the others stay float."""
    return {"quantized_layers": [name for name, dtype in layers.items() if dtype.startswith("int")],
            "float_layers": [{"name": name, "reason": _float_reason(name, dtype, job)}
                             for name, dtype in layers.items() if not dtype.startswith("int")]}


def _account(job: ConversionJob, layers: dict[str, str], pte: bytes) -> dict[str, Any]:
    """Per layer, quantized or float (and why), from the graph that was lowered; weight dtypes from the `.pte`."""
    storage = _xnnpack_storage(pte)
    toolchain, scheme = _scheme(job)
    return {
        "toolchain": toolchain,
        "scheme": scheme,
        "activations": _activations(job),
        **_layers_account(job, layers),
        "weight_dtypes": dict(Counter(_XNN_LABELS.get(d, d) for d in storage["weights"].elements())),
        "xnnpack_datatypes": {role: dict(counts) for role, counts in storage.items()},
        "weight_dtypes_source": f"conv / fully-connected nodes of the XNNPACK payloads in {MODEL_FILE}; ops left "
                                "outside XNNPACK are listed in coverage",
    }


def _cpu_flags() -> set[str] | None:
    """This host's CPU feature flags, where Linux lists them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), None)
    return set(line.split(":", 1)[1].split()) if line else None


def _speed_note() -> str:
    """What quantization does for speed, worded from this host's int8 dot-product flags rather than promised."""
    flags = _cpu_flags()
    dot = sorted((flags or set()) & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})
    if flags is None:
        host = "this host's CPU flags could not be read, so its INT8 timings cannot be judged"
    elif dot:
        host = (f"this host's CPU has int8 dot-product instructions ({', '.join(dot)}), which XNNPACK uses, so "
                "INT8 timings taken here need not carry over to the device")
    else:
        host = ("this host's CPU has no int8 dot-product instructions (no VNNI), where XNNPACK's INT8 is often "
                "no faster than fp32")
    return (f"speed: quantization is applied for size and memory, not promised as a speed-up; {host}. On the "
            "device it depends on its cores: XNNPACK's int8 kernels are fast on Arm cores with dot-product "
            "instructions (SDOT from ARMv8.2, I8MM) and often no faster than fp32 on older ones (Cortex-A53/A73); "
            "the dynamic schemes (int8-dynamic, int4) also quantize activations at every inference. Measure on "
            "the device")


@register
class ExecuTorchConverter(Converter):
    """torch.export -> XNNPACK-lowered edge program -> `.pte`, run by the ExecuTorch runtime on the device."""

    format = "executorch"
    supported = frozenset({"fp32", "fp16", *QUANTIZED})
    options: ClassVar[dict[str, str]] = {
        "partitioner": f"the delegate supported subgraphs are lowered to: {', '.join(PARTITIONERS)} (default xnnpack)",
    }

    error_patterns = _OP_PATTERNS

    def hint_for(self, exc: Exception, op: str | None, stage: str | None) -> str:
        if isinstance(exc, GuardOnDataDependentSymNode):
            return ("the model branches in Python on a tensor's value, which torch.export cannot trace: use "
                    "torch.where or torch.cond instead, or move the branch out of the model")
        if "not in Core ATen" in str(exc):
            return f"ExecuTorch has no kernel for {op}: rewrite it with core ATen ops, {_OTHER_TARGETS}"
        return f"rewrite {op or 'the failing code'} with common tensor ops, {_OTHER_TARGETS}"

    def build(self, job: ConversionJob) -> ConversionResult:
        _check_request(job)
        quantizing = job.precision.name in QUANTIZED
        exported = self._export_program(job)
        pt2e_notes: list[str] = []
        if job.precision.name in ("int8", "int8-dynamic"):
            exported, pt2e_notes = self._quantize_pt2e(job, exported)
        layers = _layer_weights(exported) if quantizing else {}
        if quantizing:  # the driver's invariants, before the lowering they would otherwise wait for
            driver.check_account(job, _layers_account(job, layers))
        edge, reasons = self._lower(job, exported)
        coverage = _coverage(edge, reasons)
        with driver.stage("to_executorch"):
            program = edge.to_executorch()
        quantization = _account(job, layers, program.buffer) if quantizing else (
            _FP16 if job.precision.name == "fp16" else None)
        (Path(job.workdir) / MODEL_FILE).write_bytes(program.buffer)
        notes = [(f"exported with executorch {EXECUTORCH_VERSION}; the program's inputs and outputs keep the "
                  "model's dtypes (float32 for a float model, in fp16 and the quantized precisions too)")]
        if quantizing:
            notes.append(_speed_note())
        notes += pt2e_notes
        return ConversionResult(MODEL_FILE, coverage=coverage, quantization=quantization, notes=notes)

    def _export_program(self, job: ConversionJob) -> ExportedProgram:
        """torch.export of the model at this job's precision: fp32 as is, fp16 via `_Fp16Program`, int4 with
        torchao's 8da4w applied first; int8 is exported in float here and quantized by `_quantize_pt2e`."""
        if job.precision.name == "fp16":
            model = _Fp16Program(job.model)
        elif job.precision.name == "int4":
            with driver.stage("torchao quantize_ (8da4w)"):
                model = _int4_model(job)
        else:
            model = job.model
        with driver.stage("torch.export"), torch.no_grad():
            return torch.export.export(model, tuple(job.example_inputs))

    def _quantize_pt2e(self, job: ConversionJob, exported: ExportedProgram) -> tuple[ExportedProgram, list[str]]:
        """PT2E with XNNPACKQuantizer: observe (static: on the calibration samples; dynamic: one pass so the weight
        observers see the weights), fold to int8, export again for lowering. Also returns report notes on what
        was left float by rule: transformers' non-weight ops, ranges beyond int8 (`converters.quant.ranges`)."""
        samples = [job.example_inputs] if isinstance(job.precision, Int8Dynamic) else (
            job.calibration or [job.example_inputs])
        with driver.stage("PT2E quantization (XNNPACKQuantizer)"), torch.no_grad():
            graph = _integer_scalar_ops(exported.module())
            wide = _wide_nodes(graph, samples[:_RANGE_SAMPLES])
            only = _WEIGHT_OPS if _is_transformer(graph) else None
            prepared = prepare_pt2e(graph, _pt2e_quantizer(job, skip=frozenset(wide), only=only))
            for sample in samples:
                prepared(*sample)
            notes = ([ranges.note(wide)] if wide else []) + (
                ["a transformer (softmax in the graph): only its linear and conv layers are quantized, as "
                 "NNCF's TRANSFORMER model type does; adds, products, norms and softmax stay float"]
                if only else [])
            return torch.export.export(convert_pt2e(prepared), tuple(job.example_inputs)), notes

    def _lower(self, job: ConversionJob, exported: ExportedProgram) -> tuple[EdgeProgramManager, dict[str, str]]:
        """Edge dialect, with the subgraphs the profile's partitioner supports lowered to its delegate, and the
        partitioner's reasons for the op types it refused."""
        name = job.profile.converter.get("partitioner", "xnnpack")
        if name not in PARTITIONERS:
            raise ProfileError(f"device profile {job.profile.id!r}: [converter] partitioner = {name!r} is not one of "
                               f"{', '.join(PARTITIONERS)}")
        with driver.stage("lowering to the edge dialect"), _refusals() as log:
            edge = to_edge_transform_and_lower(exported, partitioner=[PARTITIONERS[name]()])
        return edge, log.reasons
