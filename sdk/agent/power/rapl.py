"""Linux RAPL through powercap: cumulative energy counters of the CPU package, its core/uncore, DRAM and
(on client platforms) psys, in `/sys/class/powercap/intel-rapl:*/energy_uj` (AMD Zen exposes the same
zones through the same driver)."""
from __future__ import annotations

import errno
import time
from pathlib import Path

from sdk.agent.power.base import Clock, CounterProbe

__all__ = ["RaplProbe"]


class RaplProbe(CounterProbe):
    """Reads every `intel-rapl:N[:M]` zone under `<root>/sys/class/powercap` (not `intel-rapl-mmio`, which
    mirrors package-0 on some laptops and would double count)."""

    name = "rapl"
    resolution_s = 0.01  # the counters update about every millisecond

    def __init__(self, root: str | Path = "/", clock: Clock = time.perf_counter):
        super().__init__(clock)
        self.base = Path(root) / "sys/class/powercap"
        self.zones: dict[str, Path] = {}
        self._wrap: dict[str, float] = {}

    def _discover(self) -> dict[str, Path]:
        zones = {}
        for zone in sorted(self.base.glob("intel-rapl:*")):
            if not (zone / "energy_uj").exists():
                continue
            name = (zone / "name").read_text().strip()
            parts = zone.name.split(":")
            if len(parts) == 3:  # a subzone: name it after its parent package
                parent = self.base / ":".join(parts[:2])
                name = f"{(parent / 'name').read_text().strip()}/{name}"
            zones[name] = zone
        return zones

    def unavailable_reason(self) -> str | None:
        if not self.base.is_dir():
            return (f"{self.base} does not exist: not Linux, or a kernel without powercap (virtual machines "
                    "usually do not expose RAPL)")
        try:
            zones = self._discover()
        except OSError as exc:
            return f"cannot read RAPL zone names under {self.base}: {exc}"
        if not zones:
            return (f"{self.base} has no intel-rapl zones: the CPU has no RAPL, or the driver is not loaded "
                    "(sudo modprobe intel_rapl_msr)")
        for zone in zones.values():
            try:
                (zone / "energy_uj").read_text()
            except PermissionError:
                return (f"{zone / 'energy_uj'} is readable by root only (since Linux 5.10, CVE-2020-8694): run "
                        "the agent as root, or `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj` "
                        "(and again after each boot)")
            except OSError as exc:
                if exc.errno == errno.ENODATA:
                    return f"{zone / 'energy_uj'} has no data (RAPL disabled by firmware)"
                return f"cannot read {zone / 'energy_uj'}: {exc}"
        self.zones = zones
        self._wrap = {n: int((z / "max_energy_range_uj").read_text()) / 1e6 for n, z in zones.items()}
        return None

    def scope(self) -> str:
        return " + ".join(_total_domains(self.zones)) + (" (whole SoC platform)" if "psys" in self.zones else "")

    def read(self) -> dict[str, float]:
        return {n: int((z / "energy_uj").read_text()) / 1e6 for n, z in self.zones.items()}

    def wrap_j(self, domain: str) -> float | None:
        return self._wrap.get(domain)

    def total(self, joules: dict[str, float]) -> float:
        return sum(joules[n] for n in _total_domains(joules))


def _total_domains(names) -> list[str]:
    """psys where the platform has it (it contains the package); else packages + DRAM (DRAM lies outside
    the package domain, core/uncore inside it)."""
    if "psys" in names:
        return ["psys"]
    return [n for n in names if (n.startswith("package") and "/" not in n) or n.split("/")[-1] == "dram"]
