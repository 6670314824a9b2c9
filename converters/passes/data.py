"""Calibration inputs for the passes: normalised, stacked, and split into a training and a held-out part.

`calibration` is what a user has at hand: a list or DataLoader whose batches are a tensor (one-input
model) or a tuple/list whose first N items are the model's N inputs (extra items, e.g. labels, are
dropped: distillation needs no labels). Batches are stacked along dim 0; the last `HOLDOUT` fraction
of the samples is kept out of training, for the parity report.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from sdk.core.errors import InvalidInputsError

__all__ = ["HOLDOUT", "Calibration", "as_batches", "split"]

HOLDOUT = 0.2


@dataclass(frozen=True)
class Calibration:
    """Stacked calibration inputs: `train` for distillation, `heldout` for parity; `batch_size` of the user's
    batches."""

    train: tuple[torch.Tensor, ...]
    heldout: tuple[torch.Tensor, ...]
    batch_size: int


def as_batches(calibration: Iterable[Any] | None, n_inputs: int) -> list[tuple[torch.Tensor, ...]]:
    """Each batch as a tuple of the model's `n_inputs` input tensors."""
    if calibration is None:
        return []
    batches = []
    for i, batch in enumerate(calibration):
        items = ((batch,) if isinstance(batch, torch.Tensor)
                 else tuple(batch) if isinstance(batch, (tuple, list)) else None)
        if items is None or len(items) < n_inputs or not all(isinstance(t, torch.Tensor) for t in items[:n_inputs]):
            raise InvalidInputsError(
                f"calibration batch {i} is {type(batch).__name__}; expected a tensor or a tuple/list whose first "
                f"{n_inputs} item(s) are the model's input tensors")
        batches.append(tuple(t.detach() for t in items[:n_inputs]))
    return batches


def split(batches: Sequence[tuple[torch.Tensor, ...]], holdout: float = HOLDOUT) -> Calibration:
    """Stack `batches` along dim 0 and keep the last `holdout` fraction of samples apart (at least one)."""
    if not batches:
        raise InvalidInputsError("no calibration inputs were given")
    try:
        stacked = tuple(torch.cat(parts) for parts in zip(*batches))
    except RuntimeError as exc:
        raise InvalidInputsError(f"calibration batches must share every dimension but the first (batch): "
                                 f"{exc}") from None
    total = len(stacked[0])
    if total < 2:
        raise InvalidInputsError(f"distillation needs at least 2 calibration samples, got {total}")
    n_heldout = max(1, round(holdout * total))
    return Calibration(train=tuple(x[:total - n_heldout] for x in stacked),
                       heldout=tuple(x[total - n_heldout:] for x in stacked),
                       batch_size=max(1, min(len(batches[0][0]), total - n_heldout)))
