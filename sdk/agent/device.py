"""What an agent can offer: its platform, which runtimes load here (and why not), which power probes work."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any

import backends
from sdk.agent import power
from sdk.version import __version__

__all__ = ["describe", "runtimes"]


def runtimes() -> dict[str, dict[str, Any]]:
    """Every registered runtime: available, or the reason it is not."""
    out = {}
    for name in backends.runtimes():
        try:
            reason = backends.get(name).unavailable_reason()
        except Exception as exc:  # a backend module that fails to import is unavailable, not fatal
            reason = f"backend failed to import: {type(exc).__name__}: {exc}"
        out[name] = {"available": reason is None, "unavailable_reason": reason}
    return out


def _memory_mb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 20)
    except (ValueError, OSError, AttributeError):
        return None


def describe(phone: Any | None = None) -> dict[str, Any]:
    """The body of GET /v1/device (also LocalAgent.device()). `phone` is an sdk.agent.adb.Phone or None."""
    info: dict[str, Any] = {
        "agent_version": __version__,
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
                     "processor": platform.processor(), "hostname": platform.node(), "python": sys.version.split()[0],
                     "cpu_count": os.cpu_count(), "memory_mb": _memory_mb()},
        "runtimes": runtimes(),
    }
    adb = None
    if phone is not None:
        from sdk.agent import adb as adb_mod

        adb = adb_mod.Adb(phone.adb, phone.serial)
        try:
            attached = adb_mod.devices(phone.adb)
        except adb_mod.AdbError as exc:
            attached, adb = [], None
            info["phone"] = {"error": str(exc)}
        else:
            info["phone"] = {"serial": phone.serial, "runner": os.path.basename(phone.runner),
                             "runtimes": list(phone.runtimes), "attached": attached}
    info["power"] = power.detect(adb=adb).to_dict()
    return info
