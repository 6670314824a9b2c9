"""Jetson INA3221 power monitors through the Linux hwmon driver (JetPack 5/6, L4T 35/36):
`/sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon*/in<N>_label`, `in<N>_input` (bus mV) and
`curr<N>_input` (mA). The sensors give power, not energy, so a thread samples and integrates."""
from __future__ import annotations

import time
from pathlib import Path

from sdk.agent.power.base import Clock, SampledProbe

__all__ = ["JetsonProbe"]

#: rails that carry the whole module's input power, by Jetson generation (Orin Nano/NX: VDD_IN)
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "5V_IN")
SKIP_LABELS = {"NC", "sum of shunt voltages"}


class JetsonProbe(SampledProbe):
    name = "jetson-ina3221"
    resolution_s = 0.1
    interval_s = 0.02

    def __init__(self, root: str | Path = "/", clock: Clock = time.perf_counter):
        super().__init__(clock)
        self.root = Path(root)
        self.driver = self.root / "sys/bus/i2c/drivers/ina3221"
        self.rails: dict[str, tuple[Path, Path]] = {}

    def _discover(self) -> dict[str, tuple[Path, Path]]:
        rails = {}
        for hwmon in sorted(self.driver.glob("*-*/hwmon/hwmon*")):
            for label_file in sorted(hwmon.glob("in*_label")):
                label = label_file.read_text().strip()
                n = label_file.name[2:-len("_label")]
                enable = hwmon / f"in{n}_enable"
                if label in SKIP_LABELS or (enable.exists() and enable.read_text().strip() == "0"):
                    continue
                volt, curr = hwmon / f"in{n}_input", hwmon / f"curr{n}_input"
                if volt.exists() and curr.exists():
                    rails[label] = (volt, curr)
        return rails

    def unavailable_reason(self) -> str | None:
        if not self.driver.is_dir():
            legacy = self.root / "sys/bus/i2c/drivers/ina3221x"
            if legacy.is_dir():
                return (f"{legacy} is the L4T 32 (JetPack 4) iio driver, which this probe does not read; "
                        "upgrade to JetPack 5/6")
            return f"{self.driver} does not exist: not a Jetson with INA3221 monitors (e.g. Nano 2GB has none)"
        try:
            rails = self._discover()
            if rails:
                self.rails = rails
                self.read_power()
        except PermissionError as exc:
            return f"cannot read INA3221 rails ({exc}): run the agent as a user who can read {self.driver}"
        except (OSError, ValueError) as exc:
            return f"cannot read INA3221 rails under {self.driver}: {exc}"
        if not rails:
            return f"no labelled INA3221 channel under {self.driver}/*/hwmon/hwmon*"
        return None

    def scope(self) -> str:
        total = next((r for r in TOTAL_RAILS if r in self.rails), None)
        if total:
            return f"{total} (module input power)"
        return ("sum of " + " + ".join(self.rails) + " (this module has no input rail; the sum may miss "
                "unmonitored rails)")

    def read_power(self) -> dict[str, float]:
        return {label: int(v.read_text()) * int(c.read_text()) / 1e6 for label, (v, c) in self.rails.items()}

    def total(self, joules: dict[str, float]) -> float:
        total = next((r for r in TOTAL_RAILS if r in joules), None)
        return joules[total] if total else sum(joules.values())
