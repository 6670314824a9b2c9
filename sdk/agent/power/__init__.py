"""Power probes: each reads one platform's own energy counter or power sensor, never a model of it.

`detect()` tries every probe this machine could have and returns the ones that work plus, for the
others, why not. Every probe takes the root of the filesystem (or an adb/command runner), so tests point
it at a faithful copy of the real sysfs layout or a captured powermetrics stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.agent.power.android import AndroidBatteryProbe, Shell
from sdk.agent.power.base import (
    CounterProbe,
    Probe,
    ProbeError,
    Reading,
    SampledProbe,
    energy_report,
)
from sdk.agent.power.jetson import JetsonProbe
from sdk.agent.power.nvml import NvmlProbe
from sdk.agent.power.powermetrics import PowermetricsProbe
from sdk.agent.power.rapl import RaplProbe

__all__ = [
    "AndroidBatteryProbe",
    "CounterProbe",
    "Detected",
    "JetsonProbe",
    "NvmlProbe",
    "PowermetricsProbe",
    "Probe",
    "ProbeError",
    "RaplProbe",
    "Reading",
    "SampledProbe",
    "detect",
    "energy_report",
]


@dataclass
class Detected:
    """Working probes, in order of preference (widest scope first), and why each other one is absent."""

    working: list[Probe] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"working": [p.describe() for p in self.working], "unavailable": dict(self.unavailable)}

    def reason(self) -> str:
        """One line for `energy: null`: why no probe could measure."""
        return "no power probe works here: " + "; ".join(f"{n}: {r}" for n, r in self.unavailable.items())


def detect(root: str | Path = "/", adb: Shell | None = None, powermetrics_command: list[str] | None = None,
           nvml: bool = True) -> Detected:
    """Try every probe; the phone's battery only when an adb device is given (the agent drives a phone).

    Order = preference for the headline number: whole-device scopes (Jetson module input, phone battery)
    before SoC (powermetrics, RAPL) before the GPU board alone (NVML).
    """
    candidates: list[Probe] = []
    if adb is not None:
        candidates.append(AndroidBatteryProbe(adb))
    candidates += [JetsonProbe(root), PowermetricsProbe(powermetrics_command), RaplProbe(root)]
    if nvml:
        candidates.append(NvmlProbe())
    found = Detected()
    for probe in candidates:
        reason = probe.unavailable_reason()
        if reason is None:
            found.working.append(probe)
        else:
            found.unavailable[probe.name] = reason
    if adb is None:
        found.unavailable[AndroidBatteryProbe.name] = "no phone attached to this agent (serve with an adb serial)"
    return found
