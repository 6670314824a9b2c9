"""Distill: train the transformed model (student) to match the original (teacher) on unlabeled inputs.

Loss: KL divergence of temperature-softened distributions, scaled by T^2 (Hinton et al.), when the
model returns one 2-D tensor of logits; otherwise the sum of MSEs over all outputs. Training uses
the first 80% of the calibration samples (the rest is held out for the parity report), Adam, a
fixed seed, and minibatches the size of the user's calibration batches.

BatchNorm: a substituted or pruned layer changes the statistics of the activations its BatchNorm
sees, so the original running statistics are stale. BN layers therefore train with batch statistics,
and after the last step their running statistics are recomputed (cumulative average, no gradient)
over the training samples with the final weights. On the digits CNN this beat keeping BN frozen in
eval mode on every pass measured (docs/passes.md). With calibration batches of one sample, BN stays
frozen. Weights that are exactly zero in Conv/Linear layers (unstructured pruning) are held at zero,
so fine-tuning keeps the sparsity.
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from converters.passes import PassContext, register_pass
from converters.passes.data import Calibration
from converters.passes.metrics import flatten_outputs, run_batches
from converters.passes.scope import WEIGHT_LAYERS
from sdk.core.recipes import Distill

__all__ = ["train", "recalibrate_batchnorm"]

SEED = 0


def _loss(outputs: list[torch.Tensor], targets: list[torch.Tensor], temperature: float, kl: bool) -> torch.Tensor:
    if kl:
        t = temperature
        return F.kl_div(F.log_softmax(outputs[0] / t, dim=1), F.log_softmax(targets[0] / t, dim=1),
                        reduction="batchmean", log_target=True) * t * t
    return sum(F.mse_loss(o, y) for o, y in zip(outputs, targets))


def _progress():
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(TextColumn("distill"), BarColumn(),
                    TextColumn("{task.completed}/{task.total} loss {task.fields[loss]}"),
                    TimeRemainingColumn(), console=console, transient=True, disable=not sys.stderr.isatty())


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: tuple[torch.Tensor, ...], batch_size: int) -> None:
    """Recompute every BatchNorm's running mean/var as the average over `inputs` with the current weights."""
    layers = _batchnorms(model)
    saved = [(m.momentum, m.training) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    chunks = max(1, len(inputs[0]) // batch_size)  # equal chunks of >= batch_size: no 1-sample batch
    for batch in zip(*(x.tensor_split(chunks) for x in inputs)):
        model(*batch)
    for m, (momentum, training) in zip(layers, saved):
        m.momentum, m.training = momentum, training


def train(student: nn.Module, teacher: nn.Module, config: Distill, data: Calibration) -> dict[str, Any]:
    """Distill `teacher` into `student` in place; returns the loss kind and its start/end values."""
    targets = run_batches(teacher, data.train, data.batch_size)
    kl = len(targets) == 1 and targets[0].ndim == 2
    masks = [(m.weight, m.weight != 0) for m in student.modules()
             if isinstance(m, WEIGHT_LAYERS) and bool((m.weight == 0).any())]
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=config.lr)
    n, batch = len(data.train[0]), data.batch_size
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        order, position = torch.randperm(n), 0
        student.train()
        for module in _batchnorms(student) if batch < 2 else ():
            module.eval()
        with _progress() as progress:
            task = progress.add_task("distill", total=config.steps, loss="-")
            for _ in range(config.steps):
                if position + batch > n:
                    order, position = torch.randperm(n), 0
                idx, position = order[position:position + batch], position + batch
                loss = _loss(flatten_outputs(student(*(x[idx] for x in data.train))), [y[idx] for y in targets],
                             config.temperature, kl)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for weight, mask in masks:
                        weight.mul_(mask)
                losses.append(float(loss.detach()))
                progress.update(task, advance=1, loss=f"{losses[-1]:.4f}")
    if batch >= 2:
        recalibrate_batchnorm(student, data.train, batch)
    student.eval()
    head, tail = losses[:10], losses[-10:]
    return {"loss": f"kl(T={config.temperature:g})" if kl else "mse", "loss_first": sum(head) / len(head),
            "loss_last": sum(tail) / len(tail), "train_samples": n, "heldout_samples": len(data.heldout[0]),
            "batch_size": batch, "frozen_zero_weights": sum(int((~mask).sum()) for _, mask in masks)}


@register_pass(Distill)
def distill(model: nn.Module, config: Distill, ctx: PassContext) -> tuple[nn.Module, dict[str, Any]]:
    assert ctx.calibration is not None  # apply() refuses Distill without calibration
    before = ctx.parity(model)
    details = train(model, ctx.teacher, config, ctx.calibration)
    return model, {"steps": config.steps, "lr": config.lr, **details, "parity_before": before,
                   "parity_after": ctx.parity(model)}
