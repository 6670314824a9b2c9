"""RunSpec: how one benchmark runs, with its one set of defaults. Used by Client, LocalAgent, the agent's
HTTP API and its benchmark processes (and any other `sdk.agent.protocol.Agent`). No torch, no pydantic.

>>> spec = RunSpec(iterations=50, tolerance={"min_cosine": 0.999})
>>> spec.warmup, spec.iterations, spec.to_dict()["tolerance"]
(10, 50, {'min_cosine': 0.999})
>>> RunSpec.from_dict({"iteratons": 5})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
sdk.agent.spec.SpecError: invalid run spec: iteratons: unknown key (known: warmup, iterations, min_duration_s, ...)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdk.errors import UserInputError

__all__ = ["TOLERANCE_KEYS", "RunSpec", "SpecError"]

#: each tolerance key with its allowed range (None: unbounded on that side)
TOLERANCE_RANGES = {"min_cosine": (-1.0, 1.0), "max_abs_err": (0.0, None), "min_top1_agreement": (0.0, 1.0),
                    "min_sqnr_db": (None, None)}
TOLERANCE_KEYS = tuple(TOLERANCE_RANGES)
TARGETS = ("local", "phone")


class SpecError(UserInputError):
    """A run spec with an unknown key, a wrong type or a value out of range; the agent answers it with 422."""


def _bounds(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, optional: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open, "optional": optional}


@dataclass(frozen=True)
class RunSpec:
    """One benchmark's settings. The timed loop runs at least `iterations` times and at least `min_duration_s`
    (MLPerf LoadGen's minimum query count and duration); with `target_ci_pct` set it keeps going until the
    bootstrap 95% CI of the median is within ±target_ci_pct % of the median, or `max_duration_s` has passed.

    tolerance: min_cosine / max_abs_err / min_top1_agreement / min_sqnr_db (None: the bundle's own).
    timeout_s: wall-clock limit of the whole job; the benchmark process is killed past it.
    idle_s: idle-power sampling before the loop; energy: measure energy at all.
    check_bad_input: also feed a wrongly shaped input and report how the runtime refused it.
    target: "local" (this machine's runtime) or "phone" (the phone the agent drives over adb).
    max_memory_mb: data-memory limit of the benchmark process (None: the agent's own limit).
    """

    warmup: int = field(default=10, metadata=_bounds(0, 100_000))
    iterations: int = field(default=200, metadata=_bounds(1, 10_000_000))
    min_duration_s: float = field(default=0.0, metadata=_bounds(0, 3600))
    max_duration_s: float = field(default=30.0, metadata=_bounds(0, 24 * 3600, lo_open=True))
    target_ci_pct: float | None = field(default=None, metadata=_bounds(0, 100, lo_open=True, optional=True))
    tolerance: dict[str, float] | None = field(default=None, metadata=_bounds(optional=True))
    timeout_s: float = field(default=600.0, metadata=_bounds(0, 24 * 3600, lo_open=True))
    idle_s: float = field(default=1.0, metadata=_bounds(0, 600))
    energy: bool = True
    check_bad_input: bool = False
    target: str = "local"
    max_memory_mb: float | None = field(default=None, metadata=_bounds(16, 1 << 24, optional=True))

    def __post_init__(self) -> None:
        problems = [p for f in dataclasses.fields(self) if (p := _check(f, getattr(self, f.name)))]
        if self.target not in TARGETS:
            problems.append(f"target: must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if problems:
            raise SpecError("invalid run spec: " + "; ".join(problems))
        if self.tolerance is not None:  # stored as a plain dict without None entries
            object.__setattr__(self, "tolerance", {k: float(v) for k, v in self.tolerance.items() if v is not None})

    @classmethod
    def from_dict(cls, data: Any) -> RunSpec:
        """Parse a JSON object (the agent's `spec` field); unknown keys are refused, so a typo is not ignored."""
        if not isinstance(data, Mapping):
            raise SpecError(f"invalid run spec: must be a JSON object, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [str(k) for k in data if k not in known]
        if unknown:
            raise SpecError(f"invalid run spec: {', '.join(unknown)}: unknown key (known: {', '.join(known)})")
        return cls(**data)

    @classmethod
    def of(cls, spec: RunSpec | None = None, **fields: Any) -> RunSpec:
        """`spec` (or the defaults) with `fields` replaced: what benchmark(bundle, spec, **fields) accepts."""
        return dataclasses.replace(spec or cls(), **fields) if fields or spec is None else spec

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` is not a valid `f` (None if it is). bool is not accepted for numbers, nor numbers for bool."""
    meta = f.metadata
    if value is None:
        return None if meta.get("optional") else f"{f.name}: must not be null"
    if f.name == "tolerance":
        return _check_tolerance(value)
    kind = f.type.split(" |")[0]  # annotations are strings (from __future__ import annotations)
    if kind == "bool":
        return None if isinstance(value, bool) else f"{f.name}: must be true or false, got {value!r}"
    if kind == "str":
        return None if isinstance(value, str) else f"{f.name}: must be a string, got {value!r}"
    numeric = (int,) if kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, numeric) or not math.isfinite(value):
        return f"{f.name}: must be {'an integer' if kind == 'int' else 'a finite number'}, got {value!r}"
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        return f"{f.name}: must be {'>' if meta.get('lo_open') else '>='} {lo}, got {value!r}"
    if hi is not None and value > hi:
        return f"{f.name}: must be <= {hi}, got {value!r}"
    return None


def _check_tolerance(value: Any) -> str | None:
    if not isinstance(value, Mapping):
        return f"tolerance: must be an object with {', '.join(TOLERANCE_KEYS)}, got {value!r}"
    for key, v in value.items():
        if key not in TOLERANCE_KEYS:
            return f"tolerance.{key}: unknown key (known: {', '.join(TOLERANCE_KEYS)})"
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"tolerance.{key}: must be a finite number or null, got {v!r}"
        lo, hi = TOLERANCE_RANGES[key]
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            return f"tolerance.{key}: must be within [{lo}, {hi}], got {v!r}"
    return None
