"""edge-sdk: export a PyTorch model to a validated, device-ready artifact.

>>> import sdk
>>> sdk.devices.get("jetson").format
'onnx'

Heavy parts (torch, toolchains) load lazily on first use, so the device side (`sdk.agent`,
`sdk.artifact`, `backends`) imports without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from sdk.version import __version__

__all__ = [
    "__version__",
    # entry points
    "export", "compress", "load_artifact",
    # results
    "ExportResult", "Artifact",
    # configs
    "Tolerance", "Fp32", "Fp16", "Int8Static", "Int8Dynamic", "Int4Weight", "Palettize",
    "Prune", "LowRank", "DepthwiseSeparable", "Distill", "Drop",
    # submodules
    "devices", "recipes", "errors", "agent", "farm",
]

_LAZY = {
    "export": ("sdk.pipeline", "export"),
    "ExportResult": ("sdk.pipeline", "ExportResult"),
    "compress": ("sdk.compression", "compress"),
    "load_artifact": ("sdk.artifact", "load_artifact"),
    "Artifact": ("sdk.artifact", "Artifact"),
    **{name: ("sdk.recipes", name) for name in (
        "Tolerance", "Fp32", "Fp16", "Int8Static", "Int8Dynamic", "Int4Weight", "Palettize",
        "Prune", "LowRank", "DepthwiseSeparable", "Distill")},
    "Drop": ("sdk.metrics", "Drop"),
    "devices": ("sdk.devices", None),
    "recipes": ("sdk.recipes", None),
    "errors": ("sdk.errors", None),
    "agent": ("sdk.agent", None),
    "farm": ("sdk.farm", None),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'sdk' has no attribute {name!r}")
    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
