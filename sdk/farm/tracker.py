"""The lease keeper: which devices exist, which are free, and who holds which (the TVM RPC tracker's keyed,
exclusive lease, over Ray actors). A job asks for a device whose labels match; it gets one free device, all
to itself, until it gives it back. Ray runs this as one named async actor on the head, next to the store.
"""
from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sdk.core.errors import DeviceError
from sdk.farm.store import ResultStore

__all__ = ["DeviceRow", "NoDeviceError", "Tracker"]


class NoDeviceError(DeviceError):
    """No device in the farm matches a job's labels (none registered, or every match was lost)."""


@dataclass(frozen=True)
class DeviceRow:
    """One device as `edge-sdk farm devices` shows it. `state` is free, busy or lost (its host died)."""

    name: str
    labels: dict[str, str]
    host: str
    state: str
    jobs_done: int
    job: str | None


class Tracker:
    """Devices by name, their leases, and the job store. Methods are coroutines: a waiting `acquire` does not
    block the others."""

    def __init__(self, store_path: str):
        self.store = ResultStore(store_path)
        self.devices: dict[str, dict[str, Any]] = {}
        self.changed = asyncio.Condition()

    async def store_path(self) -> str:
        return str(self.store.path)

    async def register(self, name: str, labels: Mapping[str, str], handle: list[Any]) -> None:
        """Add (or replace) a device; `handle` is [its actor handle] or [] for an in-process worker."""
        async with self.changed:
            old = self.devices.get(name, {})
            self.devices[name] = {"labels": dict(labels), "handle": handle[0] if handle else None, "job": None,
                                  "lost": False, "jobs_done": old.get("jobs_done", 0)}
            self.changed.notify_all()

    async def unregister(self, name: str) -> bool:
        async with self.changed:
            gone = self.devices.pop(name, None) is not None
            self.changed.notify_all()
            return gone

    def _matching(self, selector: Mapping[str, str]) -> list[str]:
        return [n for n, d in self.devices.items() if all(d["labels"].get(k) == v for k, v in selector.items())]

    async def acquire(self, selector: Mapping[str, str], job: str, attempt: int, bundle: str, avoid: list[str],
                      lease_s: float) -> tuple[str, dict[str, str], Any]:
        """Wait for a free matching device (not lost, not in `avoid`), lease it to `job` for at most `lease_s`;
        returns its name, labels and actor handle. NoDeviceError at once when no live device could ever match.

        A lease not given back in time (its client died) expires, so a crashed client cannot hold a device forever.
        """
        loop = asyncio.get_running_loop()
        async with self.changed:
            while True:
                usable = [n for n in self._matching(selector) if not self.devices[n]["lost"] and n not in avoid]
                if not usable:
                    raise NoDeviceError(self._why_none(selector, avoid))
                for name in usable:
                    lease = self.devices[name]["job"]
                    if lease is not None and lease["until"] < loop.time():
                        self.store.finish(lease["job"], lease["attempt"], "expired",
                                          error=f"lease expired after {lease['lease_s']:g} s without an answer")
                        self.devices[name]["job"] = None
                free = [n for n in usable if self.devices[n]["job"] is None]
                if free:
                    name = min(free, key=lambda n: (self.devices[n]["jobs_done"], n))  # spread the work
                    device = self.devices[name]
                    device["job"] = {"job": job, "attempt": attempt, "lease_s": lease_s,
                                     "until": loop.time() + lease_s}
                    self.store.start(job, attempt, bundle, selector.get("profile"), name, device["labels"]["host"])
                    return name, dict(device["labels"]), device["handle"]
                first_expiry = min(self.devices[n]["job"]["until"] for n in usable)
                try:
                    await asyncio.wait_for(self.changed.wait(), max(0.0, first_expiry - loop.time()) + 0.01)
                except asyncio.TimeoutError:
                    pass

    def _why_none(self, selector: Mapping[str, str], avoid: list[str]) -> str:
        wanted = ", ".join(f"{k}={v}" for k, v in selector.items())
        matching = self._matching(selector)
        if not matching:
            have = sorted({f"{d['labels'].get('profile')}" for d in self.devices.values()})
            return (f"no device in the farm matches {wanted}; the farm has {len(self.devices)} device(s)"
                    f"{' of profile ' + ', '.join(have) if have else ''}. Attach one on a lab host with "
                    f"`edge-sdk farm host --address HEAD:6379 --device {selector.get('profile', 'PROFILE')} ...`")
        lost = [n for n in matching if self.devices[n]["lost"] or n in avoid]
        return (f"every device matching {wanted} was lost mid-job ({', '.join(lost)}: its host or actor died). "
                "Restart `edge-sdk farm host` on those hosts, then run the job again")

    async def release(self, name: str, job: str, attempt: int, status: str, result: dict[str, Any] | None = None,
                      error: str | None = None) -> None:
        """Give the device back; `status` done/failed counts a job, lost marks the device unusable."""
        async with self.changed:
            self.store.finish(job, attempt, status, result=result, error=error)
            device = self.devices.get(name)
            if device is not None and device["job"] is not None and device["job"]["job"] == job:
                device["job"] = None
                if status == "lost":
                    device["lost"] = True
                else:
                    device["jobs_done"] += 1
            self.changed.notify_all()

    async def rows(self) -> list[dict[str, Any]]:
        return [asdict(DeviceRow(n, dict(d["labels"]), d["labels"].get("host", ""),
                                 "lost" if d["lost"] else "busy" if d["job"] else "free", d["jobs_done"],
                                 d["job"]["job"] if d["job"] else None))
                for n, d in sorted(self.devices.items())]

    async def records(self, job: str | None = None) -> list[Any]:
        return self.store.records(job)
