"""Compression passes: torch model in, smaller torch model out, with a measured report.

Each pass is a frozen config from `sdk.core.recipes` (Prune, LowRank, DepthwiseSeparable, Distill) paired
with a transform registered for that config type, as torchao pairs its configs with handlers.
`apply` runs a recipe's passes in order on a deep copy and reports, per pass and per layer,
parameters, MACs and approximation error, and the whole model's parity with the original.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from converters.passes.data import HOLDOUT, Calibration, as_batches, split
from converters.passes.metrics import count_params, macs_by_module, parity, run_batches
from sdk.core.errors import InternalError, InvalidInputsError, RecipeError
from sdk.core.recipes import Config, ConfigLike, Distill, parse

__all__ = ["PassContext", "PassFn", "register_pass", "known_passes", "apply"]


@dataclass
class PassContext:
    """What a pass may use besides the model: the inputs, the original model (teacher) and calibration data."""

    example_inputs: tuple[torch.Tensor, ...]
    teacher: nn.Module
    calibration: Calibration | None
    _reference: list[torch.Tensor] | None = field(default=None, repr=False)

    def parity(self, model: nn.Module) -> dict[str, Any]:
        """`model` against the original on the held-out calibration samples (or example_inputs without calibration)."""
        inputs, source = ((self.calibration.heldout, f"held-out calibration (last {HOLDOUT:.0%})")
                          if self.calibration else (self.example_inputs, "example_inputs"))
        batch = self.calibration.batch_size if self.calibration else len(inputs[0])
        if self._reference is None:
            self._reference = run_batches(self.teacher, inputs, batch)
        return parity(model, self._reference, inputs, batch, source)


#: A pass: (model, its config, context) -> (transformed model, details: "layers" rows and pass-specific keys).
PassFn = Callable[[nn.Module, Config, PassContext], "tuple[nn.Module, dict[str, Any]]"]
_PASSES: dict[type[Config], PassFn] = {}


def register_pass(config_type: type[Config]) -> Callable[[PassFn], PassFn]:
    """Decorator: register `fn` as the transform for `config_type`. A second registration is refused."""
    def decorator(fn: PassFn) -> PassFn:
        if config_type in _PASSES:
            raise InternalError(f"a pass for {config_type.__name__} is already registered "
                                f"({_PASSES[config_type].__qualname__})")
        _PASSES[config_type] = fn
        return fn
    return decorator


def known_passes() -> list[str]:
    """String names of the registered passes."""
    return sorted(cls.name for cls in _PASSES)


def _handler(config: Config) -> PassFn:
    if config.kind != "pass":
        raise RecipeError(f"{config} is a precision config, not a compression pass; quantize with "
                          f"sdk.export(..., recipe=[..., {config!r}]) instead. Passes: {', '.join(known_passes())}")
    try:
        return _PASSES[type(config)]
    except KeyError:
        raise RecipeError(f"no pass is registered for {type(config).__name__}; known passes: "
                          f"{', '.join(known_passes())}") from None


def apply(model: nn.Module, configs: ConfigLike | Iterable[ConfigLike], *, example_inputs: Sequence[torch.Tensor],
          calibration: Iterable[Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Run the passes in order on a deep copy of `model`; return it (eval mode) and the report.

    Distill trains the transformed model to match the original `model`, which is never modified.
    """
    configs = parse(configs)
    handlers = [_handler(config) for config in configs]
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise InvalidInputsError("example_inputs must be a tensor or a tuple of tensors "
                                 "(the model's positional inputs)")
    batches = as_batches(calibration, len(inputs))
    if not batches and any(isinstance(c, Distill) for c in configs):
        raise InvalidInputsError("distill trains on unlabeled inputs: "
                                 "pass calibration=<a list or DataLoader of input batches>")
    ctx = PassContext(inputs, model, split(batches) if batches else None)
    student = copy.deepcopy(model).eval()
    report: dict[str, Any] = {"passes": []}
    for config, fn in zip(configs, handlers):
        params_before, macs_before = count_params(student), macs_by_module(student, inputs)
        student, details = fn(student, config, ctx)
        macs_after = macs_by_module(student.eval(), inputs)
        rows = [{"name": row["name"], "type": row["type"], "params_before": row["params_before"],
                 "params_after": row["params_after"], "macs_before": macs_before.get(row["name"], 0),
                 "macs_after": macs_after.get(row["name"], 0), **row} for row in details.pop("layers", [])]
        report["passes"].append({"pass": config.to_string(), "params_before": params_before,
                                 "params_after": count_params(student), "macs_before": macs_before.get("", 0),
                                 "macs_after": macs_after.get("", 0), "layers": rows, **details})
        if isinstance(config, Distill):
            report.setdefault("parity_before_distill", details["parity_before"])
            report["parity_after_distill"] = details["parity_after"]
    report["parity"] = ctx.parity(student)
    return student.eval(), report


# Built-in passes register themselves on import.
from converters.passes import depthwise, distill, lowrank, prune  # noqa: E402,F401
