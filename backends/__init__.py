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
from sdk.core.errors import RegistryError, RuntimeUnavailableError, closest

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
        raise RegistryError(f"a backend for runtime {backend_cls.runtime!r} is already registered "
                            f"({type(_registry[backend_cls.runtime]).__name__}); pick another runtime name")
    _registry[backend_cls.runtime] = backend_cls()
    return backend_cls


def runtimes() -> list[str]:
    return sorted(set(BUILTIN) | set(_registry))


def get(runtime: str) -> Backend:
    """The backend for `runtime` (RuntimeUnavailableError naming the known ones if there is none)."""
    if runtime not in _registry and runtime in BUILTIN:
        importlib.import_module(BUILTIN[runtime])
    if runtime not in _registry:
        hint = closest(runtime, runtimes())
        did_you_mean = f" Did you mean {hint!r}?" if hint else ""
        raise RuntimeUnavailableError(f"no backend for runtime {runtime!r}.{did_you_mean} Known runtimes: "
                                      f"{', '.join(runtimes())}")
    return _registry[runtime]


def load(bundle_dir: str | Path, manifest: Mapping[str, Any] | None = None) -> Session:
    """Load a bundle folder with the runtime its manifest names."""
    bundle_dir = Path(bundle_dir)
    if manifest is None:
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
    backend = get(manifest["runtime"])
    reason = backend.unavailable_reason()
    if reason:
        raise RuntimeUnavailableError(f"runtime {manifest['runtime']!r} cannot run here: {reason}")
    return backend.load(bundle_dir / manifest["model_file"], manifest)
