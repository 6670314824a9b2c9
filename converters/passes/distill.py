"""Distill: train the transformed model (student) to match the original (teacher) on unlabeled inputs.

Loss: KL divergence of temperature-softened distributions, scaled by T^2 (Hinton et al.), when the
model returns one 2-D tensor of logits; otherwise the sum of MSEs over all outputs. Training uses
the first 80% of the calibration samples (the rest is held out for the parity report), Adam, a
fixed seed, and minibatches the size of the user's calibration batches. Runs on CUDA when torch has it.

Budget and schedule: a warm-up then cosine lr decay over `steps`, the usual fine-tuning schedule; `minutes` bounds
the wall time. Early stopping: the last 10% of the training samples are kept out of the gradient and scored every
`eval_every` steps (top-1 agreement with the teacher for a classifier, ties broken by the logits' cosine, else the
lowest cosine over the outputs); training stops after `patience` evaluations without improvement and the best
weights are restored. That slice is apart from the parity hold-out, so the parity
report is not the set the weights were chosen on. Augmentation (random resized crop, flip, noise on 4-D float
inputs) shows the student more than the few calibration images; the teacher labels each augmented batch anew.

BatchNorm: a substituted or pruned layer changes the statistics of the activations its BatchNorm
sees, so the original running statistics are stale. BN layers therefore train with batch statistics,
and after the last step their running statistics are recomputed (cumulative average, no gradient)
over the training samples with the final weights, augmented as in training when `augment` is on (the
weights learned under those statistics), unless the starting weights scored best: then the student comes back
as it came. On the digits CNN this beat keeping BN frozen in
eval mode on every pass measured (docs/passes.md). With calibration batches of one sample, BN stays
frozen. Weights that are exactly zero in Conv/Linear layers (unstructured pruning) are held at zero,
so fine-tuning keeps the sparsity.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from converters.passes import PassContext, register_pass
from converters.passes.data import Calibration
from converters.passes.metrics import eval_mode, flatten_outputs, run_batches
from converters.passes.scope import WEIGHT_LAYERS
from sdk.core.recipes import Distill

__all__ = ["train", "recalibrate_batchnorm", "lr_factor", "augment"]

SEED = 0
#: the cosine schedule's warm-up, as a fraction of `steps`
WARMUP = 0.05
#: the fraction of the training samples kept out of the gradient to score early stopping (at least one)
VALIDATION = 0.1
#: a score counts as risen only by more than this (one more agreeing sample always does)
MIN_DELTA = 1e-4
#: augmentation: crops keep this fraction of the image area, at an aspect ratio in CROP_ASPECT; noise std is
#: NOISE times the sample's own
CROP_AREA, CROP_ASPECT, NOISE = (0.8, 1.0), (3 / 4, 4 / 3), 0.03


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


def lr_factor(step: int, steps: int, schedule: str) -> float:
    """The lr multiplier at `step` (0-based) of a `steps` budget: "cosine" warms up linearly, then decays to 0."""
    if schedule == "constant":
        return 1.0
    warmup = max(1, round(WARMUP * steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def augment(x: torch.Tensor) -> torch.Tensor:
    """Per sample of a 4-D float batch: a random resized crop, a horizontal flip (half the time) and Gaussian noise,
    in one `grid_sample`. Any other input (tokens, features, sequences) is returned as it is."""
    if x.ndim != 4 or not x.is_floating_point():
        return x
    n = len(x)
    area = torch.empty(n).uniform_(*CROP_AREA)
    aspect = torch.empty(n).uniform_(math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1])).exp()
    sx, sy = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx * torch.where(torch.rand(n) < 0.5, -1.0, 1.0)
    theta[:, 1, 1] = sy
    theta[:, 0, 2], theta[:, 1, 2] = (1 - sx) * (2 * torch.rand(n) - 1), (1 - sy) * (2 * torch.rand(n) - 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out + NOISE * out.std(dim=(1, 2, 3), keepdim=True, correction=0) * torch.randn_like(out)


def _metrics(classifier: bool) -> tuple[str, ...]:
    """What the best weights are ranked by, most important first: agreement on a few samples saturates early, so
    the logits' cosine breaks its ties."""
    return ("top1_agreement", "cosine") if classifier else ("cosine",)


def _score(outputs: list[torch.Tensor], targets: list[torch.Tensor], classifier: bool) -> tuple[float, ...]:
    cosine = min(float(F.cosine_similarity(o.double().flatten(), t.double().flatten(), dim=0))
                 for o, t in zip(outputs, targets))
    if classifier:
        return float((outputs[0].argmax(dim=1) == targets[0].argmax(dim=1)).double().mean()), cosine
    return (cosine,)


class _Best:
    """The best held-out score so far (compared in `_metrics` order), its step and weights. `stale` counts the
    evaluations since any metric last rose more than MIN_DELTA above its own best: a student whose cosine still
    climbs while a small slice's agreement wobbles is still learning."""

    def __init__(self) -> None:
        self.value: tuple[float, ...] = (-math.inf,)
        self.peaks: tuple[float, ...] = ()
        self.step, self.stale = 0, 0
        self.state: dict[str, torch.Tensor] = {}
        self.curve: list[tuple[float, ...]] = []

    def update(self, model: nn.Module, step: int, value: tuple[float, ...]) -> None:
        self.curve.append((step, *(round(v, 6) for v in value)))
        rose = not self.peaks or any(v > p + MIN_DELTA for v, p in zip(value, self.peaks))
        self.stale = 0 if rose else self.stale + 1
        self.peaks = tuple(map(max, value, self.peaks)) if self.peaks else value
        if value > self.value:
            self.value, self.step = value, step
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}


def _train(student: nn.Module, teacher: nn.Module, config: Distill, data: Calibration,
           device: torch.device) -> dict[str, Any]:
    started = time.perf_counter()
    n_all = len(data.train[0])
    n = n_all - min(n_all - 1, max(1, round(VALIDATION * n_all)))  # one sample: no validation slice
    fit, val = (tuple(x[part].to(device) for x in data.train) for part in (slice(n), slice(n, None)))
    batch = min(data.batch_size, n)
    targets = run_batches(teacher, fit, batch)
    val_targets = run_batches(teacher, val, batch) if n < n_all else []
    classifier = len(targets) == 1 and targets[0].ndim == 2 and targets[0].shape[1] > 1
    augmenting = config.augment and any(x.ndim == 4 and x.is_floating_point() for x in fit)
    masks = [(m.weight, m.weight != 0) for m in student.modules()
             if isinstance(m, WEIGHT_LAYERS) and bool((m.weight == 0).any())]
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=config.lr)
    best, losses, step, stopped, lr = _Best(), [], 0, "steps", config.lr

    def evaluate() -> None:
        if val_targets:
            best.update(student, step, _score(run_batches(student, val, batch), val_targets, classifier))

    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices), eval_mode(teacher), _progress() as progress:
        torch.manual_seed(SEED)
        order, position = torch.randperm(n), 0
        student.train()
        for module in _batchnorms(student) if batch < 2 else ():
            module.eval()
        task = progress.add_task("distill", total=config.steps, loss="-")
        evaluate()
        while step < config.steps:
            if position + batch > n:
                order, position = torch.randperm(n), 0
            idx, position = order[position:position + batch].to(device), position + batch
            inputs = [x[idx] for x in fit]
            if augmenting:
                inputs = [augment(x) for x in inputs]
                with torch.no_grad():
                    goal = flatten_outputs(teacher(*inputs))
            else:
                goal = [y[idx] for y in targets]
            lr = config.lr * lr_factor(step, config.steps, config.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = _loss(flatten_outputs(student(*inputs)), goal, config.temperature, classifier)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for weight, mask in masks:
                    weight.mul_(mask)
            step += 1
            losses.append(float(loss.detach()))
            progress.update(task, advance=1, loss=f"{losses[-1]:.4f}")
            if config.minutes is not None and time.perf_counter() - started >= 60 * config.minutes:
                stopped = "minutes"
                break
            if step % config.eval_every == 0:
                evaluate()
                if config.patience is not None and best.stale >= config.patience:
                    stopped = "early_stop"
                    break
        if val_targets and best.curve[-1][0] != step:
            evaluate()
        if val_targets:
            student.load_state_dict(best.state)
        # over inputs like the ones trained on (clean statistics cost the digits CNN up to 2 points after augment);
        # when the starting weights scored best, the student comes back exactly as it came
        if batch >= 2 and best.step > 0:
            inputs = tuple(x.to(device) for x in data.train)
            recalibrate_batchnorm(student, tuple(augment(x) for x in inputs) if augmenting else inputs, batch)
    head, tail = losses[:10], losses[-10:]
    return {"loss": f"kl(T={config.temperature:g})" if classifier else "mse", "loss_first": sum(head) / len(head),
            "loss_last": sum(tail) / len(tail), "steps_run": step, "stopped": stopped,
            "seconds": round(time.perf_counter() - started, 2), "schedule": config.schedule, "lr_last": lr,
            "augmented": augmenting, "train_samples": n,
            "validation": {"samples": n_all - n, "every": config.eval_every,
                           "best": dict(zip(_metrics(classifier), best.value)), "best_step": best.step,
                           "curve": {"columns": ["step", *_metrics(classifier)], "rows": best.curve}}
            if val_targets else None,
            "heldout_samples": len(data.heldout[0]), "batch_size": batch,
            "frozen_zero_weights": sum(int((~mask).sum()) for _, mask in masks)}


def train(student: nn.Module, teacher: nn.Module, config: Distill, data: Calibration) -> dict[str, Any]:
    """Distill `teacher` into `student` in place; returns what the training did (steps run, why it stopped, the best
    held-out score and its step, the losses). Both models run on CUDA when torch has it, and go back after."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    homes = [(model, next(model.parameters(), torch.empty(0)).device) for model in (student, teacher)]
    try:
        for model, _ in homes:
            model.to(device)
        details = _train(student, teacher, config, data, device)
    finally:
        for model, home in homes:
            model.to(home)
    student.eval()
    return {**details, "device": device.type}


@register_pass(Distill)
def distill(model: nn.Module, config: Distill, ctx: PassContext) -> tuple[nn.Module, dict[str, Any]]:
    assert ctx.calibration is not None  # apply() refuses Distill without calibration
    before = ctx.parity(model)
    details = train(model, ctx.teacher, config, ctx.calibration)
    return model, {"steps": config.steps, "lr": config.lr, **details, "parity_before": before,
                   "parity_after": ctx.parity(model)}
