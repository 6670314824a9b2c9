"""Tiny real bundles for the agent tests: an ONNX MatMul+Add model (built with onnx.helper, no torch)
run by ONNX Runtime, written with the SDK's own BundleWriter. Each seed gives different weights, so a
result can be matched to the bundle that produced it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from sdk.artifact import BundleWriter, load_artifact


def onnx_model(seed: int, features: int = 8, classes: int = 4, nan_bias: bool = False) -> onnx.ModelProto:
    """`nan_bias`: one bias is NaN, so that output is NaN whatever the input (a broken export)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "w")
    bias = rng.standard_normal(classes).astype(np.float32)
    if nan_bias:
        bias[0] = np.nan
    b = numpy_helper.from_array(bias, "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["in_0", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["out_0"])],
        f"linear_{seed}",
        [helper.make_tensor_value_info("in_0", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("out_0", TensorProto.FLOAT, [1, classes])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_bundle(out_dir: Path, seed: int = 0, name: str | None = None, runtime: str = "onnxruntime",
                extra_files: dict[str, bytes] | None = None, reference_scale: float = 1.0, nan: bool = False,
                device: str = "test-cpu") -> Path:
    """Write a bundle to out_dir/<name> and return its path; `extra_files` are listed in the manifest too.
    `nan`: the model outputs a NaN where its (finite) reference does not."""
    model = onnx_model(seed)
    x = np.random.default_rng(1000 + seed).standard_normal((1, 8)).astype(np.float32)
    with BundleWriter(out_dir, name or f"bundle-{seed}") as writer:
        onnx.save(model, writer.staging / "model.onnx")
        y = ort.InferenceSession(str(writer.staging / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"in_0": x})
        if nan:
            onnx.save(onnx_model(seed, nan_bias=True), writer.staging / "model.onnx")
        y = [out * reference_scale for out in y]  # != 1: a reference the model does not reproduce
        writer.write_reference([x], y)
        for rel, data in (extra_files or {}).items():
            (writer.staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (writer.staging / rel).write_bytes(data)
        writer.write_manifest(device=device, fmt="onnx", runtime=runtime, model_file="model.onnx",
                              inputs=[x], outputs=y, recipe=["fp32"], extra={"tolerance": {"min_cosine": 0.9999}})
        return writer.commit()


def zip_bundle(bundle: Path, dest: Path | None = None) -> Path:
    return load_artifact(bundle).zip(dest)


REPO = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).resolve().parent / "fixtures" / "agent_plugins"


class AgentProcess:
    """A real agent (uvicorn) in a child process on 127.0.0.1, started as `edge-sdk agent serve` would."""

    def __init__(self, data_dir: Path, token: str | None = None, max_upload_mb: float = 2.0, port: int | None = None,
                 **limits: float):
        """`limits`: sdk.agent.server.Limits fields (max_queued, min_free_mb, retention_days, max_memory_mb)."""
        self.data_dir, self.token, self.max_upload_mb, self.limits = data_dir, token, max_upload_mb, limits
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> AgentProcess:
        code = ("import json, os; from sdk.agent.server import Limits, serve; "
                "mb = float(os.environ['AGENT_MAX_MB']); "
                "serve('127.0.0.1', int(os.environ['AGENT_PORT']), os.environ.get('AGENT_TOKEN') or None, "
                "os.environ['AGENT_DATA'], mb, limits=Limits(max_upload_mb=mb, **json.loads(os.environ['AGENT_LIMITS'])))")
        env = dict(os.environ, AGENT_PORT=str(self.port), AGENT_TOKEN=self.token or "", AGENT_DATA=str(self.data_dir),
                   AGENT_MAX_MB=str(self.max_upload_mb), AGENT_LIMITS=json.dumps(self.limits),
                   PYTHONPATH=os.pathsep.join([str(REPO), str(PLUGINS)]),
                   EDGE_SDK_TEST_PLUGINS="1")
        self.log = open(self.data_dir.parent / f"agent-{self.port}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}: {self.read_log()}")
            try:
                httpx.get(self.url + "/v1/jobs", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"agent did not start in {timeout} s: {self.read_log()}")

    def read_log(self) -> str:
        return (self.data_dir.parent / f"agent-{self.port}.log").read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks run, like a power cut or the OOM killer."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
