"""Each runtime's plain default path, as its own getting-started docs write it: the row a user who does not
use this SDK would measure.

- OpenVINO: `ov.convert_model(model, example_input=...)`, `ov.save_model` (whose default stores the weights
  in fp16), `core.compile_model(path, "CPU")` with no config: on a CPU with bf16 instructions the plugin then
  computes in bf16 (the SDK's backend asks for f32).
- ONNX Runtime: `torch.onnx.export(model, args, path)` with its defaults and `InferenceSession(path)`.
- ExecuTorch: `to_edge_transform_and_lower(torch.export.export(...), partitioner=[XnnpackPartitioner()])`,
  the XNNPACK default of ExecuTorch's docs (without a delegate the portable kernels are reference code).
- LiteRT: `litert_torch.convert(model, args).export(path)` and `Interpreter(model_path=path)` with its
  default thread count.

`build` (torch side) writes the model file; `measure` runs it in a fresh process (like the agent, so that
torch's threads in the driver process stay out of the timing) with the runtime's default options, timing
the same way as the agent (per-call wall clock after a warm-up) and returning the outputs on the held-out
inputs for the agreement figure.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FILES = {"openvino": "model.xml", "onnx": "model.onnx", "executorch": "model.pte", "litert": "model.tflite"}
DESCRIPTION = {
    "openvino": "ov.convert_model + ov.save_model (fp16-compressed weights) + compile_model(CPU), default config",
    "onnx": "torch.onnx.export defaults + InferenceSession defaults",
    "executorch": "torch.export + to_edge_transform_and_lower(XnnpackPartitioner) defaults",
    "litert": "litert_torch.convert defaults + Interpreter defaults",
}


def build(fmt: str, model: Any, example_inputs: tuple, workdir: Path) -> Path:
    """Write the runtime's default artifact of `model` into `workdir`; returns the model file."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / FILES[fmt]
    if fmt == "openvino":
        import openvino as ov

        ov.save_model(ov.convert_model(model, example_input=example_inputs), str(path))
    elif fmt == "onnx":
        import torch

        torch.onnx.export(model, example_inputs, str(path))
    elif fmt == "executorch":
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        program = to_edge_transform_and_lower(torch.export.export(model, example_inputs),
                                              partitioner=[XnnpackPartitioner()]).to_executorch()
        path.write_bytes(program.buffer)
    elif fmt == "litert":
        import litert_torch

        litert_torch.convert(model, example_inputs).export(str(path))
    else:
        raise ValueError(f"no default path for format {fmt!r}")
    return path


def size_bytes(model_file: Path) -> int:
    """The model file plus its weights file where there is one (OpenVINO's model.bin, ONNX's model.onnx.data)."""
    return sum(p.stat().st_size for p in model_file.parent.glob("model.*") if p.is_file())


def measure(fmt: str, model_file: Path, timing_inputs: Sequence[np.ndarray], eval_inputs: Sequence[Sequence[np.ndarray]],
            *, warmup: int, iterations: int, timeout_s: float = 900) -> dict[str, Any]:
    """Latency stats and outputs on `eval_inputs`, measured in a fresh process; {"error": ...} when it failed."""
    with tempfile.TemporaryDirectory(prefix="bench-default-") as tmp:
        work = Path(tmp)
        arrays = {f"t_{i}": a for i, a in enumerate(timing_inputs)}
        arrays |= {f"e{k}_{i}": a for k, sample in enumerate(eval_inputs) for i, a in enumerate(sample)}
        np.savez(work / "inputs.npz", **arrays)
        argv = [sys.executable, "-m", "benchmarks.default_path", fmt, str(model_file), str(work / "inputs.npz"),
                str(work / "result"), str(warmup), str(iterations)]
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()
            return {"error": f"{fmt} default runtime failed (exit {proc.returncode}): {tail[-1] if tail else ''}"}
        result = json.loads((work / "result.json").read_text())
        with np.load(work / "result.npz") as data:
            result["outputs"] = [data[f"e{k}"] for k in range(len(eval_inputs))]
    return result


# --- the child process: torch-free except for ExecuTorch, whose pybindings take torch tensors ---

def _open(fmt: str, model_file: str) -> tuple[Callable[[list[np.ndarray]], np.ndarray], str]:
    """(run: inputs -> first output, what ran) with the runtime's default options."""
    if fmt == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(model_file, "CPU")
        request = compiled.create_infer_request()
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        return (lambda xs: np.array(request.infer(xs)[compiled.output(0)]),
                f"openvino {ov.get_version().split('-')[0]} CPU, default config (inference precision {precision})")
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(model_file)
        names = [i.name for i in session.get_inputs()]
        return (lambda xs: session.run(None, dict(zip(names, xs)))[0],
                f"onnxruntime {ort.__version__} {session.get_providers()[0]}, default session options")
    if fmt == "executorch":
        import torch
        from executorch.runtime import Runtime

        method = Runtime.get().load_program(Path(model_file)).load_method("forward")
        return (lambda xs: method.execute([torch.from_numpy(x) for x in xs])[0].numpy(),
                "executorch pybindings, XNNPACK delegate, default runtime")
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=model_file).get_signature_runner()
        names = list(runner.get_input_details())
        out = list(runner.get_output_details())[0]

        def run(xs: list[np.ndarray]) -> np.ndarray:
            feeds = {n: x.astype(runner.get_input_details()[n]["dtype"], copy=False) for n, x in zip(names, xs)}
            return runner(**feeds)[out]
        return run, "ai_edge_litert Interpreter, default options (default XNNPACK delegate, default threads)"
    raise ValueError(fmt)


def _child(fmt: str, model_file: str, inputs_npz: str, result_stem: str, warmup: int, iterations: int) -> None:
    from sdk.agent.bench import latency_stats

    with np.load(inputs_npz) as data:
        timing = [data[k] for k in sorted((k for k in data if k.startswith("t_")), key=lambda k: int(k[2:]))]
        n_eval = len({k.split("_")[0] for k in data if k.startswith("e")})
        evals = [[data[f"e{k}_{i}"] for i in range(len(timing))] for k in range(n_eval)]
    start = time.perf_counter()
    run, ran_on = _open(fmt, model_file)
    load_ms = (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        run(timing)
    samples = []
    for _ in range(iterations):
        t = time.perf_counter()
        run(timing)
        samples.append((time.perf_counter() - t) * 1e3)
    np.savez(f"{result_stem}.npz", **{f"e{k}": run(x) for k, x in enumerate(evals)})
    Path(f"{result_stem}.json").write_text(json.dumps({"ran_on": ran_on, "load_ms": load_ms,
                                                       "latency_ms": latency_stats(samples)}))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
