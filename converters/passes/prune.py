"""Prune: structured (whole channels/neurons, with Torch-Pruning's DepGraph) or unstructured (global magnitude).

Structured: `torch_pruning.pruner.MetaPruner` with `MagnitudeImportance` (p=2 for "l2", 1 for "l1")
removes `sparsity` of the channels of every prunable group, i.e. of every set of layers whose
channels are coupled through residual adds, concatenations, depthwise groups and norms, so shapes stay
consistent and params and MACs really drop. Layers scoped None keep their output channels (their
input channels follow the layer that feeds them), and so do the layers that produce model outputs.
Attention: DepGraph couples q/k/v widths through the score matmul as if it were element-wise, which
is not sound, so groups that pass through a batched matmul or SDPA are left whole (counted in the
report); `nn.MultiheadAttention` is pruned per head (its `num_heads` is given to the pruner). Groups that
reach a model output without a weight layer in between (a transformer's residual width feeding a pooled,
normalised embedding) are left whole too: pruning them would change the output's shape.

Unstructured: `torch.nn.utils.prune.global_unstructured` with L1 magnitude over all scoped weights
(l1 and l2 rank single weights alike), then `prune.remove`: weights are zeroed, shapes stay, and the
report gives the zero fraction per layer and overall.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from converters.passes import PassContext, register_pass
from converters.passes.metrics import count_nonzero, count_params, eval_mode, flatten_outputs, layer_row, relative_error
from converters.passes.scope import WEIGHT_LAYERS, plan
from sdk.core.errors import InternalError
from sdk.core.recipes import Prune

__all__ = ["output_layers"]

#: grad_fn names of ops that mix channels across positions; DepGraph would treat them as element-wise.
_ATTENTION_OPS = ("Bmm", "ScaledDotProduct", "Efficient", "Flash")


@torch.no_grad()
def output_layers(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[str]:
    """Weight layers whose output (or a view of it) is a model output: their output channels must stay."""
    produced: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # held so that no freed output's memory is reused by a later tensor

    def record(name: str, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            alive.append(out)
            produced[out.untyped_storage().data_ptr()] = name
    handles = [module.register_forward_hook(lambda _m, _a, out, name=name: record(name, out))
               for name, module in model.named_modules() if isinstance(module, WEIGHT_LAYERS)]
    try:
        with eval_mode(model):
            outputs = flatten_outputs(model(*example_inputs))
    finally:
        for handle in handles:
            handle.remove()
    return sorted({produced[ptr] for out in outputs if (ptr := out.untyped_storage().data_ptr()) in produced})


@register_pass(Prune)
def prune(model: nn.Module, config: Prune, ctx: PassContext) -> tuple[nn.Module, dict[str, Any]]:
    layers = plan(model, config, ctx.example_inputs, WEIGHT_LAYERS)
    return (_structured if config.structured else _unstructured)(model, config, layers, ctx)


def _structured(model: nn.Module, config: Prune, layers: dict[str, Prune | None],
                ctx: PassContext) -> tuple[nn.Module, dict[str, Any]]:
    import torch_pruning as tp

    inputs = ctx.example_inputs
    shapes = [tuple(o.shape) for o in flatten_outputs(_run(model, inputs))]
    keep_names = sorted({name for name, c in layers.items() if c is None} | set(output_layers(model, inputs)))
    keep = [model.get_submodule(name) for name in keep_names]
    ratios = {model.get_submodule(name): c.sparsity for name, c in layers.items()
              if c is not None and c.sparsity != config.sparsity}
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    before = {name: (count_params(module), _weight(module).detach().clone()) for name, module in model.named_modules()
              if isinstance(module, (*WEIGHT_LAYERS, nn.MultiheadAttention)) and _weight(module) is not None}
    attention_groups = output_groups = 0
    with eval_mode(model):  # tracing runs a forward: BatchNorm statistics must not move
        pruner = tp.pruner.MetaPruner(
            model, list(inputs), importance=tp.importance.MagnitudeImportance(p=2 if config.importance == "l2" else 1),
            pruning_ratio=config.sparsity, pruning_ratio_dict=ratios, ignored_layers=keep, num_heads=heads,
            forward_fn=lambda m, x: m(*x), output_transform=lambda out: sum(t.sum() for t in flatten_outputs(out)))
        for group in pruner.step(interactive=True):
            if _through_attention(group):
                attention_groups += 1
                continue
            if _reaches_output(group):
                output_groups += 1
                continue
            group.prune()
    after = [tuple(o.shape) for o in flatten_outputs(_run(model, inputs))]
    if after != shapes:
        raise InternalError(f"structured pruning changed the model's output shapes {shapes} -> {after}; "
                            "leave the layer producing that output alone with Prune(scope={'<layer name>': None})")
    rows = []
    for name, (params, weight) in before.items():
        layer = model.get_submodule(name)
        pruned = _weight(layer).detach()
        if pruned.shape != weight.shape:  # error = norm of the removed weights, relative to the whole
            norm = torch.linalg.vector_norm
            kept = float(norm(pruned.double()) / norm(weight.double()).clamp_min(1e-30))
            rows.append(layer_row(name, layer, params, layer, max(0.0, 1.0 - kept ** 2) ** 0.5,
                                  weight_shape_before=list(weight.shape), weight_shape_after=list(pruned.shape)))
    return model, {"layers": rows, "kept_whole": keep_names,
                   "attention_groups_left_whole": attention_groups, "output_groups_left_whole": output_groups}


def _unstructured(model: nn.Module, config: Prune, layers: dict[str, Prune | None],
                  ctx: PassContext) -> tuple[nn.Module, dict[str, Any]]:
    targets = [(name, model.get_submodule(name), c) for name, c in layers.items() if c is not None]
    before = {name: module.weight.detach().clone() for name, module, _ in targets}
    nonzero_before = count_nonzero(model)
    shared = [(module, "weight") for _, module, c in targets if c.sparsity == config.sparsity]
    if shared:
        torch_prune.global_unstructured(shared, pruning_method=torch_prune.L1Unstructured, amount=config.sparsity)
    for _, module, c in targets:
        if c.sparsity != config.sparsity:
            torch_prune.l1_unstructured(module, "weight", amount=c.sparsity)
        torch_prune.remove(module, "weight")
    rows = [layer_row(name, module, count_params(module), module, relative_error(before[name], module.weight),
                      sparsity=round(float((module.weight == 0).float().mean()), 6)) for name, module, _ in targets]
    zeros = sum(int((module.weight == 0).sum()) for _, module, _ in targets)
    total = sum(module.weight.numel() for _, module, _ in targets)
    return model, {"layers": rows, "sparsity": round(zeros / max(total, 1), 6), "pruned_weights": total,
                   "nonzero_params_before": nonzero_before, "nonzero_params_after": count_nonzero(model)}


def _weight(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, "weight", None) if not isinstance(module, nn.MultiheadAttention) else module.in_proj_weight


@torch.no_grad()
def _run(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    with eval_mode(model):
        return model(*inputs)


def _reaches_output(group: Any) -> bool:
    """True when a DepGraph group's channels are a model output's channels."""
    from torch_pruning.ops import _OutputOp

    return any(isinstance(node.module, _OutputOp) for dep, _ in group for node in (dep.source, dep.target))


def _through_attention(group: Any) -> bool:
    """True when a DepGraph group passes through a batched matmul / SDPA (attention scores)."""
    for dep, _ in group:
        for node in (dep.source, dep.target):
            grad_fn = str(getattr(node.module, "_grad_fn", ""))
            if any(op in grad_fn for op in _ATTENTION_OPS):
                return True
    return False
