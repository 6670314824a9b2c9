"""`sdk.compress`: run a recipe's compression passes on a PyTorch model, torch in, torch out, no export.

>>> import torch, sdk.compression as c
>>> nn = torch.nn
>>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 256), nn.Linear(256, 10))
>>> small = c.compress(model, "lowrank:0.25", example_inputs=(torch.randn(1, 64),))
>>> [row["name"] for row in small.edge_sdk_report["passes"][0]["layers"]]
['2']
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from sdk.core.errors import RecipeError
from sdk.core.recipes import ConfigLike, parse

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["compress", "REPORT_ATTRIBUTE"]

#: The attribute of the returned module that holds the passes' report.
REPORT_ATTRIBUTE = "edge_sdk_report"


def compress(model: "nn.Module", recipe: ConfigLike | Iterable[ConfigLike], *, example_inputs: Sequence["torch.Tensor"],
             calibration: Iterable[Any] | None = None) -> "nn.Module":
    """A compressed copy of `model` (eval mode); its per-pass, per-layer report is `.edge_sdk_report`.

    `recipe` holds passes only ("prune:0.3", "lowrank:0.5", "depthwise", "distill:300" or their config
    objects), run in order; the original model is left as it was and is the teacher for "distill".
    `calibration` (a list or DataLoader of input batches) is needed by "distill".
    """
    configs = parse(recipe)
    precision = [c for c in configs if c.kind == "precision"]
    if precision:
        raise RecipeError(f"{precision[0]} is a precision config: sdk.compress runs compression passes only. Quantize "
                          f"while exporting: sdk.export(model, device=..., recipe={[str(c) for c in configs]})")
    from converters.passes import apply

    compressed, report = apply(model, configs, example_inputs=example_inputs, calibration=calibration)
    setattr(compressed, REPORT_ATTRIBUTE, report)
    return compressed
