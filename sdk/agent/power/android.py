"""Android phones: the battery fuel gauge's `current_now` (uA) and `voltage_now` (uV) read over adb.

The kernel ABI says current is negative while discharging; some vendor kernels report it positive. The
probe only runs while the phone reports `Discharging`: on USB charge the gauge measures the charge current,
not what the phone draws, so a number would be wrong (use wireless adb or a USB hub that cuts VBUS).
"""
from __future__ import annotations

import time
from typing import Protocol

from sdk.agent.power.base import Clock, SampledProbe

__all__ = ["AndroidBatteryProbe", "Shell"]


class Shell(Protocol):
    def shell(self, command: str) -> str: ...


class AndroidBatteryProbe(SampledProbe):
    name = "android-battery"
    resolution_s = 0.5  # fuel gauges refresh current_now every ~100 ms to 1 s
    interval_s = 0.2

    def __init__(self, adb: Shell, supply: str | None = None, clock: Clock = time.perf_counter):
        super().__init__(clock)
        self.adb = adb
        self.supply = supply
        self.sign = ""

    def _path(self, name: str) -> str:
        return f"/sys/class/power_supply/{self.supply}/{name}"

    def _find_supply(self) -> str | None:
        names = self.adb.shell("ls /sys/class/power_supply").split()
        if "battery" in names:
            return "battery"
        for name in names:
            if self.adb.shell(f"cat /sys/class/power_supply/{name}/type").strip() == "Battery":
                return name
        return None

    def unavailable_reason(self) -> str | None:
        try:
            self.supply = self.supply or self._find_supply()
            if not self.supply:
                return "the phone exposes no Battery power supply under /sys/class/power_supply"
            status = self.adb.shell(f"cat {self._path('status')}").strip()
            if status != "Discharging":
                return (f"the phone's battery reports {status!r}, not 'Discharging': over USB the gauge measures the "
                        "charge current, not the phone's draw. Use wireless adb (adb tcpip) or a USB hub that cuts "
                        "VBUS, so the phone runs from its battery")
            current, _ = self._read_raw()
        except Exception as exc:  # adb errors are the caller's type; any failure here means 'no probe'
            return f"cannot read the battery gauge over adb: {exc}"
        self.sign = "negative while discharging (kernel ABI)" if current < 0 else "positive while discharging (vendor)"
        return None

    def scope(self) -> str:
        return f"whole phone from its battery ({self.supply}; current_now {self.sign})"

    def _read_raw(self) -> tuple[int, int]:
        out = self.adb.shell(f"cat {self._path('current_now')} {self._path('voltage_now')}").split()
        if len(out) != 2:
            raise ValueError(f"expected current_now and voltage_now, got {out!r}")
        return int(out[0]), int(out[1])

    def read_power(self) -> dict[str, float]:
        current_ua, voltage_uv = self._read_raw()
        return {"battery": abs(current_ua) * voltage_uv / 1e12}
