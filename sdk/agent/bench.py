"""The measurement: load a bundle with its runtime, check parity against its reference, time it, read its
memory and energy. torch-free.

`run` measures in the calling process (quick host checks); `run_isolated` runs the same measurement in a
fresh process (forked by `python -m sdk.agent.worker --launcher`) with a timeout, so a runtime that hangs
or crashes fails that one benchmark with a clear error, and peak memory is that process's own.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import backends
from sdk.agent import conditions, power
from sdk.agent.spec import RunSpec
from sdk.agent.stats import latency_stats, median_ci
from sdk.artifact import load_artifact
from sdk.errors import AgentError
from sdk.parity import compare

__all__ = ["DEFAULT_TOLERANCE", "BenchmarkFailed", "latency_stats", "measure_energy", "run", "run_isolated",
           "soak_check"]

DEFAULT_TOLERANCE = {"min_cosine": 0.9999}
#: coefficient of variation above which a result carries a "noisy" warning
NOISY_CV = 0.10
#: how often a running benchmark checks whether it was cancelled
CANCEL_POLL_S = 0.1
#: the folder that holds the `sdk` and `backends` packages, put on the child's PYTHONPATH
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class BenchmarkFailed(AgentError):
    """A benchmark's child process crashed, timed out or raised; `kind` is 'crash', 'timeout' or 'error'."""

    def __init__(self, message: str, *, kind: str, phase: str | None, log_tail: str = ""):
        self.kind, self.phase, self.log_tail = kind, phase, log_tail
        super().__init__(message)


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (ru_maxrss is KiB on Linux, bytes on macOS). The kernel's
    counters are batched per thread, so it is held to at least the resident set now."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
    return max(peak_mb, rss_mb() or 0.0)


def rss_mb() -> float | None:
    """Resident set now, or None where it cannot be read without psutil."""
    try:
        import psutil
    except ImportError:
        statm = Path("/proc/self/statm")
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20) if statm.exists() else None
    return psutil.Process().memory_info().rss / (1 << 20)


def _window(probes: Sequence[power.Probe], body: Callable[[], Any]) -> tuple[Any, list[power.Reading]]:
    """Run `body` with every probe sampling; a probe that fails to start raises ProbeError before `body` runs."""
    started: list[power.Probe] = []
    try:
        for p in probes:
            p.start()
            started.append(p)
        out = body()
    except BaseException:
        for p in started:
            p.abort()
        raise
    readings = []
    for i, p in enumerate(probes):
        try:
            readings.append(p.stop())
        except power.ProbeError:
            for q in probes[i + 1:]:
                q.abort()
            raise
    return out, readings


def measure_energy(probes: Sequence[power.Probe], idle_s: float, workload: Callable[[], int]) -> tuple[dict | None, str | None]:
    """Sample idle power for `idle_s`, then run `workload` (returns its iteration count) inside an energy window.

    The workload always runs exactly once. Returns (report of the first probe, with the others under
    "other_probes", None), or (None, why not).
    """
    if idle_s <= 0:
        workload()
        return None, "idle_s=0: no idle baseline, so the model's energy cannot be separated from idle power"
    try:
        _, idle = _window(probes, lambda: time.sleep(idle_s))
    except power.ProbeError as exc:
        workload()
        return None, str(exc)
    ran = False

    def tracked() -> int:
        nonlocal ran
        ran = True
        return workload()

    try:
        iterations, loop = _window(probes, tracked)
    except power.ProbeError as exc:
        if not ran:
            workload()
        return None, str(exc)
    reports = [power.energy_report(p, i, r, iterations) for p, i, r in zip(probes, idle, loop)]
    head = reports[0]
    head["other_probes"] = reports[1:]
    return head, None


def bad_input_check(session: Any, inputs: Sequence[np.ndarray]) -> dict[str, Any]:
    """Feed the first input with its last dimension one too long: the session must refuse it with an error
    (a crash would fail the whole benchmark, which is the finding)."""
    wrong = [np.zeros(inputs[0].shape[:-1] + (inputs[0].shape[-1] + 1,), inputs[0].dtype), *inputs[1:]]
    try:
        session.run(wrong)
    except Exception as exc:
        return {"input_shape": list(wrong[0].shape), "rejected": True, "error": f"{type(exc).__name__}: {exc}"}
    return {"input_shape": list(wrong[0].shape), "rejected": False,
            "error": "the runtime accepted an input of the wrong shape without an error"}


def soak_check(session: Any, inputs: Sequence[np.ndarray], first: Sequence[np.ndarray],
               reference: Sequence[np.ndarray], tolerance: Mapping[str, Any], names: Sequence[str],
               rss_before_mb: float | None) -> dict[str, Any]:
    """After the timed loop: resident memory against its level before the loop (growth over many runs is a
    leak), and one more inference against the first one (drift) and against the reference (parity)."""
    rss_after_mb = rss_mb()
    last = session.run(inputs)
    drift = []
    for name, a, b in zip(names, first, last):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        same = a.shape == b.shape
        drift.append({"name": name, "max_abs_change": float(np.max(np.abs(b - a), initial=0.0)) if same else None,
                      "max_abs_first": float(np.max(np.abs(a), initial=0.0)),
                      **({} if same else {"error": f"shape {list(b.shape)} after the loop, {list(a.shape)} before"})})
    return {"rss_before_loop_mb": None if rss_before_mb is None else round(rss_before_mb, 2),
            "rss_after_loop_mb": None if rss_after_mb is None else round(rss_after_mb, 2),
            "drift": drift, "parity_after_loop": compare(last, reference, tolerance, names)}


def run(bundle_dir: str | Path, spec: RunSpec | None = None, *, probes: Sequence[power.Probe] | None = None,
        on_phase: Callable[[str], None] | None = None, **fields: Any) -> dict[str, Any]:
    """Load, check parity, and time a bundle with its manifest's runtime, in this process, as
    `RunSpec.of(spec, **fields)` says (e.g. `run(bundle, warmup=2, iterations=30)`).

    `probes=None` uses every power probe `power.detect()` finds (none when spec.energy is false); `probes=[]`
    skips energy. Returns {"ran": False, "reason": ...} when the runtime cannot run here.
    """
    spec = RunSpec.of(spec, **fields)
    phase = on_phase or (lambda _: None)
    phase("verify")
    artifact = load_artifact(bundle_dir)
    artifact.verify()
    model_entry = next((f for f in artifact.manifest["files"] if f["path"] == artifact.manifest["model_file"]), None)
    about = {"device": artifact.device, "format": artifact.format, "runtime": artifact.runtime,
             "model_file": artifact.manifest["model_file"], "model_sha256": model_entry and model_entry["sha256"]}
    backend = backends.get(artifact.runtime)
    reason = backend.unavailable_reason()
    if reason:
        return {"ran": False, "runtime": artifact.runtime, "reason": reason, "bundle": about}
    tolerance = dict(spec.tolerance or artifact.manifest.get("tolerance") or DEFAULT_TOLERANCE)
    inputs, reference = artifact.reference()
    if probes is None and spec.energy:
        found = power.detect()
        probes, no_probe = found.working, found.reason()
    else:
        probes, no_probe = probes or [], "energy measurement not requested"

    baseline_mb = rss_mb()
    phase("load")
    start = time.perf_counter()
    session = backend.load(artifact.model_path, artifact.manifest)
    load_ms = (time.perf_counter() - start) * 1e3
    phase("first-inference")
    start = time.perf_counter()
    outputs = session.run(inputs)
    first_ms = (time.perf_counter() - start) * 1e3
    first_outputs = [np.array(o, copy=True) for o in outputs]  # a runtime may reuse its output buffers
    names = [o["name"] for o in artifact.manifest["outputs"]]
    parity = compare(outputs, reference, tolerance, names)
    if spec.check_bad_input:
        phase("bad-input")
        bad_input = bad_input_check(session, inputs)

    phase("warmup")
    for _ in range(spec.warmup):
        session.run(inputs)
    samples: list[float] = []

    def timed_loop() -> int:
        timed_until_enough(lambda: session.run(inputs), samples, spec)
        return len(samples)

    rss_before_loop = rss_mb()
    before = conditions.snapshot()
    phase("timed-loop")
    if probes:
        energy, energy_reason = measure_energy(probes, spec.idle_s, timed_loop)
    else:
        timed_loop()
        energy, energy_reason = None, no_probe
    after = conditions.snapshot()
    phase("soak-check")
    soak = soak_check(session, inputs, first_outputs, reference, tolerance, names, rss_before_loop)
    stats = latency_stats(samples)
    extra = {"bad_input": bad_input} if spec.check_bad_input else {}
    return {
        "ran": True,
        "runtime": artifact.runtime,
        "ran_on": session.ran_on,
        "stand_in": getattr(session, "stand_in", None),
        "bundle": about,
        "host": {"hostname": platform.node(), "system": platform.system(), "machine": platform.machine()},
        "spec": spec.to_dict(),
        "warmup": spec.warmup,
        "iterations": stats["n"],
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "latency_ms": stats,
        "latency_samples_ms": [round(s, 5) for s in samples],  # the raw distribution, kept in the bundle's report
        "throughput_ips": 1e3 / stats["mean"] if stats["mean"] > 0 else None,
        "peak_rss_mb": round(peak_rss_mb(), 2),
        "baseline_rss_mb": round(baseline_mb, 2) if baseline_mb is not None else None,
        "rss_scope": "this process (includes the interpreter and everything the caller loaded)",
        "parity": parity,
        "energy": energy,
        "energy_reason": energy_reason,
        "soak": soak,
        "conditions": {"before": before, "after": after},
        "warnings": measurement_warnings(stats, spec, before, after),
        **extra,
    }


def timed_until_enough(infer: Callable[[], Any], samples: list[float], spec: RunSpec) -> None:
    """Time `infer` into `samples`: at least spec.iterations runs and spec.min_duration_s (LoadGen's minimum
    query count and duration); then, with spec.target_ci_pct, more runs in growing batches until the median's
    CI is within ±target_ci_pct % or spec.max_duration_s has passed since the loop began."""
    began = time.perf_counter()

    def batch(count: int) -> None:
        for _ in range(count):
            t = time.perf_counter()
            infer()
            samples.append((time.perf_counter() - t) * 1e3)

    batch(spec.iterations)
    while time.perf_counter() - began < spec.min_duration_s:
        batch(max(1, len(samples) // 4))
    if spec.target_ci_pct is None:
        return
    while time.perf_counter() - began < spec.max_duration_s:
        half = median_ci(samples)["half_width_pct"]
        if half is not None and half <= spec.target_ci_pct:
            return
        batch(max(1, len(samples) // 2))


def measurement_warnings(stats: Mapping[str, Any], spec: RunSpec, before: dict, after: dict) -> list[str]:
    """What a reader should know before trusting the latency: a wide CI, a high CV, a busy or heating machine."""
    out = conditions.busy_warnings(before, after)
    half = stats["median_ci"]["half_width_pct"]
    if spec.target_ci_pct is not None and (half is None or half > spec.target_ci_pct):
        out.append(f"the median's 95% CI is ±{half}% after {stats['n']} iterations, wider than the "
                   f"±{spec.target_ci_pct}% asked for: max_duration_s ({spec.max_duration_s:g} s) was reached")
    if stats["cv"] is not None and stats["cv"] > NOISY_CV:
        out.append(f"latency varies a lot between iterations (coefficient of variation {stats['cv']:.0%}); "
                   "compare medians with their CIs, not single runs")
    return out


class _Launcher:
    """The agent's handle on `python -m sdk.agent.worker --launcher`, which forks one process per benchmark.

    One benchmark at a time (a lock): concurrent benchmarks would skew each other's timings. Restarted
    when it died (it dies with the thread that started it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buf = b""

    def _ensure(self) -> subprocess.Popen:
        if self._proc is None or self._proc.poll() is not None:
            path = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))
            self._proc = subprocess.Popen([sys.executable, "-m", "sdk.agent.worker", "--launcher"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                          env=dict(os.environ, PYTHONPATH=path), cwd=tempfile.gettempdir())
            self._buf = b""
        return self._proc

    def close(self) -> None:
        """Stop the launcher (it exits at end of input); the next benchmark starts a new one."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.stdin.close()
                self._proc.wait(timeout=30)
            self._proc = None

    def _readline(self, proc: subprocess.Popen, deadline: float | None) -> str | None:
        """Next line from the launcher; None at the deadline; EOFError if it died."""
        fd = proc.stdout.fileno()
        while b"\n" not in self._buf:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError("benchmark launcher exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def run(self, spec_path: Path, timeout_s: float, cancel: threading.Event | None = None) -> int | str:
        """Exit code of the job process (negative: killed by that signal), or "timeout" / "cancelled" when the
        agent killed its process group (at `timeout_s`, or when `cancel` was set)."""
        with self._lock:
            proc = self._ensure()
            try:
                proc.stdin.write(f"{spec_path}\n".encode())
                proc.stdin.flush()
                started = self._readline(proc, time.monotonic() + 60)
                if started is None:
                    raise EOFError("benchmark launcher did not fork within 60 s")
                pid = int(started.split()[1])
                deadline = time.monotonic() + timeout_s
                while True:
                    now = time.monotonic()
                    stop = "timeout" if now >= deadline else "cancelled" if cancel is not None and cancel.is_set() else None
                    if stop is not None:
                        try:
                            os.killpg(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        self._readline(proc, None)
                        return stop
                    exited = self._readline(proc, min(deadline, now + CANCEL_POLL_S) if cancel is not None else deadline)
                    if exited is not None:
                        return int(exited.split()[2])
            except (EOFError, BrokenPipeError, OSError) as exc:
                proc.kill()
                proc.wait()
                raise BenchmarkFailed(f"the benchmark launcher process died ({exc}); it restarts with the next job",
                                      kind="crash", phase=None) from None


_launcher = _Launcher()


def run_isolated(bundle_dir: str | Path, spec: RunSpec | None = None, *, phone: Mapping[str, Any] | None = None,
                 cancel: threading.Event | None = None, **fields: Any) -> dict[str, Any]:
    """`run` in a fresh process (forked by the launcher) as `RunSpec.of(spec, **fields)` says; BenchmarkFailed
    when it crashes, hangs (spec.timeout_s), raises or is cancelled (`cancel` set: its process group is killed).

    `phone` = sdk.agent.adb.Phone.to_dict() runs the bundle on that phone instead.
    The process gets rlimits: spec.max_memory_mb of data (RLIMIT_DATA: heap and private mappings) when set,
    and CPU seconds (RLIMIT_CPU) of timeout_s on every core, so a runaway never takes the machine.
    Benchmarks run one at a time, even when called from several threads. The benchmark process sees the
    environment (e.g. OMP_NUM_THREADS) as it was at the first call, when the launcher started.
    """
    with tempfile.TemporaryDirectory(prefix="edge-sdk-bench-") as tmp:
        tmp = Path(tmp)
        run_spec = RunSpec.of(spec, **fields)
        timeout_s, max_memory_mb = run_spec.timeout_s, run_spec.max_memory_mb
        spec = {"bundle": str(Path(bundle_dir).resolve()), "run": run_spec.to_dict(),
                "target": dict(phone) if phone else {"kind": "local"},
                "result": str(tmp / "result.json"), "phase": str(tmp / "phase"), "log": str(tmp / "log"),
                "limits": {"memory_mb": max_memory_mb, "cpu_s": math.ceil(timeout_s * (os.cpu_count() or 1)) + 5}}
        (tmp / "spec.json").write_text(json.dumps(spec))
        rc = _launcher.run(tmp / "spec.json", timeout_s, cancel)
        phase = (tmp / "phase").read_text() if (tmp / "phase").exists() else "start-up"
        log_tail = (tmp / "log").read_bytes()[-2000:].decode(errors="replace").strip() if (tmp / "log").exists() else ""
        tail = f"\n--- benchmark process output (last lines) ---\n{log_tail}" if log_tail else ""
        memory = (f" The benchmark process may use at most {max_memory_mb:g} MiB (the agent's memory limit)."
                  if max_memory_mb else "")
        if rc == "cancelled":
            raise BenchmarkFailed(f"cancelled during {phase!r}; its process was killed", kind="cancelled", phase=phase)
        if rc == "timeout":
            raise BenchmarkFailed(f"benchmark timed out after {timeout_s:g} s during {phase!r}; its process was "
                                  f"killed. Raise timeout_s or lower iterations.{tail}",
                                  kind="timeout", phase=phase, log_tail=log_tail)
        if rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
            limit = {"SIGXCPU": f" It used its CPU-time limit ({spec['limits']['cpu_s']} s).",
                     "SIGKILL": memory}.get(name, "")
            raise BenchmarkFailed(f"the runtime crashed: benchmark process killed by {name} during {phase!r}. "
                                  f"The agent is fine; this bundle's runtime is not.{limit}{tail}",
                                  kind="crash", phase=phase, log_tail=log_tail)
        result_file = tmp / "result.json"
        if not result_file.exists():
            raise BenchmarkFailed(f"benchmark process exited with code {rc} during {phase!r} without a result."
                                  f"{memory}{tail}",
                                  kind="crash", phase=phase, log_tail=log_tail)
        outcome = json.loads(result_file.read_text())
        if not outcome["ok"]:
            err = outcome["error"]
            hint = memory if err["type"] == "MemoryError" or "alloc" in err["message"].lower() else ""
            raise BenchmarkFailed(f"benchmark failed during {phase!r}: {err['type']}: {err['message']}{hint}",
                                  kind="error", phase=phase, log_tail=err.get("traceback", ""))
        result = outcome["result"]
        if result.get("ran"):
            result["rss_scope"] = "benchmark process (interpreter + numpy + runtime + model)"
        return result
