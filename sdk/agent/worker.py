"""The benchmark child processes.

`python -m sdk.agent.worker --launcher` is a small long-lived process that imports numpy and the
measurement code once, then forks one fresh process per benchmark (a new interpreter per job would spend
most of a short benchmark importing numpy). Protocol on its stdin/stdout, one line each:
    agent -> launcher:  <path of the job's spec.json>
    launcher -> agent:  started <pid>      then, when that process ends:   exited <pid> <exit code or -signal>
Each job process writes {"ok": ..., "result" | "error": ...} to the spec's result file, its current phase to
the phase file, and its stdout/stderr (runtime logs) to the log file. It gets SIGKILL when the launcher dies,
and the launcher when the agent thread that started it dies, so a killed agent leaves no benchmark running.
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILL when the parent (thread) dies. Elsewhere the launcher exits on stdin EOF instead."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, default=str))
    os.replace(tmp, path)


def run_job(spec: dict[str, Any]) -> int:
    """Measure one bundle as the spec says; the outcome goes to the result file, never raised."""
    phase_file = Path(spec["phase"])
    try:
        from sdk.agent.spec import RunSpec

        target, run = spec["target"], RunSpec.from_dict(spec["run"])
        if target["kind"] == "adb":
            from sdk.agent import adb

            result = adb.run_on_phone(spec["bundle"], adb.Phone.from_dict(target), run, on_phase=phase_file.write_text)
        else:
            from sdk.agent import bench

            result = bench.run(spec["bundle"], run, on_phase=phase_file.write_text)
    except Exception as exc:
        _write(Path(spec["result"]), {"ok": False, "error": {"type": type(exc).__name__, "message": str(exc),
                                                               "traceback": traceback.format_exc()[-4000:]}})
        return 1
    _write(Path(spec["result"]), {"ok": True, "result": result})
    return 0


def _limit(spec: dict[str, Any]) -> None:
    """rlimits for this benchmark: data memory (heap and private mappings; address-space limits would break
    runtimes that reserve large virtual ranges) and CPU seconds. Soft limits only lower, never raise."""
    import resource

    limits = spec.get("limits") or {}
    for name, value in ((resource.RLIMIT_DATA, limits.get("memory_mb") and int(limits["memory_mb"] * (1 << 20))),
                        (resource.RLIMIT_CPU, limits.get("cpu_s"))):
        if value:
            _, hard = resource.getrlimit(name)
            value = min(value, hard) if hard != resource.RLIM_INFINITY else value
            resource.setrlimit(name, (value, hard))


def _child(spec_path: str, launcher_pid: int) -> int:
    os.setsid()  # its own process group: a timeout kills the runtime's helpers too
    os.umask(0o077)
    spec = json.loads(Path(spec_path).read_text())
    _limit(spec)
    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    _die_with_parent(launcher_pid)
    return run_job(spec)


def launcher() -> int:
    from sdk.agent import bench  # noqa: F401  (numpy, backends registry, power probes: imported once, shared by forks)

    me = os.getpid()
    for line in sys.stdin:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                code = _child(line.strip(), me)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"started {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exited {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--launcher"]:
        sys.exit("usage: python -m sdk.agent.worker --launcher  (started by sdk.agent.bench.run_isolated)")
    _die_with_parent(os.getppid())
    sys.exit(launcher())
