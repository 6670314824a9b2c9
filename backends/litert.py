"""LiteRT (TFLite) runtime: runs a `.tflite` bundle with `ai_edge_litert`, or `tflite_runtime` where only that exists.

The interpreter applies the XNNPACK delegate by default (as on Android), so `ran_on` reports how many of the
graph's ops XNNPACK took, read from the runtime's own node list after delegation. Tensors are matched by the
model's signature names (`in_i`/`out_i`, which `converters/litert` writes), never by position: LiteRT may list
a signature's tensors in another order. Quantized (int8/uint8/int16) I/O is converted with the tensor's own
scale and zero point, so callers always pass and receive the manifest's float arrays.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from backends import register
from backends.base import Backend, InputMismatchError, check_inputs
from sdk.core.errors import BundleError
from sdk.core.readers.litert import delegation, interpreter_module, open_interpreter


def _quantized(detail: Mapping[str, Any]) -> bool:
    scale, _ = detail["quantization"]
    return scale != 0 and np.issubdtype(detail["dtype"], np.integer)


def _to_tensor(name: str, array: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """`array` in the dtype the tensor holds: quantized with the tensor's own parameters, or cast within its kind."""
    dtype = np.dtype(detail["dtype"])
    if array.dtype == dtype:
        return array
    if _quantized(detail) and np.issubdtype(array.dtype, np.floating):
        scale, zero_point = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale) + zero_point, info.min, info.max).astype(dtype)
    # litert-torch downcasts 64-bit I/O to 32 bits by default (enable_x64=False): cast, refusing lost values.
    if array.dtype.kind == dtype.kind:
        cast = array.astype(dtype)
        if dtype.kind in "iu" and not np.array_equal(cast, array):
            raise InputMismatchError(f"input {name!r} has values outside the model's {dtype} range")
        return cast
    raise InputMismatchError(f"input {name!r} is {array.dtype}, the model's tensor is {dtype}")


def _from_tensor(array: np.ndarray, detail: Mapping[str, Any], dtype: np.dtype) -> np.ndarray:
    """An output tensor in the manifest's dtype, dequantized when the tensor is quantized."""
    if _quantized(detail):
        scale, zero_point = detail["quantization"]
        array = (array.astype(np.float32) - zero_point) * np.float32(scale)
    return array.astype(dtype, copy=False)


class LiteRTSession:
    """A loaded `.tflite` model that takes and returns arrays in the manifest's `in_i`/`out_i` order."""

    def __init__(self, interpreter: Any, manifest: Mapping[str, Any], ran_on: str):
        self.ran_on = ran_on
        self._manifest = manifest
        self._runner = interpreter.get_signature_runner()
        self._inputs = self._runner.get_input_details()
        self._outputs = self._runner.get_output_details()
        for kind, declared, found in (("input", manifest["inputs"], self._inputs),
                                      ("output", manifest["outputs"], self._outputs)):
            names = [spec["name"] for spec in declared]
            if sorted(names) != sorted(found):
                raise BundleError(f"the .tflite signature's {kind}s are {sorted(found)}, the manifest declares "
                                  f"{names}: the bundle's model and manifest do not belong together; export it again")

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = check_inputs(inputs, self._manifest)
        feeds = {spec["name"]: _to_tensor(spec["name"], a, self._inputs[spec["name"]])
                 for spec, a in zip(self._manifest["inputs"], arrays)}
        results = self._runner(**feeds)
        return [_from_tensor(results[spec["name"]], self._outputs[spec["name"]], np.dtype(spec["dtype"]))
                for spec in self._manifest["outputs"]]


@register
class LiteRTBackend(Backend):
    """LiteRT interpreter on the CPU with its default XNNPACK delegate, as an Android app runs it."""

    runtime = "litert"

    def unavailable_reason(self) -> str | None:
        try:
            interpreter_module()
        except ImportError as exc:
            return f"{exc}: pip install ai-edge-litert (or tflite-runtime, on boards that ship only that)"
        return None

    def load(self, model_path: Path, manifest: Mapping[str, Any]) -> LiteRTSession:
        threads = int(manifest.get("runtime_options", {}).get("num_threads") or os.cpu_count() or 1)
        interpreter, label = open_interpreter(model_path, threads)
        stats = delegation(interpreter)
        accel = (f"XNNPACK delegate on {stats['delegated_ops']}/{stats['ops']} ops" if stats["delegated_ops"]
                 else "no delegate (built-in CPU kernels)")
        return LiteRTSession(interpreter, manifest, f"{label}, {accel}, {threads} threads")
