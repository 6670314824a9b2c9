"""Does the agent measure what each runtime's own benchmark tool measures? Same artifact, same run, rounds
alternating between the agent and the tool so that load drift hits both alike.

- OpenVINO: `benchmark_app`, with the settings the agent's backend uses (as benchmarks/agent_vs_benchmark_app.py
  runs it; its median is read here in the unit benchmark_app prints, which is us below a millisecond).
- LiteRT: `litert-benchmark` (ships in ai-edge-litert; it runs the CompiledModel API, the agent the Interpreter
  API, both with XNNPACK on the CPU), with the agent backend's thread count.
- ONNX Runtime: the wheel's `onnxruntime_test` (the C++ `onnxruntime_perf_test` is not in the wheel); it runs
  no warm-up and prints only the mean, so it is compared with the agent's mean.
- ExecuTorch: no benchmark tool ships in the executorch wheel (`executor_runner` and the Android benchmark
  app are built from source), so there is nothing to compare with here.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from sdk.agent import LocalAgent
from sdk.core.bundle import load_artifact

TOOLS = {"openvino": "benchmark_app", "litert": "litert-benchmark", "onnxruntime": "onnxruntime_test",
         "tensorrt": "onnxruntime_test"}
NO_TOOL = {"executorch": "no benchmark tool ships in the executorch wheel (executor_runner and the Android benchmark "
                         "app are built from source): nothing to compare the agent with on this host"}


def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [name]


def benchmark_app_command() -> list[str]:
    exe = Path(sys.executable).with_name("benchmark_app")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "openvino.tools.benchmark.main"]


def benchmark_app(model_xml: Path, iterations: int) -> float:
    """Median latency (ms) from benchmark_app: CPU, latency hint, sync API, one request, f32 (the agent's settings)."""
    argv = benchmark_app_command() + ["-m", str(model_xml), "-d", "CPU", "-hint", "latency", "-api", "sync",
                                      "-nireq", "1", "-infer_precision", "f32", "-niter", str(iterations)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Median:\s+([0-9.]+) (ms|us)", out)
    if not match:
        raise RuntimeError(f"no median latency in benchmark_app output:\n{out[-1000:]}")
    return float(match.group(1)) / (1000 if match.group(2) == "us" else 1)


def litert_benchmark(model: Path, iterations: int, warmup: int) -> float:
    """Median latency (ms) from litert-benchmark with the agent backend's thread count."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run(_tool("litert-benchmark") + ["--model", str(model), "--num_runs", str(iterations),
                                                     "--warmup_runs", str(warmup), "--num_threads",
                                                     str(os.cpu_count() or 1), "--result_json", str(out)],
                       capture_output=True, text=True, check=True)
        return float(json.loads(out.read_text())["latency"]["median_ms"])


def onnxruntime_test(model: Path, iterations: int) -> float:
    """Mean latency (ms) printed by onnxruntime_test (no warm-up: its first, slow run is in the mean)."""
    out = subprocess.run(_tool("onnxruntime_test") + [str(model), str(iterations)], capture_output=True, text=True,
                         check=True).stdout
    match = re.search(r"avg latency:\s+([0-9.]+) ms", out)
    if not match:
        raise RuntimeError(f"no latency in onnxruntime_test output:\n{out[-1000:]}")
    return float(match.group(1))


def check(bundle: Path, *, rounds: int, iterations: int, warmup: int = 10) -> dict[str, Any]:
    """Agent vs the runtime's own tool on one bundle; {"tool": None, "reason": ...} where no tool exists."""
    artifact = load_artifact(bundle)
    runtime = artifact.runtime
    if runtime in NO_TOOL:
        return {"runtime": runtime, "tool": None, "reason": NO_TOOL[runtime]}
    tool: Callable[[], float]
    stat = "p50"
    if runtime == "openvino":
        tool = lambda: benchmark_app(artifact.model_path, iterations)  # noqa: E731
    elif runtime == "litert":
        tool = lambda: litert_benchmark(artifact.model_path, iterations, warmup)  # noqa: E731
    else:
        tool, stat = (lambda: onnxruntime_test(artifact.model_path, iterations)), "mean"  # noqa: E731
    agent, own = [], []
    ran_on = None
    for _ in range(rounds):
        r = LocalAgent().benchmark(bundle, warmup=warmup, iterations=iterations, idle_s=0, energy=False)
        agent.append(r.latency_ms[stat])
        ran_on = r.ran_on
        own.append(tool())
    ratios = [a / b for a, b in zip(agent, own)]
    return {"runtime": runtime, "tool": TOOLS[runtime], "statistic": "median" if stat == "p50" else "mean",
            "ran_on": ran_on, "rounds": rounds, "iterations": iterations, "agent_ms": agent, "tool_ms": own,
            "ratio_median": statistics.median(ratios)}
