"""Typed results: a converter's quantization account and delegate coverage, and a figure that could not be had.

Every format fills the same fields, so callers read attributes instead of each toolchain's prose; `to_dict` is
the one JSON form (report files, optimizer trials). torch-free: the device side and reports read these too.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ActivationMode", "Coverage", "FloatLayer", "QuantAccount", "Unavailable", "to_dict"]

#: how the artifact's activations run: int8 with calibrated ranges, int8 quantized at run time, or float (the
#: weights alone are narrow). Same spelling as the recipes' `Config.activations` for the int8 cases.
ActivationMode = Literal["int8-static", "int8-dynamic", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class Unavailable:
    """A figure that could not be measured, and why."""

    reason: str

    def __str__(self) -> str:
        return f"unavailable ({self.reason})"


@dataclass(frozen=True)
class FloatLayer:
    """A layer whose weights the artifact stores in float, and why (on request, by the fallback, by the tool)."""

    name: str
    reason: str


@dataclass(kw_only=True)
class QuantAccount:
    """What the saved file stores, read back from it: which layers are quantized, which stay float and why.

    `weight_dtypes` counts weight tensors by stored dtype. `details` holds what only one toolchain says (its
    own datatype names, backup layers, ...); nothing reads it back.
    """

    scheme: str
    activations: ActivationMode
    toolchain: str
    quantized_layers: list[str] = field(default_factory=list)
    float_layers: list[FloatLayer] = field(default_factory=list)
    weight_dtypes: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def weight_only(self) -> bool:
        """Activations stay float: the sensitivity simulation then quantizes weights only."""
        return self.activations in ("float32", "float16", "bfloat16")


@dataclass(kw_only=True)
class Coverage:
    """How much of the graph the target's delegate (or device plugin) takes, counted in the toolchain's `unit`.

    `not_delegated` counts what it left out by op type, with the toolchain's reason where it gives one.
    """

    delegate: str
    unit: Literal["nodes", "ops"]
    total: int
    delegated: int
    not_delegated: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    fraction: float = field(init=False)

    def __post_init__(self) -> None:
        self.fraction = round(self.delegated / self.total, 4) if self.total else 1.0


def to_dict(obj: Any) -> Any:
    """The JSON form of a result: a dataclass as a dict of its fields (recursively), `Unavailable` as
    {"unavailable": reason}, containers element by element, anything else as is."""
    if isinstance(obj, Unavailable):
        return {"unavailable": obj.reason}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {key: to_dict(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(value) for value in obj]
    return obj
