"""`DeviceProfile`: everything the SDK knows about a target, read from a TOML file.

Device knowledge is data: converters, backends and the report read these fields; nothing else in
the code base branches on a device name.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sdk.core import formats
from sdk.core.errors import ProfileError, closest

TRANSPORTS = ("native", "adb")


@dataclass(frozen=True)
class DeviceProfile:
    """A deployment target. Figures come with `sources`; see docs/devices/."""

    id: str
    name: str
    vendor: str
    soc: str
    format: str
    runtime: str
    compute_units: tuple[str, ...]
    precisions: tuple[str, ...]
    default_recipe: tuple[str, ...]
    static_shapes: bool
    memory_budget_mb: float
    memory_bandwidth_gbps: float
    peak_tops: Mapping[str, float]
    power_sensors: tuple[str, ...]
    agent_transport: str
    sources: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    notes: str = ""
    converter: Mapping[str, Any] = field(default_factory=dict)
    budgets: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"device profile {self.id!r}"
        known = formats.known()
        if self.format not in known:
            hint = closest(self.format, known)
            did_you_mean = f" Did you mean {hint!r}?" if hint else ""
            raise ProfileError(f"{where}: no converter is registered for format {self.format!r}.{did_you_mean} "
                               f"Formats with a converter: {', '.join(known)} (a plug-in adds one through the "
                               f"{formats.ENTRY_POINT_GROUP!r} entry point group)")
        if self.agent_transport not in TRANSPORTS:
            raise ProfileError(f"{where}: agent_transport must be one of {TRANSPORTS}, got {self.agent_transport!r}")
        if not self.precisions:
            raise ProfileError(f"{where}: precisions must list at least one precision")
        for key, value in self.peak_tops.items():
            if not isinstance(value, (int, float)) or value <= 0:
                raise ProfileError(f"{where}: peak_tops.{key} must be a positive number, got {value!r}")
        # Freeze the mappings so a profile cannot be mutated through them.
        object.__setattr__(self, "peak_tops", MappingProxyType(dict(self.peak_tops)))
        object.__setattr__(self, "converter", MappingProxyType(dict(self.converter)))
        object.__setattr__(self, "budgets", MappingProxyType(dict(self.budgets)))

    @property
    def names(self) -> tuple[str, ...]:
        """The id and every alias, the names `sdk.devices.get` accepts."""
        return (self.id, *self.aliases)

    def roofline_ms(self, macs: int, bytes_moved: int, precision: str) -> float | None:
        """Lower bound on latency from peak compute and memory bandwidth, or None if unknown."""
        tops = self.peak_tops.get(precision)
        if tops is None or self.memory_bandwidth_gbps <= 0:
            return None
        compute_s = 2 * macs / (tops * 1e12)
        memory_s = bytes_moved / (self.memory_bandwidth_gbps * 1e9)
        return max(compute_s, memory_s) * 1e3

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists, mappings as dicts)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = (list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, Mapping)
                           else value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "<dict>") -> "DeviceProfile":
        """Build a profile, refusing unknown keys and wrong types with the file and key named."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = [k for k in data if k not in fields]
        if unknown:
            key = unknown[0]
            hint = closest(key, fields)
            did_you_mean = f" (did you mean {hint!r}?)" if hint else ""
            raise ProfileError(f"{source}: unknown key {key!r}{did_you_mean}. Valid keys: {', '.join(fields)}")
        required = [f.name for f in fields.values()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ProfileError(f"{source}: missing required key(s) {', '.join(missing)}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            kwargs[key] = _coerce(key, value, fields[key].type, source)
        try:
            return cls(**kwargs)
        except ProfileError as exc:
            raise ProfileError(f"{source}: {exc}") from None

    @classmethod
    def from_toml(cls, path: str | Path) -> "DeviceProfile":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"device profile file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ProfileError(f"{path}: not valid TOML: {exc}") from None
        return cls.from_dict(data, source=str(path))


def _coerce(key: str, value: Any, annotation: str, source: str) -> Any:
    """Check a TOML value against the field's annotation (written as a string) and normalise it."""
    def bad(expected: str) -> ProfileError:
        return ProfileError(f"{source}: key {key!r} must be {expected}, got {value!r}")

    if annotation.startswith("tuple"):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if annotation.startswith("Mapping"):
        if not isinstance(value, Mapping):
            raise bad("a table")
        return dict(value)
    if annotation == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if annotation == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    raise AssertionError(f"unhandled annotation {annotation}")  # pragma: no cover
