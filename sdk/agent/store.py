"""The agent's job table in SQLite (`<data_dir>/jobs.sqlite3`): a restart loses nothing.

Jobs move queued -> running -> done | failed | cancelled (a queued job may be cancelled too). On start-up,
a job still 'running' belonged to an agent that died mid-benchmark: it is marked failed("agent restarted")
and never re-run silently. The file is created 0600: results and specs are nobody else's business.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

__all__ = ["STATUSES", "JobStore"]

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id       TEXT PRIMARY KEY,
    seq      INTEGER NOT NULL,
    status   TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    spec     TEXT NOT NULL,
    bundle   TEXT NOT NULL,
    result   TEXT,
    error    TEXT,
    created  TEXT NOT NULL,
    started  TEXT,
    finished TEXT,
    idempotency_key TEXT UNIQUE,
    fingerprint     TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
"""
#: a table from before 'cancelled' and idempotency keys is copied into the new one once (SQLite cannot alter a CHECK)
MIGRATE = """
ALTER TABLE jobs RENAME TO jobs_v1;
{schema}
INSERT INTO jobs (id, seq, status, spec, bundle, result, error, created, started, finished)
    SELECT id, seq, status, spec, bundle, result, error, created, started, finished FROM jobs_v1;
DROP TABLE jobs_v1;
"""
COLUMNS = "id, status, spec, bundle, result, error, created, started, finished"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class JobStore:
    """Thread-safe (one connection, one lock); every write is its own committed transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # SQLite gives its -wal/-shm files these bits
        os.chmod(self.path, 0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a finished result must survive a power cut
        old = self._db.execute("SELECT sql FROM sqlite_master WHERE name='jobs'").fetchone()
        if old and "cancelled" not in old[0]:
            self._db.executescript("BEGIN;" + MIGRATE.format(schema=SCHEMA.split("CREATE INDEX")[0]) + "COMMIT;")
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

    def add(self, spec: dict[str, Any], bundle: dict[str, Any], *, max_queued: int | None = None,
            idempotency_key: str | None = None, fingerprint: str | None = None) -> str | None:
        """Queue a job; None when `max_queued` jobs are already queued (checked in the same transaction)."""
        job_id = uuid.uuid4().hex
        with self._lock:
            if max_queued is not None and self._count("queued") >= max_queued:
                return None
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute("INSERT INTO jobs (id, seq, status, spec, bundle, created, idempotency_key, fingerprint) "
                             "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
                             (job_id, seq, json.dumps(spec), json.dumps(bundle), _now(), idempotency_key, fingerprint))
        return job_id

    def by_key(self, idempotency_key: str) -> tuple[str, str | None] | None:
        """(job id, request fingerprint) of the job submitted with this Idempotency-Key, if any."""
        with self._lock:
            row = self._db.execute("SELECT id, fingerprint FROM jobs WHERE idempotency_key=?", (idempotency_key,)).fetchone()
        return None if row is None else (row[0], row[1])

    def _count(self, status: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status,)).fetchone()[0]

    def cancel_queued(self, job_id: str, reason: str) -> bool:
        """Cancel a job if it is still queued (atomically: the worker may be taking it right now)."""
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET status='cancelled', error=?, finished=? WHERE id=? AND status='queued'",
                                   (reason, _now(), job_id))
        return cur.rowcount == 1

    def take(self, job_id: str) -> bool:
        """queued -> running, atomically; False if it was cancelled (or taken) meanwhile."""
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET status='running', started=? WHERE id=? AND status='queued'",
                                   (_now(), job_id))
        return cur.rowcount == 1

    def purge(self, older_than_s: float) -> list[str]:
        """Delete finished jobs (and their results) that finished more than `older_than_s` ago; their ids."""
        cutoff = (_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=older_than_s)).isoformat(timespec="milliseconds")
        marks = ",".join("?" * len(FINISHED))
        with self._lock:
            rows = self._db.execute(f"SELECT id FROM jobs WHERE status IN ({marks}) AND finished < ?",
                                    (*FINISHED, cutoff)).fetchall()
            self._db.execute(f"DELETE FROM jobs WHERE status IN ({marks}) AND finished < ?", (*FINISHED, cutoff))
        return [r[0] for r in rows]

    def recent_durations(self, limit: int = 20) -> list[float]:
        """Seconds the last finished jobs ran (for a Retry-After estimate)."""
        with self._lock:
            rows = self._db.execute("SELECT started, finished FROM jobs WHERE status IN ('done', 'failed') "
                                    "AND started IS NOT NULL ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        parse = _dt.datetime.fromisoformat
        return [(parse(f) - parse(s)).total_seconds() for s, f in rows]

    def finish(self, job_id: str, result: dict[str, Any]) -> None:
        self._set(job_id, "done", result=json.dumps(result, default=str), finished=_now())

    def fail(self, job_id: str, error: str) -> None:
        self._set(job_id, "failed", error=error, finished=_now())

    def cancelled(self, job_id: str, reason: str) -> None:
        self._set(job_id, "cancelled", error=reason, finished=_now())

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
