"""edge-sdk: export a PyTorch model to a validated, device-ready artifact.

>>> import sdk
>>> sdk.devices.get("jetson").format
'onnx'

Heavy parts (torch, toolchains) load lazily on first use, so the device side (`sdk.agent`,
`sdk.core`, `backends`) imports without torch.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any

from sdk.core import bundle as _bundle
from sdk.core import errors as _errors
from sdk.core import metrics as _metrics
from sdk.core import parity as _parity
from sdk.core import recipes as _recipes
from sdk.version import __version__

# Modules that moved into sdk.core keep their old paths as aliases of the same module objects, so
# `from sdk.errors import SdkError` and `sdk.errors.SdkError` keep working (one class, not a copy).
for _old, _module in {"sdk.errors": _errors, "sdk.recipes": _recipes, "sdk.artifact": _bundle,
                      "sdk.parity": _parity, "sdk.metrics": _metrics}.items():
    sys.modules.setdefault(_old, _module)

__all__ = [
    "__version__",
    # entry points
    "export", "compress", "load_artifact", "optimize", "Budget",
    # results
    "ExportResult", "Artifact",
    # configs
    "Tolerance", "Fp32", "Fp16", "Bf16", "Int8Static", "Int8Dynamic", "Int4Weight", "Palettize",
    "Prune", "LowRank", "DepthwiseSeparable", "Distill", "Drop",
    # submodules
    "devices", "recipes", "errors", "agent", "farm",
]

_LAZY = {
    "export": ("sdk.pipeline", "export"),
    "ExportResult": ("sdk.pipeline", "ExportResult"),
    "compress": ("sdk.compression", "compress"),
    "optimize": ("sdk.optimizer", "optimize"),
    "Budget": ("sdk.optimizer", "Budget"),
    "load_artifact": ("sdk.core.bundle", "load_artifact"),
    "Artifact": ("sdk.core.bundle", "Artifact"),
    **{name: ("sdk.core.recipes", name) for name in (
        "Tolerance", "Fp32", "Fp16", "Bf16", "Int8Static", "Int8Dynamic", "Int4Weight", "Palettize",
        "Prune", "LowRank", "DepthwiseSeparable", "Distill")},
    "Drop": ("sdk.core.metrics", "Drop"),
    "devices": ("sdk.devices", None),
    "recipes": ("sdk.core.recipes", None),
    "errors": ("sdk.core.errors", None),
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
