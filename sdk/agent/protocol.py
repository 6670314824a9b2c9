"""The `Agent` protocol: what runs a bundle on a device and measures it, whoever implements it.

`Client` (a remote agent over HTTP) and `LocalAgent` (this machine, no server) implement it; so can a device
farm. Callers (sdk.export(validate=...), `edge-sdk bench`, the device test suite) depend only on this.
A structural Protocol: implementing it means having these members, no inheritance needed.

>>> from sdk.agent.protocol import Agent
>>> from sdk.agent import LocalAgent
>>> isinstance(LocalAgent(), Agent)
True
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from sdk.agent.result import BenchmarkResult
from sdk.agent.spec import RunSpec

__all__ = ["Agent"]


@runtime_checkable
class Agent(Protocol):
    """Something that benchmarks bundles on one device.

    url: where it is ("local" for this machine, "http://..." for a remote agent).
    device(): what the device offers: platform, `runtimes` ({name: {available, unavailable_reason}}),
        `power` probes; plain JSON.
    benchmark(bundle, spec=None, **fields): run a bundle (a folder, a .zip or an sdk Artifact) as
        `RunSpec.of(spec, **fields)` says and return its BenchmarkResult (`ran=False` with `reason` when the
        runtime is missing there). A crash, timeout or cancellation raises sdk.errors.AgentError with the reason.
    """

    url: str

    def device(self) -> dict[str, Any]: ...

    def benchmark(self, bundle: Any, spec: RunSpec | None = None, **fields: Any) -> BenchmarkResult: ...
