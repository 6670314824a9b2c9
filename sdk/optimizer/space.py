"""The search space of `sdk.optimize`, read from the device profile.

Precisions are exactly those the profile lists and its converter supports (int4 at group sizes 64 and 128, which
every converter takes, palettize at three bit widths). Passes (prune, lowrank, depthwise) change the network's
weights, so they are proposed only when the budget allows training: each is followed by
`distill:<steps>:<minutes>m` (a distillation also stops after `Budget.minutes`, so no single training outlasts the
search); with `Budget(distill_steps=0)` or no calibration data the space holds precisions only and `notes` says why.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdk.devices import DeviceProfile
from sdk.core.errors import UserInputError
from sdk.core.recipes import Distill

__all__ = ["Budget", "SearchSpace", "space_for"]

# how each precision the profiles list expands into recipe strings
_PRECISION_CHOICES = {
    "fp32": ["fp32"], "fp16": ["fp16"], "int8": ["int8"], "int8-dynamic": ["int8-dynamic"],
    "int4": ["int4:64", "int4:128"], "palettize": ["palettize:4", "palettize:6", "palettize:8"],
}
PASS_CHOICES = ["none", "prune:0.3", "prune:0.5", "lowrank:0.5", "lowrank:0.25", "depthwise"]


@dataclass(frozen=True)
class Budget:
    """What a search may spend: `trials` in all (a resumed study counts its earlier trials), `minutes` of wall
    time for this run, `distill_steps` per candidate that changes the weights (0: no training, so no passes); each
    distillation also stops after `minutes` or early, when its held-out agreement stops improving.

    >>> Budget(trials=8, minutes=5).distill_steps
    0
    """

    trials: int = 20
    minutes: float = 30.0
    distill_steps: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1 or self.minutes <= 0 or self.distill_steps < 0:
            raise UserInputError(f"Budget needs trials >= 1, minutes > 0 and distill_steps >= 0, got {self}")


@dataclass(frozen=True)
class SearchSpace:
    """Recipe choices for one device; `notes` says what was left out and why."""

    device: str
    precisions: tuple[str, ...]
    passes: tuple[str, ...]
    distill: Distill | None
    notes: tuple[str, ...] = field(default=())
    mixed: bool = False  # a quantized candidate that misses max_drop is retried with accuracy control

    def recipe(self, precision: str, pass_: str) -> list[str]:
        """The recipe for one choice: the pass (then distillation) and the precision."""
        if pass_ == "none" or self.distill is None:
            return [precision]
        return [pass_, self.distill.to_string(), precision]

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "precisions": list(self.precisions), "passes": list(self.passes),
                "distill": None if self.distill is None else self.distill.to_dict(), "mixed": self.mixed,
                "notes": list(self.notes)}


def space_for(profile: DeviceProfile, supported: frozenset[str], budget: Budget, has_calibration: bool,
              mixed: bool = False) -> SearchSpace:
    """Every precision the profile lists that its converter takes, plus passes when training is allowed, and
    (`mixed`) each quantized precision's mixed-precision variant found by accuracy control."""
    notes = []
    precisions: list[str] = []
    for name in profile.precisions:
        if name not in supported:
            notes.append(f"{name}: listed by {profile.id} but not supported by the {profile.format} converter")
        elif name == "int8" and not has_calibration:
            notes.append("int8: needs calibration data (int8-dynamic does not)")
        else:
            precisions.extend(_PRECISION_CHOICES.get(name, [name]))
    if not precisions:
        raise UserInputError(f"{profile.id}: no precision to search ({'; '.join(notes)})")
    distill = None
    if budget.distill_steps > 0 and has_calibration:
        passes, distill = tuple(PASS_CHOICES), Distill(steps=budget.distill_steps, minutes=budget.minutes)
        notes.append(f"passes proposed, each followed by {distill} (Budget.distill_steps, Budget.minutes; it stops "
                     "early when its held-out agreement with the original stops improving)")
    else:
        passes = ("none",)
        why = "Budget.distill_steps is 0" if budget.distill_steps == 0 else "no calibration data to distill on"
        notes.append(f"passes (prune, lowrank, depthwise) not proposed: {why}, and they need training to recover")
    if mixed:
        notes.append("mixed precision: a quantized candidate that misses max_drop is exported again with accuracy "
                     "control, which keeps its most sensitive layers in float until the drop holds on the runtime")
    return SearchSpace(profile.id, tuple(precisions), passes, distill, tuple(notes), mixed)
