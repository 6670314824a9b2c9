"""Budgets the device tests hold a bundle to, and where each came from.

Precedence, most specific first: a command-line option (one run), `device_tests.toml` next to the bundles
(a `[<bundle folder>]` table, then its top-level keys), the device profile, the built-in soak thresholds.
The source is kept with each value so that a failure says which budget it missed and who set it.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sdk.core.errors import UserInputError, closest

__all__ = ["BUDGETS", "CONFIG_FILE", "Budget", "read_config", "resolve"]

CONFIG_FILE = "device_tests.toml"

#: budget key -> (unit, command-line option, built-in default)
BUDGETS: dict[str, tuple[str, str, float | None]] = {
    "latency_p90_ms": ("ms", "--latency-budget-ms", None),
    "memory_budget_mb": ("MB", "--memory-budget-mb", None),
    "energy_mj_per_inference": ("mJ", "--energy-budget-mj", None),
    "soak_rss_growth_mb": ("MB", "--soak-rss-growth-mb", 5.0),
    "soak_max_drift": ("", "--soak-max-drift", 1e-4),
}


@dataclass(frozen=True)
class Budget:
    """One budget: its value (None: not set anywhere) and where it came from."""

    key: str
    value: float | None
    source: str

    def __str__(self) -> str:
        if self.value is None:
            return "none set"
        unit = BUDGETS[self.key][0]
        return f"{self.value:g}{' ' + unit if unit else ''} ({self.source})"


def _check_values(table: Mapping[str, Any], where: str) -> dict[str, float]:
    out = {}
    for key, value in table.items():
        if key not in BUDGETS:
            hint = closest(key, BUDGETS)
            raise UserInputError(f"{where}: unknown budget {key!r}{f' (did you mean {hint!r}?)' if hint else ''}; "
                                 f"budgets are {', '.join(BUDGETS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                value == 0 and key != "soak_max_drift"):
            raise UserInputError(f"{where}: {key} must be a positive number, got {value!r}")
        out[key] = float(value)
    return out


def read_config(path: str | Path) -> dict[str | None, dict[str, float]]:
    """Parse a device_tests.toml: {None: budgets for every bundle beside it, folder name: that bundle's}.

    A table must name a bundle folder beside the file, so that a typo is an error, not an unchecked bundle.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"{path}: not valid TOML: {exc}") from None
    tables = {k: v for k, v in data.items() if isinstance(v, Mapping)}
    config: dict[str | None, dict[str, float]] = {None: _check_values(
        {k: v for k, v in data.items() if k not in tables}, str(path))}
    for name, table in tables.items():
        if not (path.parent / name / "manifest.json").is_file():
            raise UserInputError(f"{path}: table [{name}] names no bundle folder beside it "
                                 f"(no {path.parent / name / 'manifest.json'})")
        config[name] = _check_values(table, f"{path} [{name}]")
    return config


def resolve(bundle_path: str | Path, profile: Any, overrides: Mapping[str, float | None] | None = None
            ) -> dict[str, Budget]:
    """Every budget for the bundle at `bundle_path` tested against device profile `profile`.

    `overrides` are the command-line values by budget key (None: not given).
    """
    bundle_path = Path(bundle_path)
    config_path = bundle_path.parent / CONFIG_FILE
    config = read_config(config_path) if config_path.is_file() else {}
    from_profile = {"latency_p90_ms": profile.budgets.get("latency_p90_ms"),
                    "memory_budget_mb": profile.memory_budget_mb,
                    "energy_mj_per_inference": profile.budgets.get("energy_mj_per_inference")}
    budgets = {}
    for key, (_, option, default) in BUDGETS.items():
        candidates = [((overrides or {}).get(key), option),
                      (config.get(bundle_path.name, {}).get(key), f"{config_path} [{bundle_path.name}]"),
                      (config.get(None, {}).get(key), str(config_path)),
                      (from_profile.get(key), f"profile {profile.id}"),
                      (default, "default")]
        value, source = next(((v, s) for v, s in candidates if v is not None), (None, "none"))
        budgets[key] = Budget(key, value, source)
    return budgets
