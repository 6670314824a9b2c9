"""Average pools whose kernel spans their whole input, given to a toolchain as the global means they compute.

Hugging Face EfficientNet pools with `nn.AvgPool2d(config.hidden_dim, ceil_mode=True)`: a kernel of 1280 over a
7x7 map, which torch clips to the input (a global mean). OpenVINO's AvgPool refuses a kernel larger than its
input ("Kernel after dilation has size ... larger than the data shape"), and litert-torch pads the input up to
the kernel (a 1x320x320x320 tensor for a 320-channel map), whose INT8 average is a constant: the logits come out
zero. A mean over the pooled dimensions is the same value for every toolchain.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["GlobalMean", "global_pools_as_means"]

_POOLS = {nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3}


class GlobalMean(nn.Module):
    """The mean over the last `dims` dimensions, kept as size 1: what a pool covering its whole input returns."""

    def __init__(self, dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=tuple(range(-self.dims, 0)), keepdim=True)


def global_pools_as_means(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> nn.Module:
    """`model`, or a copy in which every unpadded average pool that covers its input on `example_inputs` is a
    `GlobalMean` under the same name (it has no weights, so layer names and keep_float are unaffected)."""
    pools = {name: module for name, module in model.named_modules() if type(module) in _POOLS}
    if not pools:
        return model
    spans: dict[str, bool] = {}

    def record(name: str, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        dims = _POOLS[type(module)]
        kernel = _per_dim(module.kernel_size, dims)
        covers = (getattr(module, "divisor_override", None) is None and not any(_per_dim(module.padding, dims))
                  and all(k >= s for k, s in zip(kernel, args[0].shape[-dims:])))
        spans[name] = spans.get(name, True) and covers

    hooks = [module.register_forward_pre_hook(lambda m, a, name=name: record(name, m, a))
             for name, module in pools.items()]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    global_pools = [name for name, covers in spans.items() if covers]
    if not global_pools:
        return model
    rewritten = copy.deepcopy(model)
    for name in global_pools:
        rewritten.set_submodule(name, GlobalMean(_POOLS[type(pools[name])]))
    return rewritten


def _per_dim(value: int | Sequence[int], dims: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * dims
