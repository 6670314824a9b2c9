"""One physical device as the farm sees it: a connection (an HTTP agent, a phone over adb, or this machine)
and the worker that runs one job at a time on it. Ray runs `DeviceWorker` as an actor on the lab host the
device is attached to; the local farm runs it in-process. Neither needs Ray or torch.
"""
from __future__ import annotations

import platform
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk.agent.result import BenchmarkResult
from sdk.agent.spec import RunSpec
from sdk.errors import UserInputError

__all__ = ["AdbConnection", "AgentConnection", "Connection", "DeviceWorker", "LocalConnection",
           "check_spec"]

def check_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The run spec as keyword arguments, validated by the one RunSpec (an unknown key or a bad value is an error,
    not silently dropped) before any device is leased."""
    RunSpec.from_dict(spec)
    return dict(spec)


@dataclass(frozen=True)
class AgentConnection:
    """An `edge-sdk agent serve` reachable from the lab host. The token never appears in repr or labels."""

    url: str
    token: str | None = field(default=None, repr=False)

    kind = "agent"

    def open(self) -> Any:
        from sdk.agent.client import Client

        return Client(self.url, self.token)

    def describe(self) -> str:
        return self.url


@dataclass(frozen=True)
class AdbConnection:
    """A phone on this lab host's USB, driven over adb with a runner binary (e.g. ExecuTorch's executor_runner)."""

    serial: str
    runner: str
    adb: tuple[str, ...] = ("adb",)
    runtimes: tuple[str, ...] = ("executorch",)

    kind = "adb"

    def open(self) -> Any:
        from sdk.agent.adb import Phone

        return _PhoneAgent(Phone(runner=self.runner, serial=self.serial, adb=self.adb, runtimes=self.runtimes))

    def describe(self) -> str:
        return f"adb:{self.serial}"


@dataclass(frozen=True)
class LocalConnection:
    """This machine, through sdk.agent.LocalAgent (each benchmark in a child process)."""

    kind = "local"

    def open(self) -> Any:
        from sdk.agent.local import LocalAgent

        return LocalAgent()

    def describe(self) -> str:
        return "local"


Connection = AgentConnection | AdbConnection | LocalConnection


class _PhoneAgent:
    """The agent's benchmark API over a phone: the same isolated benchmark process the agent server uses."""

    def __init__(self, phone: Any):
        self.phone = phone
        self.url = f"adb:{phone.serial}"

    def device(self) -> dict[str, Any]:
        from sdk.agent.device import describe

        return describe(self.phone)

    def benchmark(self, bundle: Any, **spec: Any) -> BenchmarkResult:
        from sdk.agent import bench
        from sdk.agent.local import as_folder

        timeout_s = spec.pop("timeout_s", 600.0)  # `target` was dropped by DeviceWorker: the phone is the target
        spec.pop("check_bad_input", None)  # the phone runner has no way to feed a wrong shape
        with as_folder(bundle) as folder:
            result = bench.run_isolated(folder, timeout_s=timeout_s, phone=self.phone.to_dict(), **spec)
        return BenchmarkResult({**result, "agent": self.url})


class DeviceWorker:
    """Runs jobs on one device, one at a time (a lock here; Ray also serialises an actor's calls).

    `labels` are what routing matches on: the profile id, its format and runtime, this host, and what the
    device's agent reports (machine, system, runtimes available there).
    """

    def __init__(self, name: str, profile: Mapping[str, str], connection: Connection,
                 extra_labels: Mapping[str, str] | None = None):
        self.name, self.connection = name, connection
        self._agent = connection.open()
        self._lock = threading.Lock()
        self.jobs_done = 0
        facts = self._agent.device()
        plat = facts.get("platform") or {}
        runtimes = sorted(k for k, v in (facts.get("runtimes") or {}).items() if v.get("available"))
        self.labels = {"device": name, "profile": profile["id"], "format": profile["format"],
                       "runtime": profile["runtime"], "host": platform.node(), "connection": connection.kind,
                       "machine": str(plat.get("machine", "")), "system": str(plat.get("system", "")),
                       "agent_host": str(plat.get("hostname", "")), "runtimes": ",".join(runtimes),
                       **dict(extra_labels or {})}

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "labels": dict(self.labels), "jobs_done": self.jobs_done,
                "connection": self.connection.describe()}

    def device(self) -> dict[str, Any]:
        """What the device's agent reports (GET /v1/device)."""
        return self._agent.device()

    def _spec(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The spec for this connection: `target` means something only to an HTTP agent (a phone over adb is
        the target already; this host has no phone to switch to)."""
        spec = check_spec(spec)
        target = spec.pop("target", "local")
        if target not in ("local", "phone"):
            raise UserInputError(f"target must be 'local' or 'phone', got {target!r}")
        if self.connection.kind == "agent" and target != "local":
            spec["target"] = target
        elif self.connection.kind == "local" and target == "phone":
            raise UserInputError(f"device {self.name} is this host (--local), which drives no phone: target='phone' "
                                 "needs a device attached with --adb or an agent serving a phone")
        return spec

    def benchmark(self, bundle_zip: bytes, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Run one bundle (sent as zip bytes, so it crosses hosts) and return the agent's result as a dict."""
        with self._lock, tempfile.TemporaryDirectory(prefix="edge-sdk-farm-") as tmp:
            path = Path(tmp) / f"{Path(name).name or 'bundle'}.zip"
            path.write_bytes(bundle_zip)
            result = self._agent.benchmark(path, **self._spec(spec)).to_dict()
            self.jobs_done += 1
        return result
