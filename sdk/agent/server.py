"""The agent's HTTP service (FastAPI): accept bundle zips, benchmark them one at a time, keep results for a while.

    GET  /v1/device             platform, runtimes (available or why not), power probes, queue, limits
    POST /v1/jobs               multipart: `bundle` (zip) + `spec` (JSON RunSpec) -> {"id": ...}
                                (Idempotency-Key header: a retried POST returns the same job)
    GET  /v1/jobs/{id}          status (queued/running/done/failed/cancelled), result or error
    POST /v1/jobs/{id}/cancel   cancel a queued job, or kill a running one's benchmark process
    GET  /v1/jobs               recent jobs, newest first, without results
    GET  /openapi.json          this API as OpenAPI 3

One worker thread takes jobs from a queue, so benchmarks never overlap (they would ruin each other's
timings); each runs in a child process with a timeout and rlimits (bench.run_isolated). Jobs live in SQLite
under `data_dir` (0700, files 0600). The queue is bounded (429 + Retry-After), uploads need free disk (507),
finished jobs are deleted after `retention_days`, and every state-changing request and refusal of access is
written to `<data_dir>/audit.log` with the client's address and token fingerprint. A bearer token, compared
in constant time, guards every endpoint when set; `serve` refuses to listen beyond loopback without one.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import queue
import re
import shutil
import statistics
import tempfile
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from sdk.agent import bench, intake
from sdk.agent.adb import Phone
from sdk.agent.device import describe
from sdk.agent.spec import RunSpec, SpecError
from sdk.agent.store import FINISHED, STATUSES, JobStore
from sdk.core.errors import DeviceError, UserInputError
from sdk.version import __version__

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "MIN_TOKEN_CHARS", "Limits", "create_app", "scrub", "serve"]

log = logging.getLogger("edge_sdk.agent")
DEFAULT_MAX_UPLOAD_MB = 512
#: how much larger than the upload limit a bundle may unpack to (models compress little; this stops zip bombs)
UNPACK_FACTOR = 4
MAX_SPEC_CHARS = 64 * 1024
MIN_TOKEN_CHARS = 16
#: agent-side absolute paths that must not reach a client: job and upload folders, benchmark scratch folders
_PRIVATE_PATH = re.compile(r"(/[^\s'\"]*)?/(jobs/[0-9a-f]{32}|jobs/upload-[^/\s'\"]+|edge-sdk-bench-[^/\s'\"]+)")
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")


def _default_memory_mb() -> float | None:
    """80% of physical memory: a runaway benchmark fails alone instead of taking the host down."""
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 20) * 0.8)
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Limits:
    """What one agent accepts. max_queued: jobs waiting (beyond: 429). min_free_mb: disk that must stay free
    after an upload is stored and unpacked (else 507). retention_days: finished jobs older than this are deleted.
    max_memory_mb: data-memory rlimit of each benchmark process (a spec may ask for less, never more)."""

    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_queued: int = 50
    min_free_mb: float = 1024.0
    retention_days: float = 30.0
    max_memory_mb: float | None = None

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * (1 << 20))


class GenerateSpec(BaseModel):
    """The `spec` form field of POST /v1/generate (an LLM bundle): prompt token ids and sampling settings."""

    model_config = ConfigDict(extra="forbid")
    prompt_tokens: list[int] = Field(..., min_length=1, max_length=1_000_000)
    max_new_tokens: int = Field(128, ge=1, le=1_000_000)
    temperature: float = Field(0.0, ge=0)
    top_k: int = Field(0, ge=0)
    seed: int = 0
    stop_tokens: list[int] | None = None


class _Agent:
    """State behind the app: the store, the queue, the single worker thread and the job it is running."""

    def __init__(self, data_dir: Path, phone: Phone | None, limits: Limits):
        self.data_dir = data_dir
        self.jobs_dir = data_dir / "jobs"
        for folder in (data_dir, self.jobs_dir):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(folder, 0o700)  # also an existing one: results and uploads are nobody else's business
        self.store = JobStore(data_dir / "jobs.sqlite3")
        self.audit = _AuditLog(data_dir / "audit.log")
        self.phone, self.limits = phone, limits
        self.memory_mb = limits.max_memory_mb or _default_memory_mb()
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="edge-sdk-agent-worker", daemon=True)
        self.current: tuple[str, threading.Event] | None = None
        self._current_lock = threading.Lock()

    def start(self) -> None:
        for job_id in self.store.recover():
            if (self.jobs_dir / job_id / "bundle").is_dir():
                self.queue.put(job_id)
            else:
                self.store.fail(job_id, "agent restarted and the job's bundle folder is gone; submit it again")
        for leftover in self.jobs_dir.iterdir():  # folders of jobs that finished before the restart
            job = self.store.get(leftover.name)
            if job is None or job["status"] in FINISHED:
                shutil.rmtree(leftover, ignore_errors=True)
        self.purge()
        self.thread.start()

    def stop(self) -> None:
        """Let the worker finish its job and stop. A job still running when the process exits is marked
        failed on the next start (its benchmark process dies with the agent)."""
        self.queue.put(None)
        self.thread.join(timeout=1.0)
        if not self.thread.is_alive():
            self.store.close()

    def purge(self) -> None:
        for job_id in self.store.purge(self.limits.retention_days * 86400):
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            log.info("job %s deleted: finished more than %g days ago", job_id, self.limits.retention_days)

    def _work(self) -> None:
        while True:
            try:
                job_id = self.queue.get(timeout=min(3600.0, max(1.0, self.limits.retention_days * 86400)))
            except queue.Empty:
                self.purge()
                continue
            if job_id is None:
                return
            try:
                self._run(job_id)
            except Exception as exc:  # never let one job stop the worker
                log.exception("job %s failed inside the agent", job_id)
                self.store.fail(job_id, scrub(f"internal agent error: {type(exc).__name__}: {exc}", self.data_dir))
            finally:
                shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
                self.purge()

    def _run(self, job_id: str) -> None:
        cancel = threading.Event()
        with self._current_lock:  # before take(): a cancel arriving in between finds the job here
            self.current = (job_id, cancel)
        try:
            job = self.store.get(job_id)
            if job is None or not self.store.take(job_id):  # cancelled (or purged) while it waited
                return
            spec = RunSpec.from_dict(job["spec"])
            memory = min(filter(None, (spec.max_memory_mb, self.memory_mb)), default=None)
            phone = self.phone.to_dict() if spec.target == "phone" and self.phone else None
            log.info("job %s running", job_id)
            result = bench.run_isolated(self.jobs_dir / job_id / "bundle", spec, max_memory_mb=memory,
                                        phone=phone, cancel=cancel)
        except bench.BenchmarkFailed as exc:
            if exc.kind == "cancelled":
                self.store.cancelled(job_id, f"cancelled by a client while running ({exc.phase}); its benchmark "
                                             "process was killed")
            else:
                self.store.fail(job_id, scrub(str(exc), self.data_dir))
            log.info("job %s %s", job_id, exc.kind)
            return
        finally:
            with self._current_lock:
                self.current = None
        self.store.finish(job_id, result)
        log.info("job %s done", job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job, or signal the running one's benchmark to be killed; False if it had finished."""
        if self.store.cancel_queued(job_id, "cancelled by a client before it ran"):
            shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)
            return True
        with self._current_lock:
            if self.current is not None and self.current[0] == job_id:
                self.current[1].set()
                return True
        return False

    def retry_after_s(self) -> int:
        """Seconds until a queue slot is likely free: the median recent job time x jobs ahead, 1 s to 1 h."""
        durations = self.store.recent_durations()
        per_job = statistics.median(durations) if durations else 30.0
        return int(min(3600, max(1, math.ceil(per_job * (1 + self.store.counts()["queued"] - self.limits.max_queued)))))


class _AuditLog:
    """Append-only JSON lines (0600): who did what. One line per state-changing request or refused access."""

    def __init__(self, path: Path):
        self.path = path
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600))
        self._lock = threading.Lock()

    def write(self, **entry: Any) -> None:
        line = json.dumps({"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"), **entry})
        with self._lock, open(self.path, "a") as fh:
            fh.write(line + "\n")


def _client_identity(scope: dict, headers: dict[str, str]) -> dict[str, Any]:
    """Address, user agent and which token (a short sha256, never the token) a request came with."""
    client = scope.get("client") or ("?", 0)
    scheme, _, given = headers.get("authorization", "").partition(" ")
    token = hashlib.sha256(given.strip().encode()).hexdigest()[:12] if scheme.lower() == "bearer" and given else None
    return {"client": f"{client[0]}:{client[1]}", "user_agent": headers.get("user-agent", "")[:200],
            "token_sha256": token}


class _Audit:
    """ASGI middleware: audit every request that changes state (not GET) and every 401/403/429/507 answer.
    Status polls are not logged, so the log stays readable on a busy agent."""

    def __init__(self, app: Any, audit: _AuditLog):
        self.app, self.audit = app, audit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        logged = False

        def log(status: int) -> None:
            nonlocal logged
            if logged or (scope["method"] in ("GET", "HEAD") and status not in (401, 403, 429, 507)):
                return
            logged = True
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            state = scope.get("state") or {}
            self.audit.write(**_client_identity(scope, headers), method=scope["method"], path=scope["path"],
                             status=status, job=state.get("job_id"))

        async def recorded(message: dict) -> None:
            if message["type"] == "http.response.start":
                log(message["status"])  # before the client can see the answer, so a reader never races it
            await send(message)

        try:
            await self.app(scope, receive, recorded)
        finally:
            log(500)  # no answer started: the request failed inside the app


#: POST /v1/jobs reads its multipart body itself (streamed, size-capped); this describes it in the OpenAPI document
_SUBMIT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["bundle"],
    "properties": {"bundle": {"type": "string", "format": "binary", "description": "the bundle zip"},
                   "spec": {"type": "string", "description": "the run spec as JSON (RunSpec)"}}}}}}}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=message, headers=headers)


class _BodyLimit:
    """ASGI middleware: stop reading a request body past `max_bytes`, whatever Content-Length claims
    (chunked uploads have none), so an oversized upload is never spooled to disk in full."""

    def __init__(self, app: Any, max_bytes: int, max_upload_mb: float):
        self.app, self.max_bytes, self.max_upload_mb = app, max_bytes, max_upload_mb

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _error(413, f"upload exceeds this agent's {self.max_upload_mb:g} MiB limit "
                                  "(start it with a larger --max-upload-mb)")
            return message

        await self.app(scope, limited, send)


def create_app(data_dir: str | Path, token: str | None = None, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               *, phone: Phone | None = None, limits: Limits | None = None) -> FastAPI:
    """The agent as an ASGI app. `token` set: every request needs `Authorization: Bearer <token>`.
    `limits` (queue, disk, retention, memory) default to Limits(max_upload_mb=max_upload_mb)."""
    data_dir = Path(data_dir).expanduser().resolve()
    limits = limits or Limits(max_upload_mb=max_upload_mb)
    agent = _Agent(data_dir, phone, limits)
    max_bytes, max_upload_mb = limits.max_bytes, limits.max_upload_mb
    expected = token.encode() if token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        agent.start()
        yield
        agent.stop()

    # /openapi.json is served by a route of its own below, behind the token like everything else; no /docs.
    app = FastAPI(title="edge-sdk agent", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.agent = agent
    app.add_middleware(_BodyLimit, max_bytes=max_bytes + (1 << 20), max_upload_mb=max_upload_mb)  # + form overhead
    app.add_middleware(_Audit, audit=agent.audit)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers or None)

    def authorize(request: Request) -> None:
        if expected is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise _error(401, "this agent requires a token: send 'Authorization: Bearer <token>' "
                              "(Client(url, token=...) or EDGE_SDK_AGENT_TOKEN)")
        if not hmac.compare_digest(given.strip().encode(), expected):
            raise _error(401, "wrong token for this agent")

    guarded = [Depends(authorize)]

    @app.get("/openapi.json", dependencies=guarded, include_in_schema=False)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/v1/device", dependencies=guarded)
    def device() -> dict[str, Any]:
        return {**describe(phone), "queue": agent.store.counts(), "max_upload_mb": max_upload_mb,
                "limits": {"max_queued": limits.max_queued, "min_free_mb": limits.min_free_mb,
                           "retention_days": limits.retention_days, "max_memory_mb": agent.memory_mb}}

    @app.get("/v1/jobs", dependencies=guarded)
    def list_jobs(status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise _error(400, f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        return agent.store.list(status, max(1, min(limit, 10_000)))

    @app.get("/v1/jobs/{job_id}", dependencies=guarded)
    def get_job(job_id: str) -> dict[str, Any]:
        job = agent.store.get(job_id)
        if job is None:
            raise _error(404, f"no job {job_id!r} on this agent (finished jobs are kept {limits.retention_days:g} days)")
        return job

    @app.post("/v1/jobs/{job_id}/cancel", dependencies=guarded)
    def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
        request.state.job_id = job_id
        job = agent.store.get(job_id)
        if job is None:
            raise _error(404, f"no job {job_id!r} on this agent")
        if not agent.cancel(job_id):
            raise _error(409, f"job {job_id} is already {job['status']}; only queued or running jobs can be cancelled")
        job = agent.store.get(job_id)
        return {**job, "cancelling": job["status"] == "running"}  # the worker records 'cancelled' once it is killed

    @app.post("/v1/jobs", dependencies=guarded, status_code=202, openapi_extra=_SUBMIT_BODY)
    async def submit(request: Request) -> dict[str, Any]:
        key = request.headers.get("idempotency-key")
        if key is not None and not _IDEMPOTENCY_KEY.match(key):
            raise _error(400, "Idempotency-Key must be 1-200 characters of letters, digits and . _ : -")
        length = request.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        if declared is not None and declared > max_bytes + (1 << 20):
            raise _error(413, f"upload of {declared >> 20} MiB exceeds this agent's {max_upload_mb:g} MiB limit "
                              "(start it with a larger --max-upload-mb)")
        if key is None and agent.store.counts()["queued"] >= limits.max_queued:
            raise _queue_full(agent)
        _check_disk(agent, declared or max_bytes)
        work = Path(tempfile.mkdtemp(prefix="upload-", dir=agent.jobs_dir))
        try:
            upload = work / "bundle.zip"
            spec_text = await _read_multipart(request, upload, max_bytes, max_upload_mb)
            spec = _parse_spec(spec_text)
            if spec.target == "phone" and phone is None:
                raise _error(400, "spec target 'phone' but this agent drives no phone (serve it with an adb runner)")
            if spec.max_memory_mb and agent.memory_mb and spec.max_memory_mb > agent.memory_mb:
                raise _error(422, f"spec max_memory_mb {spec.max_memory_mb:g} exceeds this agent's limit of "
                                  f"{agent.memory_mb:g} MiB")
            fingerprint = await run_in_threadpool(_fingerprint, upload, spec)
            if key is not None and (same := _replay(agent, key, fingerprint)) is not None:
                request.state.job_id = same["id"]
                return same
            bundle = await run_in_threadpool(_intake, upload, work / "bundle", max_bytes, spec.target == "local")
            upload.unlink()
            job_id = agent.store.add(spec.to_dict(), bundle, max_queued=limits.max_queued,
                                     idempotency_key=key, fingerprint=fingerprint)
            if job_id is None:
                raise _queue_full(agent)
            work.rename(agent.jobs_dir / job_id)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        request.state.job_id = job_id
        agent.queue.put(job_id)
        log.info("job %s queued (%s)", job_id, bundle["device"])
        return {"id": job_id, "status": "queued", "bundle": bundle}

    @app.post("/v1/generate", dependencies=guarded)
    async def generate_tokens(request: Request) -> dict[str, Any]:
        """Generate with an LLM bundle in this process, answering when done (sdk.agent.generate)."""
        from sdk.agent import generate

        work = Path(tempfile.mkdtemp(prefix="generate-", dir=agent.jobs_dir))
        try:
            spec_text = await _read_multipart(request, work / "bundle.zip", max_bytes, max_upload_mb)
            try:
                spec = GenerateSpec.model_validate(json.loads(spec_text or "{}"))
            except (json.JSONDecodeError, ValidationError) as exc:
                raise _error(422, f"invalid generate spec: {exc}") from None
            await run_in_threadpool(_intake, work / "bundle.zip", work / "bundle", max_bytes, True)
            result = await run_in_threadpool(generate.generate, work / "bundle", **spec.model_dump())
        except (UserInputError, DeviceError) as exc:
            raise _error(422, str(exc).replace(str(work), "upload")) from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return result.to_dict()

    return app


def _queue_full(agent: _Agent) -> HTTPException:
    wait = agent.retry_after_s()
    return _error(429, f"this agent's queue is full ({agent.limits.max_queued} jobs waiting); retry in about {wait} s",
                  headers={"Retry-After": str(wait)})


def _check_disk(agent: _Agent, upload_bytes: int) -> None:
    """507 unless the upload, what it unpacks to and the agent's reserve fit on its disk."""
    free = shutil.disk_usage(agent.data_dir).free
    need = upload_bytes * (1 + UNPACK_FACTOR) + agent.limits.min_free_mb * (1 << 20)
    if free < need:
        raise _error(507, f"this agent has {free >> 20} MiB of disk free and keeps {agent.limits.min_free_mb:g} MiB "
                          f"in reserve; an upload of this size needs {int(need) >> 20} MiB. Try again later or ask its "
                          "operator to free space", headers={"Retry-After": "60"})


def _fingerprint(upload: Path, spec: RunSpec) -> str:
    digest = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    with open(upload, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _replay(agent: _Agent, key: str, fingerprint: str) -> dict[str, Any] | None:
    """The job an earlier request with this Idempotency-Key made (None if none); 409 if that request differed."""
    found = agent.store.by_key(key)
    if found is None:
        return None
    job_id, earlier = found
    if earlier != fingerprint:
        raise _error(409, f"Idempotency-Key {key!r} was used for a different upload or spec (job {job_id}); "
                          "use a new key for a new job")
    job = agent.store.get(job_id)
    return {"id": job_id, "status": job["status"], "bundle": job["bundle"]}


async def _read_multipart(request: Request, dest: Path, max_bytes: int, max_upload_mb: float) -> str:
    """Stream the `bundle` part to `dest` (never more than the limit) and return the `spec` part."""
    from starlette.formparsers import MultiPartException

    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise _error(400, "POST /v1/jobs takes multipart/form-data with a 'bundle' zip file and a 'spec' JSON field")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except (MultiPartException, ValueError) as exc:
        raise _error(400, f"malformed multipart upload: {exc}") from None
    try:
        bundle, spec = form.get("bundle"), form.get("spec", "{}")
        if bundle is None or isinstance(bundle, str):
            raise _error(400, "missing 'bundle' file part (the bundle zip)")
        if not isinstance(spec, str):
            raise _error(400, "'spec' must be a JSON text field, not a file")
        size = 0
        out = await run_in_threadpool(open, dest, "wb")
        try:
            while chunk := await bundle.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise _error(413, f"bundle zip exceeds this agent's {max_upload_mb:g} MiB upload limit "
                                      "(start it with a larger --max-upload-mb)")
                await run_in_threadpool(out.write, chunk)
        finally:
            out.close()
        return spec
    finally:
        await form.close()


def _parse_spec(text: str) -> RunSpec:
    if len(text) > MAX_SPEC_CHARS:
        raise _error(413, f"'spec' is {len(text)} characters; a run spec is at most {MAX_SPEC_CHARS}")
    try:
        return RunSpec.from_dict(json.loads(text or "{}"))
    except json.JSONDecodeError as exc:
        raise _error(400, f"'spec' is not valid JSON: {exc}") from None
    except RecursionError:
        raise _error(400, "'spec' is nested too deeply to parse; a run spec is a flat JSON object") from None
    except (SpecError, TypeError) as exc:
        raise _error(422, str(exc)) from None


def _intake(upload: Path, dest: Path, max_bytes: int, need_runtime: bool) -> dict[str, Any]:
    """Unpack and check an upload. A check that itself trips on some input the checks above did not foresee
    still refuses the upload (422 with the exception) instead of a 500; the traceback goes to the agent's log."""
    try:
        intake.unpack(upload, dest, max_bytes * UNPACK_FACTOR)
        return intake.check_bundle(dest, need_runtime=need_runtime)
    except intake.IntakeError as exc:
        raise _error(exc.status, scrub(str(exc), dest)) from None
    except Exception as exc:
        log.exception("an upload tripped the bundle checks")
        raise _error(422, f"the bundle could not be checked ({type(exc).__name__}: {scrub(str(exc), dest)}); "
                          "re-export it with sdk.export") from None


def scrub(message: str, *folders: Path) -> str:
    """A client-facing message without the agent's own paths (job folders, temporary folders)."""
    message = _PRIVATE_PATH.sub("<agent>", message)
    for folder in folders:
        message = message.replace(str(folder), Path(folder).name)
    return message


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_token(token: str | None, host: str) -> None:
    """UserInputError unless the token is strong enough, or absent on a loopback-only agent."""
    if not token and not is_loopback(host):
        raise UserInputError(
            f"refusing to listen on {host!r} without a token: anyone on the network could run models here. "
            "Pass --token (make one with `edge-sdk agent token`) or listen on 127.0.0.1.")
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        raise UserInputError(f"the token is {len(token)} characters; use at least {MIN_TOKEN_CHARS} (a guessable token "
                             "lets anyone who reaches the port run models here). Make one with `edge-sdk agent token`.")


def serve(host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          data_dir: str | Path = "~/.edge-sdk/agent", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, *,
          phone: Phone | None = None, ssl_certfile: str | None = None, ssl_keyfile: str | None = None,
          limits: Limits | None = None) -> None:
    """Run the agent until interrupted (what `edge-sdk agent serve` calls).

    Refuses to listen beyond loopback without a token, and any token shorter than 16 characters: anyone who
    can reach the port could otherwise make this machine run their models. Serves HTTPS when given a
    certificate and key. Everything it writes is private to its user (umask 077).
    """
    import uvicorn

    check_token(token, host)
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise UserInputError("TLS needs both a certificate and its private key (--tls-cert and --tls-key)")
    for path in filter(None, (ssl_certfile, ssl_keyfile)):
        if not Path(path).is_file():
            raise UserInputError(f"TLS file {path} does not exist")
    os.umask(0o077)
    app = create_app(data_dir, token, max_upload_mb, phone=phone,
                     limits=limits or Limits(max_upload_mb=max_upload_mb))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # access_log=False: one line per status poll drowns what matters; job events and the audit log remain
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False, ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=5)
