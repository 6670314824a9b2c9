"""Registry of device-side runtimes, keyed by runtime name (the `runtime` of a device profile).

Imports numpy only. Each runtime's module is imported on first use; the runtime library itself is
imported only when a model is loaded.

>>> import backends
>>> "openvino" in backends.runtimes()
True
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Mapping

from backends.base import Backend, InputMismatchError, Session, check_inputs

__all__ = ["Backend", "Session", "InputMismatchError", "check_inputs", "register", "get", "runtimes", "load"]

BUILTIN = {
    "executorch": "backends.executorch",
    "coreml": "backends.coreml",
    "openvino": "backends.openvino",
    "tensorrt": "backends.onnx",
    "onnxruntime": "backends.onnx",
    "litert": "backends.litert",
}
_registry: dict[str, Backend] = {}


def register(backend_cls: type[Backend]) -> type[Backend]:
    """Class decorator: register a backend under its `runtime` name; duplicates are refused."""
    if backend_cls.runtime in _registry:
        raise ValueError(f"a backend for runtime {backend_cls.runtime!r} is already registered")
    _registry[backend_cls.runtime] = backend_cls()
    return backend_cls


def runtimes() -> list[str]:
    return sorted(set(BUILTIN) | set(_registry))


def get(runtime: str) -> Backend:
    """The backend for `runtime` (KeyError listing the known ones if there is none)."""
    if runtime not in _registry and runtime in BUILTIN:
        importlib.import_module(BUILTIN[runtime])
    if runtime not in _registry:
        raise KeyError(f"no backend for runtime {runtime!r}; known runtimes: {', '.join(runtimes())}")
    return _registry[runtime]


def load(bundle_dir: str | Path, manifest: Mapping[str, Any] | None = None) -> Session:
    """Load a bundle folder with the runtime its manifest names."""
    bundle_dir = Path(bundle_dir)
    if manifest is None:
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
    backend = get(manifest["runtime"])
    reason = backend.unavailable_reason()
    if reason:
        raise RuntimeError(f"runtime {manifest['runtime']!r} cannot run here: {reason}")
    return backend.load(bundle_dir / manifest["model_file"], manifest)
