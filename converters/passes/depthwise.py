"""DepthwiseSeparable: a dense k x k Conv2d -> depthwise k x k (C -> C m, groups=C) + pointwise 1 x 1 (C m -> N).

Initialised in closed form, per input channel c, from the SVD of the N x k^2 slice W[:, c] = U S V^T:
the depthwise filter (c, j) is sqrt(s_j) v_j (as k x k) and the pointwise weight [n, c m + j] is
sqrt(s_j) u_j[n], for the top m triplets. That is the best rank-m approximation of each slice, so
the substitution is exact when m >= min(N, k^2); `multiplier` is capped there, since more filters
add cost and nothing else. A layer is replaced only when C m (k^2 + N) < N C k^2 (fewer MACs).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from converters.passes import PassContext, register_pass
from converters.passes.metrics import count_params, layer_row, relative_error
from converters.passes.scope import substitutable
from sdk.core.recipes import DepthwiseSeparable

__all__ = ["separate", "effective_weight"]


def _is_candidate(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups == 1 and conv.weight.shape[2] * conv.weight.shape[3] > 1


def separate(conv: nn.Conv2d, multiplier: int) -> nn.Sequential:
    """Depthwise + pointwise replacement of a dense (groups=1) k x k `conv`."""
    if not _is_candidate(conv):
        raise ValueError(f"depthwise separation needs a Conv2d with groups=1 and a kernel larger than 1x1, got {conv}")
    n_out, n_in, kh, kw = conv.weight.shape
    m = min(multiplier, n_out, kh * kw)
    slices = conv.weight.detach().double().transpose(0, 1).reshape(n_in, n_out, kh * kw)  # per c: N x k^2
    u, s, vh = torch.linalg.svd(slices, full_matrices=False)
    root = s[:, :m].sqrt()                                                  # C x m
    depthwise_w = (root[..., None] * vh[:, :m]).reshape(n_in * m, 1, kh, kw)
    pointwise_w = (u[:, :, :m] * root[:, None, :]).permute(1, 0, 2).reshape(n_out, n_in * m, 1, 1)
    depthwise = nn.Conv2d(n_in, n_in * m, (kh, kw), conv.stride, conv.padding, conv.dilation, groups=n_in,
                          bias=False, padding_mode=conv.padding_mode)
    pointwise = nn.Conv2d(n_in * m, n_out, 1, bias=conv.bias is not None)
    pair = nn.Sequential(depthwise, pointwise).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        depthwise.weight.copy_(depthwise_w)
        pointwise.weight.copy_(pointwise_w)
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias)
    return pair


def effective_weight(pair: nn.Sequential) -> torch.Tensor:
    """The dense N x C x k x k kernel that depthwise + pointwise compute together."""
    depthwise, pointwise = pair
    n_in, m = depthwise.in_channels, depthwise.out_channels // depthwise.in_channels
    kh, kw = depthwise.kernel_size
    pw = pointwise.weight.reshape(pointwise.out_channels, n_in, m)
    dw = depthwise.weight.reshape(n_in, m, kh, kw)
    return torch.einsum("ncj,cjhw->nchw", pw, dw)


@register_pass(DepthwiseSeparable)
def depthwise(model: nn.Module, config: DepthwiseSeparable, ctx: PassContext) -> tuple[nn.Module, dict[str, Any]]:
    rows, skipped = [], []
    for name, conv, layer_config in substitutable(model, config, ctx.example_inputs, nn.Conv2d, _is_candidate, skipped):
        n_out, n_in, kh, kw = conv.weight.shape
        m = min(layer_config.multiplier, n_out, kh * kw)
        if n_in * m * (kh * kw + n_out) >= n_out * n_in * kh * kw:
            skipped.append({"name": name, "reason": f"multiplier {m} would not lower its MACs"})
            continue
        pair = separate(conv, m)
        rows.append(layer_row(name, conv, count_params(conv), pair, relative_error(conv.weight, effective_weight(pair)),
                              multiplier=m))
        model.set_submodule(name, pair)
    return model, {"layers": rows, "skipped": skipped}
