"""Benchmark a bundle on an Android phone over adb, with a runner binary the user supplies (e.g. ExecuTorch's
`executor_runner`, built for arm64-v8a). The agent runs on the host the phone is plugged into.

Steps: push the model, the runner and the reference inputs as raw tensors; run `warmup + iterations`
executions in one process; parse the runner's log for per-iteration times; pull the outputs it wrote and
compare them with the reference; read the battery gauge around the run when the phone runs on battery.

Verified against a stand-in adb (tests/fake_adb.py) only, not on a real phone.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdk.agent.power import AndroidBatteryProbe, ProbeError, energy_report
from sdk.agent.spec import RunSpec
from sdk.artifact import load_artifact
from sdk.errors import DeviceError
from sdk.parity import compare

__all__ = ["Adb", "AdbError", "Phone", "devices", "parse_executor_runner", "run_on_phone"]

ITERATION = re.compile(r"Iteration (\d+) of (\d+): ([0-9.]+) ms")
TOTAL = re.compile(r"Model executed successfully (\d+) time\(s\) in ([0-9.]+) ms")
LOADED = re.compile(r"Model loaded in ([0-9.]+) ms")


class AdbError(DeviceError):
    """adb failed, the phone is gone, or the runner did not run."""


@dataclass(frozen=True)
class Phone:
    """A phone the agent drives: its serial, the adb command, and the runner binary on the agent host."""

    runner: str
    serial: str | None = None
    adb: tuple[str, ...] = ("adb",)
    runtimes: tuple[str, ...] = ("executorch",)
    workdir: str = "/data/local/tmp/edge-sdk"
    timeout_s: float = 600.0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "adb", **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Phone:
        fields = {k: v for k, v in data.items() if k != "kind"}
        for key in ("adb", "runtimes"):
            if key in fields:
                fields[key] = tuple([fields[key]] if isinstance(fields[key], str) else fields[key])
        return cls(**fields)


@dataclass
class Adb:
    """Thin wrapper over the adb command line (one serial)."""

    command: Sequence[str] = ("adb",)
    serial: str | None = None
    timeout_s: float = 600.0
    _prefix: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self._prefix = list(self.command) + (["-s", self.serial] if self.serial else [])

    def run(self, *args: str, timeout: float | None = None) -> str:
        argv = self._prefix + list(args)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout or self.timeout_s, check=False)
        except FileNotFoundError:
            raise AdbError(f"adb not found ({self.command[0]}): install Android platform-tools") from None
        except subprocess.TimeoutExpired:
            raise AdbError(f"`adb {' '.join(args)[:200]}` timed out after {timeout or self.timeout_s:g} s") from None
        if done.returncode != 0:
            raise AdbError(f"`adb {' '.join(args)[:200]}` failed (exit {done.returncode}): "
                           f"{(done.stderr or done.stdout).strip()[-800:]}")
        return done.stdout

    def shell(self, command: str) -> str:
        return self.run("shell", command)

    def push(self, local: str | Path, remote: str) -> None:
        self.run("push", str(local), remote)

    def pull(self, remote: str, local: str | Path) -> None:
        self.run("pull", remote, str(local))


def devices(command: Sequence[str] = ("adb",)) -> list[dict[str, str]]:
    """Attached phones from `adb devices -l`: serial, state ('device', 'unauthorized', ...) and properties."""
    out = Adb(command).run("devices", "-l", timeout=30)
    found = []
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            found.append({"serial": parts[0], "state": parts[1],
                          **dict(p.split(":", 1) for p in parts[2:] if ":" in p)})
    return found


def parse_executor_runner(log: str) -> dict[str, Any]:
    """Timings from executor_runner's log: per-iteration lines (newer runners), the total, the load time."""
    per_iter = [float(m.group(3)) for m in ITERATION.finditer(log)]
    total = TOTAL.search(log)
    loaded = LOADED.search(log)
    if total is None:
        raise AdbError("the runner did not report 'Model executed successfully N time(s) in T ms'; its output was:\n"
                       + log.strip()[-1500:])
    return {"executions": int(total.group(1)), "total_ms": float(total.group(2)), "per_iteration_ms": per_iter,
            "load_ms": float(loaded.group(1)) if loaded else None}


def run_on_phone(bundle_dir: str | Path, phone: Phone, spec: RunSpec | None = None, *,
                 on_phase: Callable[[str], None] | None = None, **fields: Any) -> dict[str, Any]:
    """Benchmark one bundle on the phone as `RunSpec.of(spec, **fields)` says (the runner runs a fixed count:
    min_duration_s and target_ci_pct do not apply); returns the same result layout as bench.run."""
    from sdk.agent.bench import DEFAULT_TOLERANCE, NOISY_CV, latency_stats

    run = RunSpec.of(spec, **fields)
    warmup, iterations, tolerance = run.warmup, run.iterations, run.tolerance
    idle_s = run.idle_s if run.energy else 0.0

    phase = on_phase or (lambda _: None)
    phase("verify")
    artifact = load_artifact(bundle_dir)
    artifact.verify()
    manifest = artifact.manifest
    if artifact.runtime not in phone.runtimes:
        raise AdbError(f"the phone's runner runs {', '.join(phone.runtimes)} bundles, not {artifact.runtime!r}")
    adb = Adb(phone.adb, phone.serial, phone.timeout_s)
    inputs, reference = artifact.reference()
    model_entry = next(f for f in manifest["files"] if f["path"] == manifest["model_file"])
    remote = f"{phone.workdir}/{model_entry['sha256'][:16]}"
    model_name = Path(manifest["model_file"]).name

    phase("push")
    adb.shell(f"rm -rf {shlex.quote(remote)} && mkdir -p {shlex.quote(remote)}")
    with tempfile.TemporaryDirectory() as tmp:
        for tensor, array in zip(manifest["inputs"], inputs):
            (Path(tmp) / f"{tensor['name']}.bin").write_bytes(np.ascontiguousarray(array).tobytes())
            adb.push(Path(tmp) / f"{tensor['name']}.bin", f"{remote}/{tensor['name']}.bin")
    adb.push(artifact.model_path, f"{remote}/{model_name}")
    adb.push(phone.runner, f"{remote}/runner")
    adb.shell(f"chmod 755 {shlex.quote(remote)}/runner")

    probe = AndroidBatteryProbe(adb)
    energy_reason = probe.unavailable_reason()
    idle = None
    if energy_reason is None and idle_s > 0:
        phase("idle-power")
        probe.start()
        time.sleep(idle_s)
        idle = probe.stop()
    elif energy_reason is None:
        energy_reason = "idle_s=0: no idle baseline, so the model's energy cannot be separated from idle power"

    total_runs = warmup + iterations
    args = [f"--model_path={model_name}", f"--num_executions={total_runs}",
            "--inputs=" + ",".join(f"{s['name']}.bin" for s in manifest["inputs"]), "--output_file=out"]
    phase("run")
    if idle is not None:
        probe.start()
    try:
        log = adb.shell(f"cd {shlex.quote(remote)} && ./runner {' '.join(args)} 2>&1")
    finally:
        loop = None
        if idle is not None:
            try:
                loop = probe.stop()
            except ProbeError as exc:
                energy_reason = str(exc)
    timing = parse_executor_runner(log)

    phase("pull-outputs")
    with tempfile.TemporaryDirectory() as tmp:
        outputs = []
        for i, tensor in enumerate(manifest["outputs"]):
            adb.pull(f"{remote}/out-{i}.bin", Path(tmp) / f"out-{i}.bin")
            raw = (Path(tmp) / f"out-{i}.bin").read_bytes()
            outputs.append(np.frombuffer(raw, dtype=np.dtype(tensor["dtype"])).reshape(tensor["shape"]))
    model = adb.shell("getprop ro.product.model").strip()
    release = adb.shell("getprop ro.build.version.release").strip()
    adb.shell(f"rm -rf {shlex.quote(remote)}")

    per_iter = timing["per_iteration_ms"]
    if len(per_iter) == total_runs:
        first_ms, samples = per_iter[0], per_iter[warmup:]
        stats = latency_stats(samples)
    else:  # older executor_runner: only the total, so only the mean is known
        first_ms = None
        mean = timing["total_ms"] / timing["executions"]
        stats = {"p50": None, "p90": None, "p99": None, "mean": mean, "std": None, "min": None, "max": None,
                 "n": timing["executions"], "cv": None, "median_ci": None, "note": "this runner prints only a total time; percentiles need a runner "
                                                   "that logs 'Iteration i of N' (ExecuTorch 1.x or newer)"}
    energy = None
    if loop is not None and energy_reason is None:
        energy = energy_report(probe, idle, loop, total_runs)
        energy["warnings"].append("the energy window spans the runner's whole process (start-up and model load "
                                  f"included) over {total_runs} executions, so it overstates energy per inference")
        energy["other_probes"] = []
    tolerance = dict(tolerance or manifest.get("tolerance") or DEFAULT_TOLERANCE)
    return {
        "ran": True,
        "runtime": artifact.runtime,
        "ran_on": f"{Path(phone.runner).name} on {model or 'Android phone'} (Android {release or '?'}, serial {phone.serial or 'default'})",
        "bundle": {"device": artifact.device, "format": artifact.format, "runtime": artifact.runtime,
                   "model_file": manifest["model_file"], "model_sha256": model_entry["sha256"]},
        "host": {"phone": model, "android": release, "serial": phone.serial},
        "warmup": warmup,
        "iterations": iterations,
        "load_ms": timing["load_ms"],
        "first_inference_ms": first_ms,
        "latency_ms": stats,
        "throughput_ips": 1e3 / stats["mean"] if stats["mean"] else None,
        "peak_rss_mb": None,
        "peak_rss_reason": "not measured on phones: the runner's process is not observable from adb after it exits",
        "parity": compare(outputs, reference, tolerance, [o["name"] for o in manifest["outputs"]]),
        "energy": energy,
        "energy_reason": energy_reason,
        "spec": run.to_dict(),
        "conditions": {"unavailable": "the phone's CPU governor, frequency and thermal zones are not read over adb "
                                      "(the host's are not the phone's)"},
        "warnings": [] if stats["cv"] is None or stats["cv"] <= NOISY_CV else
                    [f"latency varies a lot between iterations (coefficient of variation {stats['cv']:.0%})"],
    }
