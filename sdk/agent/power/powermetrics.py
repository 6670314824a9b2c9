"""macOS: `powermetrics --samplers cpu_power,gpu_power,ane_power -f plist`, which streams one plist per
sampling interval (NUL-separated) with the CPU/GPU/ANE energy of that interval (`processor.cpu_energy`,
`gpu_energy`, `ane_energy` in mJ; `combined_power` in mW) and its length `elapsed_ns`. Needs root.
"""
from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from sdk.agent.power.base import Clock, Probe, ProbeError, Reading

__all__ = ["PowermetricsProbe", "parse_samples", "sample_energy", "window_reading"]

SAMPLERS = "cpu_power,gpu_power,ane_power"
DOMAINS = ("cpu", "gpu", "ane")


def parse_samples(stream: bytes) -> list[dict[str, Any]]:
    """Every complete plist document in powermetrics' NUL-separated output (a trailing partial one is dropped)."""
    docs = stream.split(b"</plist>")[:-1]
    return [plistlib.loads(doc.strip(b"\x00\r\n\t ") + b"</plist>") for doc in docs]


def sample_energy(sample: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """(seconds, joules per domain) of one sample; energy fields when present, else power x elapsed."""
    seconds = sample["elapsed_ns"] / 1e9
    proc = sample.get("processor", {})
    joules = {}
    for d in DOMAINS:
        if f"{d}_energy" in proc:
            joules[d] = proc[f"{d}_energy"] / 1e3
        elif f"{d}_power" in proc:
            joules[d] = proc[f"{d}_power"] / 1e3 * seconds
        elif d == "gpu" and "gpu_energy" in sample.get("gpu", {}):
            joules[d] = sample["gpu"]["gpu_energy"] / 1e3
    if not joules and "combined_power" in proc:
        joules["combined"] = proc["combined_power"] / 1e3 * seconds
    return seconds, joules


def window_reading(stamped: Sequence[tuple[float, bytes]], t0: float, t1: float, stderr: bytes = b"") -> Reading:
    """Energy of the window [t0, t1] from samples stamped with the time each one ended (its arrival): a sample
    counts by the fraction of its `elapsed_ns` that lies inside the window."""
    joules: dict[str, float] = {}
    covered, used = 0.0, 0
    for arrived, doc in stamped:
        seconds, sample_j = sample_energy(plistlib.loads(doc))
        start, end = arrived - seconds, arrived
        overlap = min(end, t1) - max(start, t0)
        if overlap <= 0 or seconds <= 0:
            continue
        weight = overlap / seconds
        for d, e in sample_j.items():
            joules[d] = joules.get(d, 0.0) + e * weight
        covered += overlap
        used += 1
    window = t1 - t0
    if not used:
        detail = stderr.decode(errors="replace").strip()[-300:]
        raise ProbeError(f"powermetrics gave no sample covering the {window:.3f} s window"
                         + (f": {detail}" if detail else ""))
    warnings = []
    if covered < 0.9 * window:
        # Scale to the window only from measured samples, and say so.
        scale = window / covered
        joules = {d: e * scale for d, e in joules.items()}
        warnings.append(f"powermetrics samples covered {covered:.3f} s of the {window:.3f} s window; "
                        "energy scaled from the covered part")
    return Reading(PowermetricsProbe.name, window, joules, sum(joules.values()), used, tuple(warnings))


class PowermetricsProbe(Probe):
    """Runs powermetrics for the window and weights each sample by how much of it overlaps the window.

    `command` replaces `["powermetrics"]` (e.g. `["sudo", "-n", "powermetrics"]` with a sudoers rule).
    """

    name = "powermetrics"
    interval_s = 0.1

    def __init__(self, command: Sequence[str] | None = None, interval_ms: int = 100, clock: Clock = time.perf_counter):
        super().__init__(clock)
        self.command = list(command) if command else None
        self.interval_ms = interval_ms
        self.resolution_s = interval_ms / 1e3

    def unavailable_reason(self) -> str | None:
        if self.command:
            return None if shutil.which(self.command[0]) else f"{self.command[0]} not found"
        if sys.platform != "darwin":
            return "powermetrics is macOS only"
        if not shutil.which("powermetrics"):
            return "powermetrics not found (it ships with macOS in /usr/bin)"
        if os.geteuid() != 0:
            return ("powermetrics needs root: run the agent with sudo, or allow `sudo -n /usr/bin/powermetrics` "
                    "in sudoers and start the agent with that command")
        return None

    def scope(self) -> str:
        return "CPU + GPU + ANE (SoC power rails, Apple silicon)"

    def start(self) -> None:
        """Start powermetrics and open the window once its first sample arrived (it is then running)."""
        argv = (self.command or ["powermetrics"]) + ["--samplers", SAMPLERS, "-f", "plist", "-i", str(self.interval_ms)]
        self._chunks: list[tuple[float, bytes]] = []
        self._first = threading.Event()
        try:
            self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise ProbeError(f"cannot start {argv[0]}: {exc}") from exc
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._first.wait(timeout=max(5.0, 20 * self.resolution_s))
        self._t0 = self.clock()

    def _read(self) -> None:
        """Stamp each sample with the time its closing tag arrived (= the end of its interval)."""
        buf = b""
        while data := self._proc.stdout.read1(65536):
            buf += data
            while (end := buf.find(b"</plist>")) >= 0:
                doc, buf = buf[:end + len(b"</plist>")], buf[end + len(b"</plist>"):]
                self._chunks.append((self.clock(), doc.strip(b"\x00\r\n\t ")))
                self._first.set()
        self._first.set()

    def abort(self) -> None:
        if getattr(self, "_proc", None) is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def sample(self) -> None:
        raise ProbeError("powermetrics streams its own samples, one every interval_ms: there is none to take between them")

    def stop(self) -> Reading:
        t1 = self.clock()
        deadline = time.perf_counter() + 3 * self.resolution_s + 1.0
        while time.perf_counter() < deadline and not any(t >= t1 for t, _ in self._chunks):
            if self._proc.poll() is not None:
                break
            time.sleep(self.resolution_s / 4)  # wait for the sample that covers the window's end
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(timeout=5)
        return window_reading(self._chunks, self._t0, t1, self._proc.stderr.read())
