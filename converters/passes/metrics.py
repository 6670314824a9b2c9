"""Model size and cost measured on the real forward: parameters, MACs (from torch's FLOP counter), parity.

MACs are counted with `torch.utils.flop_counter.FlopCounterMode` on one forward pass over
`example_inputs` (MACs = FLOPs / 2; it counts matmuls, convolutions and attention, not
element-wise ops), so they follow whatever the model really runs, substitutions included.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sdk.core.parity import output_metrics

__all__ = ["count_params", "count_nonzero", "count_macs", "macs_by_module", "flatten_outputs", "run_batches", "parity",
           "eval_mode", "op_by_op", "layer_row", "relative_error"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    """Number of non-zero parameters (what unstructured pruning lowers)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode (BatchNorm statistics untouched), restoring every submodule's mode after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def op_by_op(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no grad, and torch's fused transformer fast path off, so every submodule and op runs visibly.

    (`nn.TransformerEncoderLayer`'s fast path bypasses its children and has no FLOP formula.)
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with eval_mode(model), torch.no_grad():
            yield model
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _count(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> FlopCounterMode:
    counter = FlopCounterMode(display=False)
    with op_by_op(model), counter:
        model(*example_inputs)
    return counter


def count_macs(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> int:
    """Multiply-accumulates of one forward pass on `example_inputs` (the whole batch)."""
    return _count(model, example_inputs).get_total_flops() // 2


def macs_by_module(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, int]:
    """MACs per module qualified name ("" is the whole model); a container includes its children."""
    counts = _count(model, example_inputs).get_flop_counts()
    root = type(model).__name__
    out = {}
    for key, per_op in counts.items():
        if key == "Global":
            continue
        name = "" if key == root else key.removeprefix(root + ".")
        out[name] = sum(per_op.values()) // 2
    return out


def flatten_outputs(output: Any) -> list[torch.Tensor]:
    """A model's output (tensor or nested tuple/list of tensors) as a flat list, in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in flatten_outputs(item)]
    raise TypeError(f"model outputs must be tensors or (nested) tuples/lists of tensors, got {type(output).__name__}")


@torch.no_grad()
def run_batches(model: nn.Module, inputs: Sequence[torch.Tensor], batch_size: int) -> list[torch.Tensor]:
    """Flattened outputs of `model` (eval mode) over `inputs` stacked along dim 0, run in chunks."""
    chunks: list[list[torch.Tensor]] = []
    with eval_mode(model):
        for start in range(0, len(inputs[0]), batch_size):
            chunks.append(flatten_outputs(model(*(x[start:start + batch_size] for x in inputs))))
    return [torch.cat(parts) for parts in zip(*chunks)]


def parity(model: nn.Module, reference: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor],
           batch_size: int, source: str) -> dict[str, Any]:
    """Cosine, SQNR, max abs error and (2-D logits) top-1 agreement of `model` against `reference` outputs."""
    got = run_batches(model, inputs, batch_size)
    outputs = [output_metrics(f"out_{i}", g.numpy().astype(np.float64), r.numpy().astype(np.float64))
               for i, (g, r) in enumerate(zip(got, reference))]
    return {"inputs": source, "samples": len(inputs[0]), "outputs": outputs}


def layer_row(name: str, layer: nn.Module, params_before: int, after: nn.Module, rel_error: float,
              **extra: Any) -> dict[str, Any]:
    """One per-layer report row (MACs are filled in by `converters.passes.apply`, which measures them)."""
    return {"name": name, "type": type(layer).__name__, "params_before": params_before,
            "params_after": count_params(after), "rel_error": round(float(rel_error), 6), **extra}


def relative_error(weight: torch.Tensor, approx: torch.Tensor) -> float:
    """||weight - approx||_F / ||weight||_F (0 for an all-zero weight)."""
    weight, approx = weight.detach().double(), approx.detach().double()
    norm = float(torch.linalg.vector_norm(weight))
    return float(torch.linalg.vector_norm(weight - approx)) / norm if norm else 0.0
