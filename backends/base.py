"""The backend contract: load a bundle's model file with a runtime and run it on numpy arrays.

Backends are the device side: they import numpy and their runtime only (never torch), and they
import the runtime inside `load`, so listing or importing backends costs nothing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import numpy as np


class Session(Protocol):
    """A loaded model. `ran_on` names what really executes it, e.g. 'onnxruntime 1.31 CPUExecutionProvider'.

    `stand_in` (optional; absent means None) says why this is not the target hardware when the runtime fell back,
    e.g. ONNX Runtime CPU standing in for TensorRT: budgets for the device are then not verified here.
    """

    ran_on: str

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class Backend:
    """Base class: subclasses set `runtime` and implement `unavailable_reason` and `load`."""

    runtime: ClassVar[str]

    def unavailable_reason(self) -> str | None:
        """None when the runtime can run here, else why not (missing package, wrong OS...)."""
        raise NotImplementedError  # pragma: no cover

    def load(self, model_path: Path, manifest: Mapping[str, Any]) -> Session:
        """Load `model_path` (a file or folder inside the bundle) described by `manifest`."""
        raise NotImplementedError  # pragma: no cover


class InputMismatchError(ValueError):
    """Inputs do not match the model's declared inputs (count, shape or dtype)."""


def check_inputs(inputs: Sequence[np.ndarray], manifest: Mapping[str, Any]) -> list[np.ndarray]:
    """Refuse inputs that differ from the manifest's, before a runtime sees (and maybe crashes on) them."""
    declared = manifest.get("inputs", [])
    if len(inputs) != len(declared):
        raise InputMismatchError(f"model takes {len(declared)} input(s) ({', '.join(d['name'] for d in declared)}), got {len(inputs)}")
    out = []
    for array, spec in zip(inputs, declared):
        array = np.asarray(array)
        if list(array.shape) != list(spec["shape"]):
            raise InputMismatchError(f"input {spec['name']!r} must have shape {list(spec['shape'])}, got {list(array.shape)}")
        if array.dtype != np.dtype(spec["dtype"]):
            raise InputMismatchError(f"input {spec['name']!r} must be {spec['dtype']}, got {array.dtype}")
        out.append(np.ascontiguousarray(array))
    return out
