"""The farm's job record on the head: one SQLite row per attempt (which device ran which job, and what came
back), so that a result can always be traced to the device and host that measured it.

Open it with any SQLite tool: `sqlite3 ~/.edge-sdk/farm/results.sqlite3 'select * from attempts'`.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_STORE", "JobRecord", "ResultStore"]

DEFAULT_STORE = Path("~/.edge-sdk/farm/results.sqlite3")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS attempts (
    job TEXT NOT NULL, attempt INTEGER NOT NULL, bundle TEXT NOT NULL, profile TEXT, device TEXT, host TEXT,
    status TEXT NOT NULL, error TEXT, result TEXT, started REAL NOT NULL, finished REAL,
    PRIMARY KEY (job, attempt)
)
"""


@dataclass(frozen=True)
class JobRecord:
    """One attempt of one job: `status` is running, done, failed (the job's own error), lost (the device or
    its host died mid-job; the job was tried again elsewhere) or expired (its client held the device past its
    lease without an answer)."""

    job: str
    attempt: int
    bundle: str
    profile: str | None
    device: str | None
    host: str | None
    status: str
    error: str | None
    result: dict[str, Any] | None
    started: float
    finished: float | None


class ResultStore:
    """SQLite file of attempts; safe to share between threads of one process."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def start(self, job: str, attempt: int, bundle: str, profile: str | None, device: str, host: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO attempts (job, attempt, bundle, profile, device, host, status, "
                             "started) VALUES (?, ?, ?, ?, ?, ?, 'running', ?)",
                             (job, attempt, bundle, profile, device, host, time.time()))

    def finish(self, job: str, attempt: int, status: str, *, result: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        with self._lock:
            self._db.execute("UPDATE attempts SET status = ?, result = ?, error = ?, finished = ? "
                             "WHERE job = ? AND attempt = ?",
                             (status, None if result is None else json.dumps(result, default=str), error,
                              time.time(), job, attempt))

    def records(self, job: str | None = None) -> list[JobRecord]:
        """Every attempt (of one job, or all), oldest first."""
        query = "SELECT * FROM attempts" + (" WHERE job = ?" if job else "") + " ORDER BY started, attempt"
        with self._lock:
            rows = self._db.execute(query, (job,) if job else ()).fetchall()
        return [JobRecord(*row[:8], None if row[8] is None else json.loads(row[8]), *row[9:]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
