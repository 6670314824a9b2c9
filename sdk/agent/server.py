"""The agent's HTTP service (FastAPI): accept bundle zips, benchmark them one at a time, keep every result.

    GET  /v1/device      platform, runtimes (available or why not), power probes (working or why not)
    POST /v1/jobs        multipart: `bundle` (zip) + `spec` (JSON run spec) -> {"id": ...}
    GET  /v1/jobs/{id}   status (queued/running/done/failed), result or error
    GET  /v1/jobs        recent jobs, newest first, without results

One worker thread takes jobs from a queue, so benchmarks never overlap (they would ruin each other's
timings); each runs in a child process with a timeout (bench.run_isolated). Jobs live in SQLite under
`data_dir`. A bearer token, compared in constant time, guards every endpoint when set, and `serve`
refuses to listen beyond loopback without one.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import queue
import shutil
import tempfile
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from sdk.agent import bench, intake
from sdk.agent.adb import Phone
from sdk.agent.device import describe
from sdk.agent.store import STATUSES, JobStore
from sdk.core.errors import UserInputError
from sdk.version import __version__

__all__ = ["DEFAULT_MAX_UPLOAD_MB", "RunSpec", "create_app", "serve"]

log = logging.getLogger("edge_sdk.agent")
DEFAULT_MAX_UPLOAD_MB = 512
#: how much larger than the upload limit a bundle may unpack to (models compress little; this stops zip bombs)
UNPACK_FACTOR = 4


class Tolerance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_cosine: float | None = Field(None, ge=-1, le=1)
    max_abs_err: float | None = Field(None, ge=0)
    min_top1_agreement: float | None = Field(None, ge=0, le=1)
    min_sqnr_db: float | None = None


class RunSpec(BaseModel):
    """The `spec` form field of POST /v1/jobs. Unknown keys are refused, so a typo is not silently ignored."""

    model_config = ConfigDict(extra="forbid")
    warmup: int = Field(10, ge=0, le=100_000)
    iterations: int = Field(200, ge=1, le=10_000_000)
    tolerance: Tolerance | None = None
    timeout_s: float = Field(600.0, gt=0, le=24 * 3600)
    idle_s: float = Field(1.0, ge=0, le=600)
    energy: bool = True
    check_bad_input: bool = False
    target: Literal["local", "phone"] = "local"


class _Agent:
    """State behind the app: the store, the queue and the single worker thread."""

    def __init__(self, data_dir: Path, phone: Phone | None):
        self.data_dir = data_dir
        self.jobs_dir = data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(data_dir / "jobs.sqlite3")
        self.phone = phone
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="edge-sdk-agent-worker", daemon=True)

    def start(self) -> None:
        for job_id in self.store.recover():
            if (self.jobs_dir / job_id / "bundle").is_dir():
                self.queue.put(job_id)
            else:
                self.store.fail(job_id, "agent restarted and the job's bundle folder is gone; submit it again")
        for leftover in self.jobs_dir.iterdir():  # folders of jobs that finished or failed before the restart
            job = self.store.get(leftover.name)
            if job is None or job["status"] in ("done", "failed"):
                shutil.rmtree(leftover, ignore_errors=True)
        self.thread.start()

    def stop(self) -> None:
        """Let the worker finish its job and stop. A job still running when the process exits is marked
        failed on the next start (its benchmark process dies with the agent)."""
        self.queue.put(None)
        self.thread.join(timeout=1.0)
        if not self.thread.is_alive():
            self.store.close()

    def _work(self) -> None:
        while (job_id := self.queue.get()) is not None:
            try:
                self._run(job_id)
            except Exception as exc:  # never let one job stop the worker
                log.exception("job %s failed inside the agent", job_id)
                self.store.fail(job_id, f"internal agent error: {type(exc).__name__}: {exc}")
            finally:
                shutil.rmtree(self.jobs_dir / job_id, ignore_errors=True)

    def _run(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or job["status"] != "queued":
            return
        spec = job["spec"]
        self.store.start(job_id)
        target = self.phone.to_dict() if spec["target"] == "phone" and self.phone else None
        try:
            result = bench.run_isolated(self.jobs_dir / job_id / "bundle", warmup=spec["warmup"],
                                        iterations=spec["iterations"], tolerance=spec["tolerance"],
                                        idle_s=spec["idle_s"], energy=spec["energy"],
                                        check_bad_input=spec["check_bad_input"], timeout_s=spec["timeout_s"],
                                        target=target)
        except bench.BenchmarkFailed as exc:
            self.store.fail(job_id, str(exc))
            return
        self.store.finish(job_id, result)


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


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
               *, phone: Phone | None = None) -> FastAPI:
    """The agent as an ASGI app. `token` set: every request needs `Authorization: Bearer <token>`."""
    data_dir = Path(data_dir).expanduser().resolve()
    agent = _Agent(data_dir, phone)
    max_bytes = int(max_upload_mb * (1 << 20))
    expected = token.encode() if token else None

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        agent.start()
        yield
        agent.stop()

    # No /docs or /openapi.json: with a token set, nothing is served without it.
    app = FastAPI(title="edge-sdk agent", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.agent = agent
    app.add_middleware(_BodyLimit, max_bytes=max_bytes + (1 << 20), max_upload_mb=max_upload_mb)  # + form overhead

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

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

    @app.get("/v1/device", dependencies=guarded)
    def device() -> dict[str, Any]:
        return {**describe(phone), "queue": agent.store.counts(), "max_upload_mb": max_upload_mb}

    @app.get("/v1/jobs", dependencies=guarded)
    def list_jobs(status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if status is not None and status not in STATUSES:
            raise _error(400, f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        return agent.store.list(status, max(1, min(limit, 10_000)))

    @app.get("/v1/jobs/{job_id}", dependencies=guarded)
    def get_job(job_id: str) -> dict[str, Any]:
        job = agent.store.get(job_id)
        if job is None:
            raise _error(404, f"no job {job_id!r} on this agent")
        return job

    @app.post("/v1/jobs", dependencies=guarded, status_code=202)
    async def submit(request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes + (1 << 20):
            raise _error(413, f"upload of {int(length) >> 20} MiB exceeds this agent's {max_upload_mb:g} MiB limit "
                              "(start it with a larger --max-upload-mb)")
        work = Path(tempfile.mkdtemp(prefix="upload-", dir=agent.jobs_dir))
        try:
            upload = work / "bundle.zip"
            spec_text = await _read_multipart(request, upload, max_bytes, max_upload_mb)
            spec = _parse_spec(spec_text)
            if spec.target == "phone" and phone is None:
                raise _error(400, "spec target 'phone' but this agent drives no phone (serve it with an adb runner)")
            bundle = await run_in_threadpool(_intake, upload, work / "bundle", max_bytes, spec.target == "local")
            upload.unlink()
            job_id = agent.store.add(spec.model_dump(), bundle)
            work.rename(agent.jobs_dir / job_id)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        agent.queue.put(job_id)
        return {"id": job_id, "status": "queued", "bundle": bundle}

    return app


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
    try:
        return RunSpec.model_validate(json.loads(text or "{}"))
    except json.JSONDecodeError as exc:
        raise _error(400, f"'spec' is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
        raise _error(422, f"invalid run spec: {problems}") from None


def _intake(upload: Path, dest: Path, max_bytes: int, need_runtime: bool) -> dict[str, Any]:
    try:
        intake.unpack(upload, dest, max_bytes * UNPACK_FACTOR)
        return intake.check_bundle(dest, need_runtime=need_runtime)
    except intake.IntakeError as exc:
        raise _error(exc.status, str(exc)) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          data_dir: str | Path = "~/.edge-sdk/agent", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, *,
          phone: Phone | None = None, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    """Run the agent until interrupted (what `edge-sdk agent serve` calls).

    Refuses to listen beyond loopback without a token: anyone who can reach the port could otherwise make
    this machine run their models.
    """
    import uvicorn

    if not token and not is_loopback(host):
        raise UserInputError(
            f"refusing to listen on {host!r} without a token: anyone on the network could run models here. "
            "Pass --token (e.g. `export EDGE_SDK_AGENT_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')`) "
            "or listen on 127.0.0.1.")
    app = create_app(data_dir, token, max_upload_mb, phone=phone)
    uvicorn.run(app, host=host, port=port, log_level="info", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                timeout_graceful_shutdown=5)
