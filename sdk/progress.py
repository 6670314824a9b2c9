"""Progress of a long export: the stage, the time so far, and an estimate from this machine's earlier exports.

`sdk.export(..., progress=True)` shows it on stderr (one updating line on a terminal, a line per stage
otherwise); the CLI shows it in its spinner when interactive. The stages are the SDK's own log records (logger
"sdk"), which are not also passed to the root logger meanwhile, so no `INFO:sdk:` line appears beside it. The
estimate is the median total of the last exports of the same device and recipe on this machine, kept in
`$XDG_CACHE_HOME/edge-sdk/timings.json` (only written when progress is on); the first time there is none, and it
says so.
"""
from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["Progress", "with_progress", "history_file", "quiet_third_party_bars"]

KEEP_RUNS = 5
#: modules whose FutureWarning/DeprecationWarning an export hides (copyreg: torch's pytree pickling goes through it)
TOOLCHAIN_MODULES = r"(torch|torchao|executorch|onnxscript|onnx|nncf|openvino|coremltools|litert_torch|copyreg)(\.|$)"


def history_file() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-sdk" / "timings.json"


def _read_history() -> dict[str, list[float]]:
    try:
        data = json.loads(history_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class Progress(logging.Handler):
    """Mirror the "sdk" logger's records as `<stage> · <elapsed> · <estimate>` lines to `show`.

    A context manager: attached to the logger on enter, detached (and the run's time recorded with `done`) on exit.
    """

    def __init__(self, key: str, show: Callable[[str], None] | None = None):
        super().__init__(logging.INFO)
        self.key, self.started = key, time.perf_counter()
        self.show = show or self._to_stderr
        runs = _read_history().get(key, [])
        self.estimate = statistics.median(runs) if runs else None
        self.runs = len(runs)
        self._logger = logging.getLogger("sdk")
        self._saved: tuple[int, bool] | None = None

    def line(self, message: str) -> str:
        elapsed = time.perf_counter() - self.started
        if self.estimate is None:
            guess = "no estimate yet (first export of this device and recipe here)"
        else:
            left = self.estimate - elapsed
            guess = (f"~{left:.0f} s left" if left > 1 else "taking longer than usual") + \
                    f" (usually {self.estimate:.0f} s here, {self.runs} run{'s' if self.runs != 1 else ''})"
        return f"{message} · {elapsed:.0f} s · {guess}"

    def emit(self, record: logging.LogRecord) -> None:
        self.show(self.line(record.getMessage()))

    @staticmethod
    def _to_stderr(text: str) -> None:
        if sys.stderr.isatty():
            sys.stderr.write("\r\033[K" + text[:max(20, os.get_terminal_size(2).columns - 1)])
        else:
            sys.stderr.write(f"edge-sdk: {text}\n")
        sys.stderr.flush()

    def done(self, seconds: float) -> None:
        """Record a finished export's total time for the next estimate."""
        data = _read_history()
        data[self.key] = ([*data.get(self.key, []), round(seconds, 2)])[-KEEP_RUNS:]
        path = history_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=1) + "\n")
        except OSError:  # a read-only home only costs the next estimate
            pass

    def __enter__(self) -> "Progress":
        self._saved = (self._logger.level, self._logger.propagate)
        self._logger.setLevel(logging.INFO)
        self._logger.propagate = False
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._saved[0])
        self._logger.propagate = self._saved[1]
        if self.show == self._to_stderr and sys.stderr.isatty():
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def key_for(device: Any, recipe: Any) -> str:
    """The history key: device id (aliases resolved) and the recipe as given."""
    from sdk import devices

    try:
        device_id = devices.get(device).id
    except Exception:  # the export itself reports a bad device
        device_id = str(device)
    if recipe is None or isinstance(recipe, str):
        text = recipe or "default"
    else:
        text = ",".join(map(str, recipe)) if isinstance(recipe, (list, tuple)) else str(recipe)
    return f"{device_id}|{text}"


def with_progress(export: Callable[..., Any]) -> Callable[..., Any]:
    """Give `export` a `progress=False` keyword (True shows the stages on stderr and records the run's time), and
    hide the toolchains' own FutureWarning/DeprecationWarning notices while it runs."""
    signature = inspect.signature(export)

    @functools.wraps(export)
    def wrapper(*args: Any, progress: bool = False, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            # the toolchains' deprecation notices concern their own internals, not the caller's code
            for category in (FutureWarning, DeprecationWarning):
                warnings.filterwarnings("ignore", category=category, module=TOOLCHAIN_MODULES)
            if not progress:
                return export(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            with Progress(key_for(bound.arguments.get("device"), bound.arguments.get("recipe"))) as tracker:
                result = export(*args, **kwargs)
        tracker.done(result.report["timings_s"]["total_s"])
        return result

    params = list(signature.parameters.values())
    extra = inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool")
    wrapper.__signature__ = signature.replace(parameters=[*params, extra])
    return wrapper


def quiet_third_party_bars() -> None:
    """Point rich's global console (NNCF's progress bars use it) at stderr, which the CLI sends to a log file."""
    try:
        import rich
    except ImportError:  # pragma: no cover - rich is a base dependency
        return
    rich.reconfigure(stderr=True)
