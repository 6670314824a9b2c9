"""NVIDIA GPUs through NVML (`nvidia-ml-py`): `nvmlDeviceGetTotalEnergyConsumption`, the driver's
millijoule counter since it loaded (Volta and newer). GPU board energy only: not the CPU or the host."""
from __future__ import annotations

import time
from typing import Any

from sdk.agent.power.base import Clock, CounterProbe

__all__ = ["NvmlProbe"]


class NvmlProbe(CounterProbe):
    name = "nvml"
    resolution_s = 0.1  # the counter advances in steps of tens of milliseconds
    interval_s = 1.0

    def __init__(self, indices: list[int] | None = None, clock: Clock = time.perf_counter):
        super().__init__(clock)
        self.indices = indices
        self._handles: dict[str, Any] = {}
        self._names: dict[str, str] = {}

    def unavailable_reason(self) -> str | None:
        try:
            import pynvml
        except ImportError:
            return "nvidia-ml-py is not installed: pip install 'edge-sdk[agent]'"
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            return f"NVML did not initialise ({exc}): no NVIDIA driver on this machine"
        try:
            count = pynvml.nvmlDeviceGetCount()
            indices = self.indices if self.indices is not None else list(range(count))
            if not indices:
                return "NVML sees no GPU"
            for i in indices:
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self._handles[f"gpu{i}"] = handle
                name = pynvml.nvmlDeviceGetName(handle)
                self._names[f"gpu{i}"] = name.decode() if isinstance(name, bytes) else name
        except pynvml.NVMLError_NotSupported:
            return "this GPU has no NVML total-energy counter (needs Volta or newer)"
        except pynvml.NVMLError as exc:
            return f"NVML energy counter unreadable: {exc}"
        return None

    def scope(self) -> str:
        return " + ".join(f"{d} ({self._names[d]})" for d in self._handles) + " board energy"

    def read(self) -> dict[str, float]:
        import pynvml

        return {d: pynvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3 for d, h in self._handles.items()}
