"""LowRank: factor a Linear or a dense Conv2d into two thinner layers by truncated SVD.

Linear (out x in) -> Linear(in, r, bias=False) then Linear(r, out). Conv2d k x k (C -> N) -> k x k
conv (C -> r, same stride/padding/dilation) then 1 x 1 (r -> N), from the SVD of the kernel reshaped
to N x (C k k). Each factor gets sqrt(S) so both are equally scaled. The product is the best rank-r
approximation (Eckart-Young); a layer is replaced only when r (in + out) < in x out, i.e. when it
lowers that layer's MACs (and parameters).

`ratio` is a compression ratio, as in AIMET's spatial SVD: the fraction of each layer's parameters
(and MACs) kept, r = floor(ratio * in * out / (in + out)). A fraction of the *rank* never saves
anything on a square layer (rank n/2 costs n/2 * 2n = n^2), which is what users did not expect.
A pass that factors no layer is a RecipeError naming why each candidate was skipped.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from converters.passes import PassContext, register_pass
from converters.passes.metrics import count_params, layer_row, relative_error
from converters.passes.scope import substitutable
from sdk.core.errors import RecipeError
from sdk.core.recipes import LowRank

__all__ = ["rank_for", "factorize"]

SVD = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _is_candidate(layer: nn.Module) -> bool:
    return not (isinstance(layer, nn.Conv2d) and layer.groups != 1)


def _svd(layer: nn.Linear | nn.Conv2d) -> SVD:
    matrix = layer.weight.detach().reshape(layer.weight.shape[0], -1).double()
    return torch.linalg.svd(matrix, full_matrices=False)


def rank_for(singular_values: torch.Tensor, config: LowRank, shape: tuple[int, int]) -> int:
    """The rank that keeps `ratio` of an (out x in) layer's parameters (rounded down, at least 1, at most full),
    or the fewest singular values that keep `energy` of sum(s^2)."""
    full = len(singular_values)
    if config.ratio is not None:
        out_dim, in_dim = shape
        return min(full, max(1, math.floor(config.ratio * in_dim * out_dim / (in_dim + out_dim) + 1e-9)))
    energy = torch.cumsum(singular_values ** 2, 0) / torch.sum(singular_values ** 2).clamp_min(1e-30)
    return min(full, int(torch.searchsorted(energy, torch.tensor(config.energy - 1e-12, dtype=energy.dtype))) + 1)


def factorize(layer: nn.Linear | nn.Conv2d, rank: int, svd: SVD | None = None) -> nn.Sequential:
    """The rank-`rank` two-layer replacement of `layer` (a Linear, or a Conv2d with groups=1)."""
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        raise ValueError(f"low-rank factorization needs groups=1, got a Conv2d with groups={layer.groups}")
    u, s, vh = svd if svd is not None else _svd(layer)
    root = s[:rank].sqrt()
    first_w, second_w = root[:, None] * vh[:rank], u[:, :rank] * root
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, rank, bias=False)
        second = nn.Linear(rank, layer.out_features, bias=has_bias)
    else:
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                          bias=False, padding_mode=layer.padding_mode)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=has_bias)
    factors = nn.Sequential(first, second).to(device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(first_w.reshape(first.weight.shape))
        second.weight.copy_(second_w.reshape(second.weight.shape))
        if has_bias:
            second.bias.copy_(layer.bias)
    return factors


def effective_weight(factors: nn.Sequential) -> torch.Tensor:
    """The single weight the two factors compute, shaped like the original layer's."""
    first, second = factors
    product = second.weight.reshape(second.weight.shape[0], -1) @ first.weight.reshape(first.weight.shape[0], -1)
    return product.reshape(second.weight.shape[0], *first.weight.shape[1:])


@register_pass(LowRank)
def lowrank(model: nn.Module, config: LowRank, ctx: PassContext) -> tuple[nn.Module, dict[str, Any]]:
    rows, skipped = [], []
    for name, layer, layer_config in substitutable(model, config, ctx.example_inputs, (nn.Linear, nn.Conv2d),
                                                   _is_candidate, skipped):
        svd = _svd(layer)
        out_dim, in_dim = svd[0].shape[0], svd[2].shape[1]
        rank = rank_for(svd[1], layer_config, (out_dim, in_dim))
        if rank * (in_dim + out_dim) >= in_dim * out_dim:
            skipped.append({"name": name, "reason": f"rank {rank} of {len(svd[1])} would not lower its MACs"})
            continue
        factors = factorize(layer, rank, svd)
        error = relative_error(layer.weight, effective_weight(factors))
        rows.append(layer_row(name, layer, count_params(layer), factors, error, rank=rank, full_rank=len(svd[1])))
        model.set_submodule(name, factors)
    if not rows:
        why = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped) or "the model has no Linear or Conv2d layer"
        raise RecipeError(f"{config.to_string()} factored no layer, so it would export the model unchanged ({why}). "
                          "Try a smaller ratio, energy=, or a scope that names the layers to factor.")
    return model, {"layers": rows, "skipped": skipped}
