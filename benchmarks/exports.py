"""Making the artifacts: each one in a worker process, two at a time, before anything is timed.

Exporting is mostly single-threaded Python (tracing, lowering, calibration), so two workers keep both cores of
a small machine busy; nothing is timed while they run. Every artifact is cached under a hash of the code and
inputs that made it (`Cache`), so a re-run re-exports only what changed.
"""
from __future__ import annotations

import hashlib
import shutil
import time
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]


def source_hash(*parts: str | Path) -> str:
    """Hash of strings and of files/folders (their *.py, read relative to the repo): changes with the code."""
    digest = hashlib.sha256()
    for part in parts:
        path = ROOT / part if isinstance(part, Path) else None
        if path is not None and path.is_dir():
            for f in sorted(path.rglob("*.py")):
                digest.update(f.read_bytes())
        elif path is not None and path.is_file():
            digest.update(path.read_bytes())
        else:
            digest.update(str(part).encode())
    return digest.hexdigest()[:16]


class Cache:
    """Folders under `root`, each reused while its key (a source_hash) is unchanged."""

    def __init__(self, root: Path):
        self.root = root

    def get(self, name: str, key: str, make: Callable[[Path], Any]) -> tuple[Path, bool]:
        """(the folder for `name`, whether it was reused); made with `make(folder)` unless current."""
        folder = self.root / name
        stamp = folder / "cache-key"
        if stamp.exists() and stamp.read_text() == key:
            return folder, True
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            make(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        stamp.write_text(key)
        return folder, False


def error_text(exc: BaseException) -> str:
    """Type, first line and (for non-SDK errors) the innermost frame: enough to tell where it broke."""
    from sdk.core.errors import SdkError

    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and not isinstance(exc, SdkError):
        where = frames[-1]
        text += f" (at {'/'.join(Path(where.filename).parts[-2:])}:{where.lineno})"
    return text


@dataclass(frozen=True)
class Task:
    """One artifact to make: the runtime's default path (`precision` None) or an SDK export."""

    model: str
    target: str
    label: str
    inputs_file: Path  # torch.save'd {"model", "example_inputs", "calibration"} (or a student's file)
    folder: str  # cache name
    key: str
    precision: str | None = None
    held_out: int = 2

    def run(self, cache_root: Path, deadline: float) -> dict[str, Any]:
        """{"status": "ok", "cached", "export_s"} or {"status": "unsupported: ..." / "failed: ..." / "skipped: ..."}."""
        from sdk.core.errors import UnsupportedRecipeError

        if time.time() > deadline:
            return {"status": "skipped: over the time budget"}
        start = time.perf_counter()
        try:
            _, cached = Cache(cache_root).get(self.folder, self.key, self._make)
        except UnsupportedRecipeError as exc:
            return {"status": f"unsupported: {error_text(exc)}"}
        except Exception as exc:
            return {"status": f"failed: export: {error_text(exc)}"}
        return {"status": "ok", "cached": cached, "export_s": time.perf_counter() - start}

    def _make(self, folder: Path) -> None:
        data = _load(self.inputs_file)
        if self.precision is None:
            from benchmarks import default_path
            import sdk

            default_path.build(sdk.devices.get(self.target).format, data["model"], data["example_inputs"], folder)
            return
        import sdk

        quantizing = self.precision != "fp32"
        calib = data["calibration"]
        sdk.export(data["model"], self.target, data["example_inputs"], recipe=[self.precision], output_dir=folder,
                   validate=False, calibration=calib[:-self.held_out] if quantizing else None,
                   eval_data=calib[-self.held_out:] if quantizing else None)


@lru_cache(maxsize=4)
def _load(path: Path) -> dict[str, Any]:
    import torch

    return torch.load(path, weights_only=False)


def init_worker(log: str | None = None) -> None:
    """One torch thread per worker (two workers share the two cores); the toolchains' own output (NNCF progress
    bars, cpuinfo warnings, exporter chatter) goes to `log` rather than between the benchmark's lines."""
    import os

    import torch

    torch.set_num_threads(1)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


def run_task(task: Task, cache_root: Path, deadline: float) -> dict[str, Any]:
    return task.run(cache_root, deadline)
