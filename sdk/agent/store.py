"""The agent's job table in SQLite (`<data_dir>/jobs.sqlite3`): a restart loses nothing.

Jobs move queued -> running -> done | failed. On start-up, a job still 'running' belonged to an agent
that died mid-benchmark: it is marked failed("agent restarted") and never re-run silently.
"""
from __future__ import annotations

import datetime as _dt
import json
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

__all__ = ["STATUSES", "JobStore"]

STATUSES = ("queued", "running", "done", "failed")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id       TEXT PRIMARY KEY,
    seq      INTEGER NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    spec     TEXT NOT NULL,
    bundle   TEXT NOT NULL,
    result   TEXT,
    error    TEXT,
    created  TEXT NOT NULL,
    started  TEXT,
    finished TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""
COLUMNS = "id, status, spec, bundle, result, error, created, started, finished"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class JobStore:
    """Thread-safe (one connection, one lock); every write is its own committed transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a finished result must survive a power cut
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def recover(self) -> list[str]:
        """Mark jobs left 'running' by a dead agent as failed; return the ids still queued, oldest first."""
        with self._lock:
            self._db.execute("UPDATE jobs SET status='failed', error=?, finished=? WHERE status='running'",
                             ("agent restarted while this job was running; its result was lost, submit it again", _now()))
            rows = self._db.execute("SELECT id FROM jobs WHERE status='queued' ORDER BY seq").fetchall()
        return [r[0] for r in rows]

    def add(self, spec: dict[str, Any], bundle: dict[str, Any]) -> str:
        job_id = uuid.uuid4().hex
        with self._lock:
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute("INSERT INTO jobs (id, seq, status, spec, bundle, created) VALUES (?, ?, 'queued', ?, ?, ?)",
                             (job_id, seq, json.dumps(spec), json.dumps(bundle), _now()))
        return job_id

    def start(self, job_id: str) -> None:
        self._set(job_id, "running", started=_now())

    def finish(self, job_id: str, result: dict[str, Any]) -> None:
        self._set(job_id, "done", result=json.dumps(result, default=str), finished=_now())

    def fail(self, job_id: str, error: str) -> None:
        self._set(job_id, "failed", error=error, finished=_now())

    def _set(self, job_id: str, status: str, **fields: str) -> None:
        cols = ", ".join(f"{k}=?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET status=?, {cols} WHERE id=?", (status, *fields.values(), job_id))

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                return None
            job = self._row(row)
            if job["status"] == "queued":
                job["queue_position"] = self._db.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status='queued' AND seq < (SELECT seq FROM jobs WHERE id=?)",
                    (job_id,)).fetchone()[0]
        return job

    def list(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first, without results (fetch one job for its result)."""
        query = f"SELECT {COLUMNS} FROM jobs" + (" WHERE status=?" if status else "") + " ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, ((status,) if status else ()) + (limit,)).fetchall()
        jobs = [self._row(r) for r in rows]
        for job in jobs:
            del job["result"]
        return jobs

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | dict(rows)

    @staticmethod
    def _row(row: tuple) -> dict[str, Any]:
        job_id, status, spec, bundle, result, error, created, started, finished = row
        return {"id": job_id, "status": status, "spec": json.loads(spec), "bundle": json.loads(bundle),
                "result": json.loads(result) if result else None, "error": error,
                "created": created, "started": started, "finished": finished}
