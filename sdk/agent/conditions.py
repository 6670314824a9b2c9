"""The conditions a measurement was taken under: CPU governor and frequency, thermal zone temperatures and
load average, each read from the OS where it is readable and reported unavailable, with the reason, where not.
Read before and after a timed loop, so a reader can see throttling or a busy machine.

>>> c = snapshot()
>>> sorted(c)
['cpu_frequency_mhz', 'cpu_governor', 'load_average', 'thermal_c']
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["busy_warnings", "snapshot"]

CPUFREQ = Path("/sys/devices/system/cpu")
THERMAL = Path("/sys/class/thermal")
#: 1-minute load average per CPU above which the machine counts as busy (other work competes for the cores)
BUSY_LOAD_PER_CPU = 0.75
#: a temperature rise over one timed loop that suggests the device heated up enough to throttle
HEATING_C = 10.0


def _unavailable(reason: str) -> dict[str, str]:
    return {"unavailable": reason}


def _cpufreq() -> tuple[dict[str, Any], dict[str, Any]]:
    if not sys.platform.startswith("linux"):
        why = _unavailable(f"cpufreq is read from Linux sysfs; this is {sys.platform}")
        return why, why
    cpus = sorted(CPUFREQ.glob("cpu[0-9]*/cpufreq"))
    if not cpus:
        why = _unavailable(f"no {CPUFREQ}/cpu*/cpufreq: the kernel exposes no frequency scaling here (common in VMs "
                           "and containers)")
        return why, why
    governors, freqs = {}, {}
    for d in cpus:
        cpu = d.parent.name
        try:
            governors[cpu] = (d / "scaling_governor").read_text().strip()
            freqs[cpu] = int((d / "scaling_cur_freq").read_text()) / 1000
        except (OSError, ValueError) as exc:
            why = _unavailable(f"{d} unreadable: {exc}")
            return why, why
    return {"per_cpu": governors, "all": sorted(set(governors.values()))}, \
        {"per_cpu": freqs, "min": min(freqs.values()), "max": max(freqs.values())}


def _thermal() -> dict[str, Any]:
    zones = sorted(THERMAL.glob("thermal_zone*"))
    if not zones:
        return _unavailable(f"no {THERMAL}/thermal_zone*: no thermal sensors exposed here"
                            if sys.platform.startswith("linux") else f"thermal zones are Linux sysfs; this is {sys.platform}")
    temps = {}
    for z in zones:
        try:
            kind = (z / "type").read_text().strip()
            temps[f"{z.name}:{kind}"] = int((z / "temp").read_text()) / 1000
        except (OSError, ValueError):
            continue  # some zones refuse reads (e.g. a sensor that is powered down)
    return temps or _unavailable(f"every {THERMAL}/thermal_zone*/temp refused to be read")


def _load() -> dict[str, Any]:
    try:
        one, five, fifteen = os.getloadavg()
    except (OSError, AttributeError) as exc:
        return _unavailable(f"os.getloadavg() is not available here: {exc}")
    return {"1m": one, "5m": five, "15m": fifteen, "cpus": os.cpu_count()}


def snapshot() -> dict[str, Any]:
    """Governor, frequency (MHz), temperatures (°C) and load average now."""
    governor, freq = _cpufreq()
    return {"cpu_governor": governor, "cpu_frequency_mhz": freq, "thermal_c": _thermal(), "load_average": _load()}


def busy_warnings(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Warnings that the numbers may be skewed: a busy machine, a non-performance governor, a device heating up."""
    out = []
    load = before["load_average"]
    if "1m" in load and load["cpus"] and load["1m"] > BUSY_LOAD_PER_CPU * load["cpus"]:
        out.append(f"the machine was busy: load average {load['1m']:.2f} on {load['cpus']} CPUs before the loop; "
                   "other work competed for the cores, so latencies may be inflated")
    governors = before["cpu_governor"].get("all", [])
    if governors and governors != ["performance"]:
        out.append(f"CPU governor {', '.join(governors)} (not 'performance'): frequency scaling adds variance")
    t0, t1 = before["thermal_c"], after["thermal_c"]
    if "unavailable" not in t0 and "unavailable" not in t1:
        rise = max((t1[k] - t0[k] for k in t0 if k in t1), default=0.0)
        if rise > HEATING_C:
            out.append(f"a thermal zone rose {rise:.1f} °C during the loop: the device may have throttled")
    return out
