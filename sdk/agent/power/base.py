"""What every power probe shares: a background thread that reads the platform's counter or power sensor
while a window is open, and the arithmetic that turns an idle window and a loop window into energy per
inference. Probes never guess: one that cannot read its counter says why (`unavailable_reason`).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["Clock", "CounterProbe", "Probe", "ProbeError", "Reading", "SampledProbe", "energy_report"]

#: seconds from an arbitrary origin; `time.perf_counter` in production, a hand-moved clock in tests
Clock = Callable[[], float]


class ProbeError(RuntimeError):
    """A probe that worked at detection failed while measuring (sensor gone, process died)."""


@dataclass(frozen=True)
class Reading:
    """Energy a probe saw over one window: joules per domain and the probe's total (its widest scope)."""

    probe: str
    seconds: float
    joules: dict[str, float]
    total_j: float
    samples: int
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def watts(self) -> float:
        return self.total_j / self.seconds if self.seconds > 0 else 0.0


class Probe:
    """A window-based energy probe: `start()`, run the workload, `stop()` -> Reading.

    Subclasses set `name`, `resolution_s` (the shortest window the sensor resolves), `interval_s` (how often
    the thread reads) and implement `unavailable_reason`, `scope` and the `_begin/_tick/_end` hooks.
    Every sample and window edge is stamped by `clock`: the energy integral depends only on the stamps and
    readings, so a test that moves the clock by hand gets an exact figure whatever the machine's load.
    """

    name: ClassVar[str]
    resolution_s: ClassVar[float] = 0.1
    interval_s: float = 0.05

    def __init__(self, clock: Clock = time.perf_counter):
        self.clock = clock

    def unavailable_reason(self) -> str | None:
        raise NotImplementedError  # pragma: no cover

    def scope(self) -> str:
        """What the total covers, e.g. 'VDD_IN (module input)'; shown next to the numbers."""
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "scope": self.scope(), "resolution_s": self.resolution_s}

    # -- window ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._t0 = self.clock()
        try:
            self._begin(self._t0)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ProbeError(f"{self.name} probe could not start: {exc}") from exc
        self._thread = threading.Thread(target=self._loop, name=f"power-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> Reading:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise ProbeError(f"{self.name} probe failed while sampling: {self._error}") from self._error
        try:
            with self._lock:
                return self._end(self.clock())
        except (OSError, ValueError, RuntimeError) as exc:
            raise ProbeError(f"{self.name} probe failed at the end of the window: {exc}") from exc

    def abort(self) -> None:
        """Stop sampling without a reading (after an error elsewhere)."""
        if getattr(self, "_thread", None) is not None:
            self._stop.set()
            self._thread.join()

    def sample(self) -> None:
        """Read the counter or sensor now, stamped `clock()`. The window's thread calls this every `interval_s`;
        a caller may add a sample at a moment it knows matters (e.g. right after the load changed)."""
        with self._lock:
            self._tick(self.clock())

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as exc:  # reported by stop(); a dead sensor must not be silent
                self._error = exc
                return

    def _begin(self, t: float) -> None:
        raise NotImplementedError  # pragma: no cover

    def _tick(self, t: float) -> None:
        raise NotImplementedError  # pragma: no cover

    def _end(self, t: float) -> Reading:
        raise NotImplementedError  # pragma: no cover

    def total(self, joules: dict[str, float]) -> float:
        """The probe's widest non-overlapping scope (default: sum of domains)."""
        return sum(joules.values())


class CounterProbe(Probe):
    """Cumulative energy counters (RAPL, NVML): energy is the sum of counter deltas.

    The thread reads every `interval_s` so that a counter wrapping (RAPL's `max_energy_range_uj`) more than
    once per window is still counted.
    """

    interval_s = 1.0

    def read(self) -> dict[str, float]:
        """Counter value per domain, in joules."""
        raise NotImplementedError  # pragma: no cover

    def wrap_j(self, domain: str) -> float | None:
        """Counter range in joules (it restarts from 0 past it), or None if it never wraps."""
        return None

    def _begin(self, t: float) -> None:
        self._last = self.read()
        self._acc = {d: 0.0 for d in self._last}
        self._reads = 1

    def _tick(self, t: float) -> None:
        now = self.read()
        for domain, value in now.items():
            delta = value - self._last[domain]
            if delta < 0:
                wrap = self.wrap_j(domain)
                if wrap is None:
                    raise RuntimeError(f"{self.name} counter {domain} went backwards ({self._last[domain]} -> {value} J)")
                delta += wrap
            self._acc[domain] += delta
        self._last = now
        self._reads += 1

    def _end(self, t: float) -> Reading:
        self._tick(t)
        joules = dict(self._acc)
        return Reading(self.name, t - self._t0, joules, self.total(joules), self._reads)


class SampledProbe(Probe):
    """Instantaneous power sensors (INA3221 rails, battery current x voltage): the thread samples power and
    the window's energy is its trapezoid integral, with samples taken at both window edges."""

    def read_power(self) -> dict[str, float]:
        """Power per domain, in watts, now."""
        raise NotImplementedError  # pragma: no cover

    def _begin(self, t: float) -> None:
        self._samples = [(t, self.read_power())]

    def _tick(self, t: float) -> None:
        self._samples.append((t, self.read_power()))

    def _end(self, t: float) -> Reading:
        self._tick(t)
        joules = {d: 0.0 for d in self._samples[0][1]}
        for (ta, pa), (tb, pb) in zip(self._samples, self._samples[1:]):
            for d in joules:
                joules[d] += 0.5 * (pa[d] + pb[d]) * (tb - ta)
        return Reading(self.name, t - self._t0, joules, self.total(joules), len(self._samples))


def energy_report(probe: Probe, idle: Reading, loop: Reading, iterations: int) -> dict[str, Any]:
    """Energy per inference = (E_loop - P_idle * t_loop) / iterations, per domain and for the probe's total.

    `per_inference_mj` is None (with `reason`) when the loop drew no more than idle: the model's energy is
    then below what this probe can resolve, and a number would be noise.
    """
    idle_w = idle.watts
    loop_w = loop.watts
    net_j = loop.total_j - idle_w * loop.seconds
    warnings = list(idle.warnings + loop.warnings)
    if loop.seconds < probe.resolution_s * 10:
        warnings.append(f"timed loop lasted {loop.seconds:.3f} s, under 10x the {probe.name} probe's "
                        f"{probe.resolution_s} s resolution: raise iterations for a steadier figure")
    domains = {}
    for d, e in loop.joules.items():
        d_idle = idle.joules.get(d, 0.0) / idle.seconds if idle.seconds > 0 else 0.0
        d_net = e - d_idle * loop.seconds
        domains[d] = {"idle_w": round(d_idle, 4), "loop_w": round(e / loop.seconds, 4) if loop.seconds else None,
                      "per_inference_mj": round(d_net / iterations * 1e3, 6) if d_net > 0 else None}
    report: dict[str, Any] = {
        "probe": probe.name,
        "scope": probe.scope(),
        "idle_w": round(idle_w, 4),
        "idle_s": round(idle.seconds, 3),
        "loop_w": round(loop_w, 4),
        "loop_s": round(loop.seconds, 4),
        "loop_j": round(loop.total_j, 6),
        "iterations": iterations,
        "per_inference_mj": round(net_j / iterations * 1e3, 6) if net_j > 0 else None,
        "gross_per_inference_mj": round(loop.total_j / iterations * 1e3, 6),
        "domains": domains,
        "warnings": warnings,
    }
    if net_j <= 0:
        report["reason"] = (f"loop power {loop_w:.3f} W was not above idle {idle_w:.3f} W: the model's energy is "
                            f"below what {probe.name} resolves here; raise iterations or use a larger model")
    return report
