"""A device farm on Ray: one actor per physical device, routing by label, exclusive leases, retries.

    farm = sdk.farm.connect("HEAD:6379")            # a lab (see docs/farm.md), or sdk.farm.local() on a laptop
    farm.benchmark("out/intel-cpu", iterations=50)   # on a free device of the bundle's profile
    farm.run_many(bundles, {"iterations": 50})       # fanned out over every matching device
    sdk.export(model, "intel-cpu", (x,), validate=farm)

Every farm has the agent's protocol (`device()`, `benchmark(bundle, **spec)`), so it goes wherever an agent
does. Ray is needed only for `connect`/`host` (pip install 'edge-sdk[farm]'); nothing here imports torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["AdbConnection", "AgentConnection", "DeviceRow", "Farm", "FarmJobsFailed", "JobRecord", "LocalConnection",
           "NoDeviceError", "connect", "host", "local", "remove"]

_LAZY = {
    "AdbConnection": "sdk.farm.device", "AgentConnection": "sdk.farm.device", "LocalConnection": "sdk.farm.device",
    "DeviceRow": "sdk.farm.tracker", "NoDeviceError": "sdk.farm.tracker", "JobRecord": "sdk.farm.store",
    "Farm": "sdk.farm.farm", "FarmJobsFailed": "sdk.farm.farm", "connect": "sdk.farm.farm", "local": "sdk.farm.farm",
    "host": "sdk.farm.ray_farm", "remove": "sdk.farm.ray_farm",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sdk.farm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
