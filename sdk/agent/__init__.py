"""The test agent: runs bundles with their runtime on a device and measures latency, memory, parity and energy.

Imports no torch. `Client` talks to a remote agent (`edge-sdk agent serve`), `LocalAgent` does the same
on this machine without a server; both implement the `Agent` protocol, take a `RunSpec` (or its fields as
keywords) and return a BenchmarkResult. The server (`serve`, `create_app`) needs
the agent extra (FastAPI, uvicorn); it is imported only when used.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Agent", "BenchmarkFailed", "BenchmarkResult", "Client", "LocalAgent", "RunSpec", "create_app",
           "detect_power", "serve"]

_LAZY = {
    "Agent": ("sdk.agent.protocol", "Agent"),
    "RunSpec": ("sdk.agent.spec", "RunSpec"),
    "Client": ("sdk.agent.client", "Client"),
    "LocalAgent": ("sdk.agent.local", "LocalAgent"),
    "BenchmarkResult": ("sdk.agent.result", "BenchmarkResult"),
    "BenchmarkFailed": ("sdk.agent.bench", "BenchmarkFailed"),
    "serve": ("sdk.agent.server", "serve"),
    "create_app": ("sdk.agent.server", "create_app"),
    "detect_power": ("sdk.agent.power", "detect"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sdk.agent' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
