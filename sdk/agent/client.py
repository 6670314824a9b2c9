"""Talk to an agent over HTTP (httpx). Every failure is an sdk.errors.AgentError with the HTTP status when
there is one; the httpx exception stays attached as its cause."""
from __future__ import annotations

import contextlib
import json
import os
import ssl
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from sdk.agent.generate import GenerationResult
from sdk.agent.local import as_zip
from sdk.agent.result import BenchmarkResult
from sdk.agent.spec import RunSpec
from sdk.errors import AgentError

__all__ = ["DEFAULT_WAIT_S", "TOKEN_ENV", "Client"]

TOKEN_ENV = "EDGE_SDK_AGENT_TOKEN"
#: how long Client.wait polls by default before giving up
DEFAULT_WAIT_S = 3600.0
#: a submission whose connection failed is retried (same Idempotency-Key) up to this many attempts in all
SUBMIT_ATTEMPTS = 3
FINISHED = ("done", "failed", "cancelled")


class Client:
    """A remote agent (an `sdk.agent.protocol.Agent`). `token` defaults to $EDGE_SDK_AGENT_TOKEN; `verify` is
    httpx's: True, False or the path of a CA bundle (e.g. the agent's self-signed certificate). For example::

        agent = Client("http://jetson.local:8765")
        r = agent.benchmark("out/jetson-orin-nano", iterations=100)
        r.latency_ms.p90, r.energy.per_inference_mj if r.energy else r.energy_reason
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0, verify: bool | str = True,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        tls = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, verify=tls, transport=transport)

    def __enter__(self) -> Client:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise AgentError(f"agent at {self.url} did not answer {method} {path} in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise AgentError(f"cannot reach the agent at {self.url}: {exc}. Is `edge-sdk agent serve` running "
                             "there, and is the port reachable?") from exc
        if response.is_success:
            return response.json()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        if response.status_code == 401 and TOKEN_ENV not in detail:
            detail = f"{detail} (set {TOKEN_ENV} or pass token=...)"
        retry = response.headers.get("retry-after")
        if retry:
            detail = f"{detail} (the agent says: retry after {retry} s)"
        error = AgentError(f"agent at {self.url} answered {response.status_code} to {method} {path}: {detail}",
                           status_code=response.status_code)
        try:
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise error from exc
        raise error  # pragma: no cover - non-success codes always raise above

    def device(self) -> dict[str, Any]:
        """Platform, runtimes available (or why not), power probes found (or why not)."""
        return self._request("GET", "/v1/device")

    def submit(self, bundle: Any, spec: RunSpec | None = None, *, idempotency_key: str | None = None,
               **fields: Any) -> str:
        """Upload a bundle (folder, .zip or sdk.artifact.Artifact) with `RunSpec.of(spec, **fields)`; returns the
        job id. The POST carries an Idempotency-Key (a fresh one unless given) and is retried with the same key
        when the connection fails, so a retry never makes a second job."""
        run = RunSpec.of(spec, **fields)
        key = idempotency_key or uuid.uuid4().hex
        with as_zip(bundle) as zip_path:
            for attempt in range(SUBMIT_ATTEMPTS):
                try:
                    with open(zip_path, "rb") as fh:
                        job = self._request("POST", "/v1/jobs", headers={"Idempotency-Key": key},
                                            files={"bundle": (Path(zip_path).name, fh, "application/zip")},
                                            data={"spec": json.dumps(run.to_dict())})
                    return job["id"]
                except AgentError as exc:
                    if exc.status_code is not None or attempt == SUBMIT_ATTEMPTS - 1:
                        raise
                    time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (a running benchmark's process is killed); returns the job."""
        return self._request("POST", f"/v1/jobs/{job_id}/cancel")

    def jobs(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._request("GET", "/v1/jobs", params=params)

    def wait(self, job_id: str, timeout: float | None = DEFAULT_WAIT_S, poll_s: float = 0.2) -> dict[str, Any]:
        """Poll until the job is done, failed or cancelled; returns the job. AgentError when `timeout` seconds
        (default one hour; None: no limit) pass first; the job keeps its place on the agent (see cancel())."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = min(poll_s, 0.05)
        while True:
            job = self.job(job_id)
            if job["status"] in FINISHED:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise AgentError(f"job {job_id} still {job['status']} on {self.url} after {timeout:g} s "
                                 "(Client.wait(timeout=...); Client.cancel(job_id) frees the agent)")
            time.sleep(delay)
            delay = min(poll_s, delay * 2)

    def benchmark(self, bundle: Any, spec: RunSpec | None = None, *, wait_s: float | None = None,
                  **fields: Any) -> BenchmarkResult:
        """Submit and wait: `wait_s` defaults to the spec's timeout_s plus an hour for jobs queued ahead. A job
        still unfinished then is cancelled; a failed or cancelled one raises AgentError with the agent's reason."""
        run = RunSpec.of(spec, **fields)
        job_id = self.submit(bundle, run)
        try:
            job = self.wait(job_id, timeout=run.timeout_s + DEFAULT_WAIT_S if wait_s is None else wait_s)
        except AgentError:
            with contextlib.suppress(AgentError):  # it may have finished meanwhile (409) or the agent be gone
                self.cancel(job_id)
            raise
        if job["status"] != "done":
            raise AgentError(f"benchmark job {job_id} {job['status']} on {self.url}: {job['error']}")
        return BenchmarkResult({**job["result"], "job_id": job_id, "agent": self.url})

    def generate(self, bundle: Any, prompt_tokens: Sequence[int], *, max_new_tokens: int = 128,
                 temperature: float = 0.0, top_k: int = 0, seed: int = 0,
                 stop_tokens: Sequence[int] | None = None) -> GenerationResult:
        """Upload an LLM bundle and generate on the agent (POST /v1/generate); same result as LocalAgent.generate."""
        spec = {"prompt_tokens": [int(t) for t in prompt_tokens], "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_k": top_k, "seed": seed,
                "stop_tokens": None if stop_tokens is None else [int(t) for t in stop_tokens]}
        with as_zip(bundle) as zip_path, open(zip_path, "rb") as fh:
            result = self._request("POST", "/v1/generate", data={"spec": json.dumps(spec)},
                                   files={"bundle": (Path(zip_path).name, fh, "application/zip")})
        return GenerationResult.from_dict(result)
