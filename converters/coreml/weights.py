"""The torch layer behind each weight of the converted program, and what the saved program stores for it.

The torch module behind each weight is found through the debug handles that coremltools carries from the
exported graph's nodes onto the ops it makes from them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from converters import driver
from converters.base import ConversionJob
from sdk.core.results import FloatLayer, QuantAccount

if TYPE_CHECKING:
    from converters.coreml.compress import _Scheme

#: how far back through the exported graph a fused op's debug handle is followed to reach its weight layer
#: (conv <- batch_norm <- getitem, linear <- add ...)
_MAX_HOPS = 4


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


def _account(scheme: _Scheme, weights: dict[tuple[str, str], _Weight], storage: list[dict[str, Any]],
             job: ConversionJob) -> QuantAccount:
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
    return QuantAccount(
        scheme=scheme.scheme, toolchain=scheme.toolchain,
        activations="int8-static" if scheme.activations else "float16",
        quantized_layers=[layer for layer, reason in outcome.items() if reason is None],
        float_layers=[FloatLayer(layer, reason) for layer, reason in outcome.items() if reason is not None],
        weight_dtypes=dict(Counter(stored.values())))


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
