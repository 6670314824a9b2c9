"""BenchmarkResult: a benchmark's JSON with attribute access (`r.latency_ms.p90`, `r.energy.per_inference_mj`)."""
from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["BenchmarkResult", "Record"]


class Record(Mapping[str, Any]):
    """Read-only view of a dict: keys as attributes, nested dicts as Records, lists as they are."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any]):
        object.__setattr__(self, "_data", dict(data))

    def __getattr__(self, name: str) -> Any:
        try:
            value = self._data[name]
        except KeyError:
            raise AttributeError(f"no field {name!r}; fields: {', '.join(self._data)}") from None
        return Record(value) if isinstance(value, Mapping) else value

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        return Record(value) if isinstance(value, Mapping) else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("benchmark results are read-only; use .to_dict() for a mutable copy")

    def __dir__(self) -> list[str]:
        return list(self._data)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self._data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"


class BenchmarkResult(Record):
    """What an agent measured for one bundle. Fields (None when not measured, with a `*_reason` saying why):

    ran, ran_on, load_ms, first_inference_ms, latency_ms (p50/p90/p99/mean/std/min/max/n), throughput_ips,
    peak_rss_mb, parity (passed, outputs, failures), energy (per_inference_mj, idle_w, loop_w, probe, scope)
    or None with energy_reason; job_id and agent when it came over HTTP.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        d = self._data
        if not d.get("ran"):
            return f"BenchmarkResult(ran=False, reason={d.get('reason')!r})"
        lat = d.get("latency_ms") or {}
        parts = [f"ran_on={d.get('ran_on')!r}"]
        parts += [f"{k}={lat[k]:.3f}ms" for k in ("p50", "p90", "p99") if lat.get(k) is not None]
        parts += [f"{k}={d[k]:.1f}" for k in ("load_ms", "peak_rss_mb") if d.get(k) is not None]
        parts.append(f"parity={'pass' if (d.get('parity') or {}).get('passed') else 'FAIL'}")
        energy = d.get("energy")
        parts.append(f"energy_mj={energy.get('per_inference_mj')}" if energy else "energy=None")
        return f"BenchmarkResult({', '.join(parts)})"
