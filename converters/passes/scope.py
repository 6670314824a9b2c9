"""Which config a pass applies to which layer, in coremltools' order: layer name, then layer type, then global.

A pass config's `scope` maps keys to a config of the same kind or to None ("leave this layer alone"):

    LowRank(ratio=0.5, scope={"classifier": None, "Conv2d": LowRank(ratio=0.25)})

- a name key matches a module's qualified name or a dotted prefix of it ("layers.0" covers
  "layers.0.mlp.0"); the longest matching name wins;
- a type key matches the module's class name or that of a base class ("Linear" covers subclasses);
- otherwise the pass's own (global) config applies.

By default the first and the last weight layer the forward calls (the stem and the classifier) are
left alone, because they hold the least redundancy and the most accuracy; only a name key brings
them back into a pass. Only modules the forward calls as modules are candidates: a Linear whose
weight a parent reads directly (e.g. `nn.MultiheadAttention.out_proj`) cannot be substituted.
"""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from converters.passes.metrics import op_by_op
from sdk.core.errors import RecipeError, closest
from sdk.core.recipes import Config

__all__ = ["WEIGHT_LAYERS", "called_layers", "resolve", "plan", "fused_parent", "substitutable"]

#: Layer types that hold the weights passes act on, and whose order defines "first" and "last".
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
#: torch modules that read their children's weights directly (fused fast paths), so a child cannot be swapped.
FUSED_PARENTS: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, nn.TransformerEncoderLayer,
                                              nn.TransformerDecoderLayer)


def called_layers(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> list[str]:
    """Qualified names of the weight layers the forward calls, in first-call order."""
    order: list[str] = []

    def recorder(name: str):
        def record(_module: nn.Module, _args: tuple) -> None:
            if name not in order:
                order.append(name)
        return record

    handles = [module.register_forward_pre_hook(recorder(name))
               for name, module in model.named_modules() if isinstance(module, WEIGHT_LAYERS)]
    try:
        with op_by_op(model):
            model(*example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return order


def resolve(config: Config, name: str, module: nn.Module, protected: frozenset[str] = frozenset()) -> Config | None:
    """The config for layer `name`: longest matching name key, else None if protected, else type key, else global."""
    scope = dict(config.scope or ())
    names = [key for key in scope if key == name or name.startswith(key + ".")]
    if names:
        return scope[max(names, key=len)]
    if name in protected:
        return None
    return next((scope[cls.__name__] for cls in type(module).__mro__ if cls.__name__ in scope), config)


def plan(model: nn.Module, config: Config, example_inputs: Sequence[torch.Tensor],
         accept: type[nn.Module] | tuple[type[nn.Module], ...]) -> dict[str, Config | None]:
    """For every called layer of type `accept`: its resolved config (None = left alone).

    A scope key that matches no module name, name prefix or type is a RecipeError (a typo would
    otherwise silently compress the layer it meant to protect).
    """
    _check_keys(model, config)
    order = called_layers(model, example_inputs)
    protected = frozenset(order[:1] + order[-1:])
    modules = dict(model.named_modules())
    return {name: resolve(config, name, modules[name], protected) for name in order
            if isinstance(modules[name], accept)}


def _check_keys(model: nn.Module, config: Config) -> None:
    names = [name for name, _ in model.named_modules() if name]
    types = {cls.__name__ for module in model.modules() for cls in type(module).__mro__}
    for key, _ in config.scope or ():
        if key not in types and not any(name == key or name.startswith(key + ".") for name in names):
            hint = closest(key, names + sorted(types))
            raise RecipeError(f"{config}: scope key {key!r} matches no layer name or type of {type(model).__name__}."
                              + (f" Did you mean {hint!r}?" if hint else "")
                              + f" Layer names look like: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")


def fused_parent(model: nn.Module, name: str) -> str | None:
    """The type name of an ancestor of layer `name` that reads its weight directly (so it cannot be replaced)."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        ancestor = model.get_submodule(".".join(parts[:depth]))
        if isinstance(ancestor, FUSED_PARENTS):
            return type(ancestor).__name__
    return None


def substitutable(model: nn.Module, config: Config, example_inputs: Sequence[torch.Tensor],
                  accept: type[nn.Module] | tuple[type[nn.Module], ...], candidate: Callable[[nn.Module], bool],
                  skipped: list[dict[str, str]]) -> Iterator[tuple[str, nn.Module, Config]]:
    """(name, layer, config) for each planned `candidate` layer a pass may replace with new modules. A candidate
    that scope leaves alone, or whose weight a fused parent reads, is appended to `skipped` with the reason."""
    for name, layer_config in plan(model, config, example_inputs, accept).items():
        layer = model.get_submodule(name)
        if not candidate(layer):
            continue
        if layer_config is None:
            skipped.append({"name": name, "reason": "left alone by scope"})
        elif parent := fused_parent(model, name):
            skipped.append({"name": name, "reason": f"its {parent} parent reads the weight directly"})
        else:
            yield name, layer, layer_config
