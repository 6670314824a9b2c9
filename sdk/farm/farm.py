"""The farm's client side: route a bundle to a free device whose labels match, fan a list of bundles out over
every matching device, retry a job on another device when its host dies, and record who ran what.

`connect("HEAD:6379")` joins a Ray cluster (Ray places each device actor on its lab host, serialises its
calls and restarts a crashed one); `local()` is the same API on this machine with no cluster.
"""
from __future__ import annotations

import abc
import asyncio
import dataclasses
import json
import logging
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sdk.agent.local import as_zip
from sdk.agent.result import BenchmarkResult
from sdk.core.errors import AgentError, SdkError, UserInputError
from sdk.farm.device import DeviceWorker, LocalConnection, check_spec
from sdk.farm.store import DEFAULT_STORE, JobRecord
from sdk.farm.tracker import DeviceRow, NoDeviceError, Tracker

__all__ = ["Farm", "FarmJobsFailed", "LocalFarm", "PinnedDevice", "connect", "local"]

log = logging.getLogger("sdk.farm")
#: a lease lasts the job's own timeout plus this (upload, queueing on a shared agent); then it expires
LEASE_GRACE_S = 300.0


class FarmJobsFailed(AgentError):
    """Some jobs of a `run_many` failed; `errors` maps each failed job's index to its error, `results` holds
    every result (None where the job failed)."""

    def __init__(self, message: str, errors: dict[int, SdkError], results: list[BenchmarkResult | None]):
        super().__init__(message)
        self.errors, self.results = errors, results


def _manifest(zip_path: Path) -> dict[str, Any]:
    """The bundle's manifest (routing needs its device), read from the zip that will be sent."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            return json.loads(zf.read("manifest.json"))
    except (KeyError, zipfile.BadZipFile, ValueError) as exc:
        raise UserInputError(f"{zip_path} is not a bundle (no readable manifest.json: {exc}); give a folder "
                             "written by sdk.export, its .zip, or an Artifact") from None


class Farm(abc.ABC):
    """What every farm offers (the agent protocol, plus fan-out): `benchmark(bundle, **spec)` runs one bundle on a
    free device of the bundle's profile; `run_many(bundles, spec)` runs many, in parallel across devices."""

    url: str
    #: how many jobs may wait for a device at once (threads; the lease keeper does the queueing)
    max_in_flight = 64

    @abc.abstractmethod
    def _call(self, method: str, *args: Any) -> Any:
        ...

    @abc.abstractmethod
    def _payload(self, zip_path: Path) -> Any:
        ...

    @abc.abstractmethod
    def _run(self, handle: Any, payload: Any, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        ...

    @abc.abstractmethod
    def _device_facts(self, name: str) -> dict[str, Any]:
        ...

    def _lost(self, exc: BaseException) -> bool:
        """True when `exc` means the device or its host died (retry elsewhere), not that the job failed."""
        return False

    def _selector(self, manifest: Mapping[str, Any], labels: Mapping[str, str] | None) -> dict[str, str]:
        return {"profile": manifest["device"], **dict(labels or {})}

    # --- the protocol ---

    def device(self) -> dict[str, Any]:
        """The farm's devices (name, labels, host, state, jobs done)."""
        return {"farm": self.url, "devices": [dataclasses.asdict(row) for row in self.devices()]}

    def benchmark(self, bundle: Any, *, labels: Mapping[str, str] | None = None, **spec: Any) -> BenchmarkResult:
        """Run one bundle on a free device of its profile (and `labels`); the result says which device ran it."""
        return self._one(bundle, spec, labels)

    def run_many(self, bundles: Sequence[Any], spec: Mapping[str, Any] | None = None, *,
                 labels: Mapping[str, str] | None = None) -> list[BenchmarkResult]:
        """Run every bundle once, fanned out over all matching devices, one job at a time per device; results in
        the order of `bundles`. FarmJobsFailed (after every job has ended) if any failed."""
        spec = check_spec(spec or {})
        width = max(1, min(len(bundles), self.max_in_flight))
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="farm") as pool:
            futures = [pool.submit(self._one, b, spec, labels) for b in bundles]
        results: list[BenchmarkResult | None] = []
        errors: dict[int, SdkError] = {}
        for i, future in enumerate(futures):
            try:
                results.append(future.result())
            except SdkError as exc:
                errors[i] = exc
                results.append(None)
        if errors:
            lines = "; ".join(f"job {i} ({bundles[i]}): {exc}" for i, exc in list(errors.items())[:5])
            raise FarmJobsFailed(f"{len(errors)} of {len(bundles)} farm jobs failed: {lines}", errors, results)
        return results  # type: ignore[return-value]

    def devices(self) -> list[DeviceRow]:
        return [DeviceRow(**row) for row in self._call("rows")]

    def jobs(self, job: str | None = None) -> list[JobRecord]:
        """Every attempt in the job record (of one job, or all): which device and host ran it, what came back."""
        return list(self._call("records", job))

    @property
    def store_path(self) -> str:
        """The SQLite file on the head that keeps every attempt (table `attempts`)."""
        return self._call("store_path")

    def pin(self, device: str) -> PinnedDevice:
        """The same protocol, on one named device only (e.g. to run the device tests on each device)."""
        if device not in {row.name for row in self.devices()}:
            raise NoDeviceError(f"no device named {device!r} in the farm {self.url}")
        return PinnedDevice(self, device)

    # --- one job ---

    def _one(self, bundle: Any, spec: Mapping[str, Any], labels: Mapping[str, str] | None) -> BenchmarkResult:
        spec = check_spec(spec)
        job = uuid.uuid4().hex[:12]
        with as_zip(bundle) as zip_path:
            selector = self._selector(_manifest(zip_path), labels)
            payload, bundle_name = self._payload(zip_path), zip_path.stem
            avoid: list[str] = []  # devices lost during this job
            attempt = 0
            while True:
                attempt += 1
                name, device_labels, handle = self._call("acquire", selector, job, attempt, bundle_name, avoid,
                                                         spec.get("timeout_s", 600.0) + LEASE_GRACE_S)
                try:
                    result = self._run(handle, payload, bundle_name, spec)
                except BaseException as exc:
                    lost = self._lost(exc)
                    self._call("release", name, job, attempt, "lost" if lost else "failed", None, str(exc)[-2000:])
                    if lost:
                        log.warning("farm job %s: device %s lost mid-job (%s); trying another device", job, name,
                                    type(exc).__name__)
                        avoid.append(name)
                        continue
                    if isinstance(exc, SdkError):
                        raise AgentError(f"farm job {job} ({bundle_name}) failed on device {name} "
                                         f"(host {device_labels.get('host')}): {exc}") from exc
                    raise
                self._call("release", name, job, attempt, "done", result, None)
                return BenchmarkResult({**result, "agent": f"farm:{name}",
                                        "farm": {"job": job, "device": name, "host": device_labels.get("host"),
                                                 "attempts": attempt, "labels": device_labels}})


class PinnedDevice:
    """One device of a farm behind the agent protocol (device(), benchmark())."""

    def __init__(self, farm: Farm, name: str):
        self.farm, self.name, self.url = farm, name, f"{farm.url}/{name}"

    def device(self) -> dict[str, Any]:
        """What the device's own agent reports (GET /v1/device)."""
        return self.farm._device_facts(self.name)

    def benchmark(self, bundle: Any, **spec: Any) -> BenchmarkResult:
        return self.farm.benchmark(bundle, labels={"device": self.name}, **spec)


class LocalFarm(Farm):
    """The farm API on this machine, no cluster: one device (sdk.agent.LocalAgent) that takes any bundle whose
    runtime is installed here, jobs one at a time, attempts kept in the same SQLite store."""

    url = "local"
    max_in_flight = 1

    def __init__(self, store: str | Path | None = None):
        self._loop = asyncio.new_event_loop()
        self._tracker = Tracker(str(store or DEFAULT_STORE))
        self._worker = DeviceWorker("local", {"id": "any", "format": "any", "runtime": "any"}, LocalConnection())
        self._call("register", "local", self._worker.labels, [])

    def _call(self, method: str, *args: Any) -> Any:
        return self._loop.run_until_complete(getattr(self._tracker, method)(*args))

    def _payload(self, zip_path: Path) -> Any:
        return zip_path.read_bytes()

    def _run(self, handle: Any, payload: Any, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return self._worker.benchmark(payload, name, spec)

    def _device_facts(self, name: str) -> dict[str, Any]:
        return self._worker.device()

    def _selector(self, manifest: Mapping[str, Any], labels: Mapping[str, str] | None) -> dict[str, str]:
        return dict(labels or {})  # this machine runs every profile's bundles it has the runtime for

    def close(self) -> None:
        self._tracker.store.close()
        self._loop.close()


def local(store: str | Path | None = None) -> LocalFarm:
    """A farm of one: this machine. `store` is the SQLite file of attempts (default
    ~/.edge-sdk/farm/results.sqlite3)."""
    return LocalFarm(store)


def connect(address: str, *, store: str | Path | None = None) -> Farm:
    """Join the lab's farm at the Ray head `address` ("HOST:6379"), or `"local"` for `local(store)`.

    `store` is where the head keeps the job record, used when this call is the first to start the farm's lease
    keeper (default ~/.edge-sdk/farm/results.sqlite3 on the head); `farm.store_path` says where it is.
    """
    if address == "local":
        return local(store)
    from sdk.farm.ray_farm import RayFarm

    return RayFarm(address, store=store)

