"""Talk to an agent over HTTP (httpx). Every failure is an sdk.errors.AgentError with the HTTP status when
there is one; the httpx exception stays attached as its cause."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from sdk.agent.local import as_zip
from sdk.agent.result import BenchmarkResult
from sdk.core.errors import AgentError

__all__ = ["TOKEN_ENV", "Client"]

TOKEN_ENV = "EDGE_SDK_AGENT_TOKEN"


class Client:
    """A remote agent. `token` defaults to $EDGE_SDK_AGENT_TOKEN. For example::

        agent = Client("http://jetson.local:8765")
        r = agent.benchmark("out/jetson-orin-nano", iterations=100)
        r.latency_ms.p90, r.energy.per_inference_mj if r.energy else r.energy_reason
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        self.url = url.rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Client:
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

    def submit(self, bundle: Any, *, warmup: int = 10, iterations: int = 200,
               tolerance: Mapping[str, Any] | None = None, timeout_s: float = 600.0, idle_s: float = 1.0,
               energy: bool = True, check_bad_input: bool = False, target: str = "local") -> str:
        """Upload a bundle (folder, .zip or sdk.artifact.Artifact) with a run spec; returns the job id.

        `check_bad_input` also feeds a wrongly shaped input and reports how the runtime refused it
        (result["bad_input"]); `target="phone"` runs on the phone the agent drives over adb."""
        spec = {"warmup": warmup, "iterations": iterations, "timeout_s": timeout_s, "idle_s": idle_s,
                "energy": energy, "check_bad_input": check_bad_input, "target": target}
        if tolerance:
            spec["tolerance"] = {k: v for k, v in dict(tolerance).items() if v is not None}
        with as_zip(bundle) as zip_path, open(zip_path, "rb") as fh:
            job = self._request("POST", "/v1/jobs", files={"bundle": (Path(zip_path).name, fh, "application/zip")},
                                data={"spec": json.dumps(spec)})
        return job["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}")

    def jobs(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        return self._request("GET", "/v1/jobs", params=params)

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.1) -> dict[str, Any]:
        """Poll until the job is done or failed; returns the job. AgentError if `timeout` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_s / 4
        while True:
            job = self.job(job_id)
            if job["status"] in ("done", "failed"):
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise AgentError(f"job {job_id} still {job['status']} on {self.url} after {timeout:g} s")
            time.sleep(delay)
            delay = min(poll_s, delay * 2)

    def benchmark(self, bundle: Any, *, warmup: int = 10, iterations: int = 200,
                  tolerance: Mapping[str, Any] | None = None, timeout_s: float = 600.0, idle_s: float = 1.0,
                  energy: bool = True, check_bad_input: bool = False, target: str = "local") -> BenchmarkResult:
        """Submit and wait (the agent bounds each job by `timeout_s`; jobs queued ahead run first);
        AgentError with the agent's reason if the job fails."""
        job_id = self.submit(bundle, warmup=warmup, iterations=iterations, tolerance=tolerance, timeout_s=timeout_s,
                             idle_s=idle_s, energy=energy, check_bad_input=check_bad_input, target=target)
        job = self.wait(job_id)
        if job["status"] == "failed":
            raise AgentError(f"benchmark job {job_id} failed on {self.url}: {job['error']}")
        return BenchmarkResult({**job["result"], "job_id": job_id, "agent": self.url})
