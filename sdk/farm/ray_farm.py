"""The farm on a Ray cluster: device actors pinned to their lab hosts, one lease-keeper actor on the head.

Ray does the distributed work: it places each `DeviceWorker` actor on the node its device is attached to
(node affinity), runs an actor's calls one at a time, restarts a crashed actor (`max_restarts`), ships bundles
through its object store, and tells us when a node dies (ActorDiedError / ActorUnavailableError), which is
when a job is retried on another device.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdk import devices
from sdk.core.errors import AgentError, UserInputError
from sdk.farm.device import Connection, DeviceWorker
from sdk.farm.farm import Farm
from sdk.farm.store import DEFAULT_STORE
from sdk.farm.tracker import DeviceRow, Tracker

__all__ = ["NAMESPACE", "RayFarm", "host", "remove"]

NAMESPACE = "edge-sdk-farm"
TRACKER = "tracker"
#: a device actor whose process crashes is restarted on its host this many times
DEVICE_RESTARTS = 3


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserInputError("the device farm runs on Ray, which is not installed here: "
                             "pip install 'edge-sdk[farm]'") from None
    return ray


def _init(address: str) -> Any:
    """Join the cluster at `address` once per process (a later call with another address is an error)."""
    ray = _ray()
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address, namespace=NAMESPACE, logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise AgentError(f"cannot join the farm's Ray cluster at {address}: {exc}. Is `ray start --head` running "
                         "there, and is this host a node of it (`ray start --address HEAD:6379`)?") from exc
    return ray


def _unwrap(exc: BaseException) -> BaseException:
    """The error an actor raised, without Ray's wrapper."""
    ray = _ray()
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        return exc.cause
    return exc


def _nodes(ray: Any) -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]


def _pin(ray: Any, node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


class RayFarm(Farm):
    """A farm whose devices are Ray actors on lab hosts (see `host`)."""

    def __init__(self, address: str, *, store: str | Path | None = None):
        self.url = f"ray://{address}"
        ray = self._ray = _init(address)
        head = next(n["NodeID"] for n in _nodes(ray) if "node:__internal_head__" in n.get("Resources", {}))
        self._tracker = ray.remote(Tracker).options(
            name=TRACKER, namespace=NAMESPACE, lifetime="detached", get_if_exists=True, num_cpus=0,
            scheduling_strategy=_pin(ray, head)).remote(str(store or DEFAULT_STORE))

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return self._ray.get(getattr(self._tracker, method).remote(*args))
        except self._ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None

    def _payload(self, zip_path: Path) -> Any:
        return self._ray.put(zip_path.read_bytes())

    def _run(self, handle: Any, payload: Any, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self._ray.get(handle.benchmark.remote(payload, name, dict(spec)))
        except self._ray.exceptions.RayTaskError as exc:
            raise _unwrap(exc) from None

    def _lost(self, exc: BaseException) -> bool:
        return isinstance(exc, self._ray.exceptions.RayActorError)  # ActorDiedError, ActorUnavailableError

    def _device_facts(self, name: str) -> dict[str, Any]:
        handle = self._ray.get_actor(f"device:{name}", namespace=NAMESPACE)
        return self._ray.get(handle.device.remote())


def _default_name(profile: str, connection: Connection) -> str:
    return f"{profile}-{connection.describe().split('://')[-1].replace('adb:', '')}"


def host(address: str, device: str, connection: Connection, *, name: str | None = None, node: str | None = None,
         labels: Mapping[str, str] | None = None) -> DeviceRow:
    """Attach a device to the farm: start its actor on this lab host's Ray node (or on `node`, a node name or
    id), labelled with the profile `device`, and register it with the lease keeper. A device of the same name is
    replaced. The actor outlives this call (a detached actor); it goes when its node stops or on `remove`."""
    ray = _init(address)
    profile = devices.get(device)
    name = name or _default_name(profile.id, connection)
    alive = _nodes(ray)
    if node is None:
        node_id = ray.get_runtime_context().get_node_id()
    else:
        node_id = next((n["NodeID"] for n in alive if node in (n["NodeID"], n.get("NodeName"))), None)
        if node_id is None:
            raise UserInputError(f"no live Ray node named {node!r} in the cluster at {address}; nodes: "
                                 f"{', '.join(sorted(n.get('NodeName', n['NodeID']) for n in alive))}")
    node_name = next((n.get("NodeName") for n in alive if n["NodeID"] == node_id), node_id)
    farm = RayFarm(address)
    remove(address, name, _farm=farm)
    actor = ray.remote(DeviceWorker).options(
        name=f"device:{name}", namespace=NAMESPACE, lifetime="detached", num_cpus=0, max_restarts=DEVICE_RESTARTS,
        max_task_retries=0, scheduling_strategy=_pin(ray, node_id),
    ).remote(name, {"id": profile.id, "format": profile.format, "runtime": profile.runtime}, connection,
             {"host": str(node_name), **dict(labels or {})})
    try:
        info = ray.get(actor.info.remote())
    except ray.exceptions.RayError as exc:
        ray.kill(actor)
        raise AgentError(f"device {name} ({connection.describe()}) could not start on node {node_name}: "
                         f"{_unwrap(exc)}") from None
    farm._call("register", name, info["labels"], [actor])
    return next(row for row in farm.devices() if row.name == name)


def remove(address: str, name: str, *, _farm: RayFarm | None = None) -> bool:
    """Take a device out of the farm and stop its actor; False if there was none of that name."""
    ray = _init(address)
    farm = _farm or RayFarm(address)
    gone = farm._call("unregister", name)
    try:
        ray.kill(ray.get_actor(f"device:{name}", namespace=NAMESPACE))
    except ValueError:  # no such actor
        return gone
    return True
