"""ONNX runtimes: `tensorrt` (TensorRT through ONNX Runtime's TensorRT execution provider) and plain `onnxruntime`.

One code path: an ONNX Runtime session whose execution providers are chosen from what this ONNX Runtime
build offers. On a Jetson with onnxruntime-gpu, `tensorrt` builds a TensorRT engine with the builder
flags the recipe needs (fp16; INT8 for the Q/DQ graphs of "int8" and "int4", which TensorRT's explicit
quantization requires before version 10's strongly typed networks; fp16 for "int4", whose INT4 weights
feed fp16 matrix multiplies); elsewhere it falls back to CUDA, then CPU, and `ran_on` says which ran and why.
The TensorRT-provider path is not exercised on this project's CPU-only CI.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import backends
from backends.base import Backend, check_inputs

__all__ = ["OnnxRuntimeBackend", "OrtSession", "TensorRTBackend"]

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class OrtSession:
    """A loaded ONNX model; inputs and outputs bound by the manifest's names (in_i / out_i)."""

    def __init__(self, session: Any, manifest: Mapping[str, Any], ran_on: str):
        self._session, self._manifest, self.ran_on = session, manifest, ran_on
        self.stand_in: str | None = None
        self._inputs = [spec["name"] for spec in manifest["inputs"]]
        self._outputs = [spec["name"] for spec in manifest["outputs"]]

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = check_inputs(inputs, self._manifest)
        return list(self._session.run(self._outputs, dict(zip(self._inputs, arrays))))


class _OrtBackend(Backend):
    #: execution providers in order of preference, used when this ONNX Runtime build has them
    preference: tuple[str, ...] = (CUDA, CPU)

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            return f"onnxruntime is not installed ({exc}); pip install onnxruntime (onnxruntime-gpu for CUDA/TensorRT)"
        return None

    def load(self, model_path: Path, manifest: Mapping[str, Any]) -> OrtSession:
        import onnxruntime as ort

        options = ort.SessionOptions()
        threads = manifest.get("runtime_options", {}).get("num_threads")
        if threads:
            options.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        providers = [self._provider(name, manifest) for name in self.preference if name in available]
        session = ort.InferenceSession(str(model_path), options, providers=providers)
        used = session.get_providers()[0]  # ORT drops a provider that fails to initialise (e.g. no GPU)
        ran_on = f"onnxruntime {ort.__version__} {used}"
        loaded = OrtSession(session, manifest, ran_on + self._caveat(used, available, manifest))
        loaded.stand_in = self._stand_in(used)
        return loaded

    def _stand_in(self, used: str) -> str | None:
        return None

    def _provider(self, name: str, manifest: Mapping[str, Any]) -> str | tuple[str, dict[str, Any]]:
        return name

    def _caveat(self, used: str, available: list[str], manifest: Mapping[str, Any]) -> str:
        return ""


@backends.register
class OnnxRuntimeBackend(_OrtBackend):
    """Plain ONNX Runtime: CUDA when this build and machine have it, else CPU."""

    runtime = "onnxruntime"


@backends.register
class TensorRTBackend(_OrtBackend):
    """TensorRT engines built by ONNX Runtime's TensorRT provider; CUDA or CPU stand in where it is missing."""

    runtime = "tensorrt"
    preference = (TRT, CUDA, CPU)

    def _provider(self, name: str, manifest: Mapping[str, Any]) -> str | tuple[str, dict[str, Any]]:
        if name != TRT:
            return name
        # Engines take minutes to build on a Jetson: cache them (keyed by model and options by ORT).
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-sdk" / "tensorrt"
        cache.mkdir(parents=True, exist_ok=True)
        flags = _engine_flags(manifest)
        return name, {"trt_fp16_enable": "fp16" in flags, "trt_int8_enable": "int8" in flags,
                      "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}

    def _stand_in(self, used: str) -> str | None:
        return None if used == TRT else f"ONNX Runtime {used} ran in place of TensorRT"

    def _caveat(self, used: str, available: list[str], manifest: Mapping[str, Any]) -> str:
        flags = _engine_flags(manifest)
        if used == TRT:
            return f" ({' + '.join([*flags, 'fp32'])} engine; ONNX Runtime gives nodes TensorRT rejects to CUDA)"
        why = (f"{TRT} failed to initialise (TensorRT libraries or GPU missing)" if TRT in available
               else f"this onnxruntime build has no {TRT} (it has {', '.join(available)})")
        lost = ("; the recipe's fp16 engine precision is not applied, the fp32 graph ran" if flags == ["fp16"]
                else "; the Q/DQ graph ran on ONNX Runtime's own kernels" if "int8" in flags else "")
        return f" (stand-in for TensorRT: {why}{lost})"


def _engine_flags(manifest: Mapping[str, Any]) -> list[str]:
    """The TensorRT builder precisions the bundle's recipe needs, besides fp32."""
    precisions = {entry.partition(":")[0] for entry in manifest.get("recipe", [])}
    return [flag for flag, needed_by in (("fp16", {"fp16", "int4"}), ("int8", {"int8", "int4"}))
            if precisions & needed_by]
