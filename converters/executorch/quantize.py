"""Quantization, each with ExecuTorch's own XNNPACK tooling, set up for the job.

- int8 / int8-dynamic: PT2E. `XNNPACKQuantizer` with `get_symmetric_quantization_config(is_per_channel=True,
  is_dynamic=...)` annotates the exported graph, torchao's `prepare_pt2e` inserts observers, the calibration
  samples run through it (static only), `convert_pt2e` folds the weights to int8, and the result is exported again
  and lowered: XNNPACK takes each dequantize -> op -> quantize group as one integer op. The quantizer is
  `converters.quant.xnnpack_relu6.ReLU6XNNPACKQuantizer`: upstream fuses only relu into a conv or linear, so a
  ReLU6 (hardtanh) output would reuse the pre-activation range.
- int4: torchao's 8da4w (`Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, PerGroup(g))`, what
  ExecuTorch's LLM export uses) on the nn.Module before torch.export; XNNPACK runs it as int4 block-wise weights
  with int8 per-token dynamic activations.
Layers in `job.keep_float` stay float through the quantizers' own filters: `XNNPACKQuantizer.set_filter_function`
with torchao's `get_module_name_filter` (its `set_module_name(name, None)` asserts "not supported yet" in 1.5.1),
and `quantize_`'s `filter_fn`.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torchao
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
from executorch.version import __version__ as EXECUTORCH_VERSION
from torch.export import ExportedProgram
from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
from torchao.quantization.granularity import PerGroup
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
from torchao.quantization.pt2e.quantizer import get_module_name_filter

from converters import driver
from converters.base import ConversionJob
from converters.quant import ranges
from converters.quant.xnnpack_relu6 import ReLU6XNNPACKQuantizer
from sdk.core.recipes import Int4Weight, Int8Dynamic, Int8Static
from sdk.core.results import ActivationMode


def _pt2e_quantizer(job: ConversionJob, skip: frozenset[str] = frozenset(),
                    only: frozenset[Any] | None = None) -> ReLU6XNNPACKQuantizer:
    """XNNPACKQuantizer (with conv / linear -> ReLU6 fused, `converters.quant.xnnpack_relu6`) with the job's INT8
    scheme; filtered out: every node of a `keep_float` module, every node named in `skip`, and (when `only` is
    given) every node whose op is not in `only`."""
    config = job.precision
    dynamic = isinstance(config, Int8Dynamic)
    per_channel = dynamic or config.per_channel
    quantizer = ReLU6XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel,
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
    """Attention in the graph: fused (`scaled_dot_product_attention`, how `transformers` 5 models attend by
    default), or a softmax and a product of two activations (scores = q @ k^T), not a classifier that merely ends
    in a softmax (its linear layers export as aten.linear)."""
    targets = {node.target for node in graph.graph.nodes if node.op == "call_function"}
    return torch.ops.aten.scaled_dot_product_attention.default in targets or (
        bool(targets & {torch.ops.aten.softmax.int, torch.ops.aten._softmax.default})
        and bool(targets & {torch.ops.aten.matmul.default, torch.ops.aten.bmm.default}))


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


def _quantize_pt2e(job: ConversionJob, exported: ExportedProgram) -> tuple[ExportedProgram, list[str]]:
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


def _activations(job: ConversionJob) -> ActivationMode:
    """How the quantized layers' activations run: calibrated ranges for static INT8; quantized at run time, one
    scale per row (token), for int8-dynamic and int4's 8da4w."""
    return "int8-static" if isinstance(job.precision, Int8Static) else "int8-dynamic"


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
