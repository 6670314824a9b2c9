"""Which model formats have a converter: the built-in ones, entry points, and those registered at run time.

torch-free and import-free of `converters`, so a device profile can be checked against it (a profile's
format is valid iff a converter is registered for it) on the device side too.

>>> from sdk.core import formats
>>> "openvino" in formats.known()
True
"""
from __future__ import annotations

from importlib import metadata

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "add", "known"]

#: format -> the module that registers its converter when imported
BUILTIN = {
    "executorch": "converters.executorch",
    "coreml": "converters.coreml",
    "openvino": "converters.openvino",
    "onnx": "converters.onnx",
    "litert": "converters.litert",
}
ENTRY_POINT_GROUP = "edge_sdk.converters"
_registered: set[str] = set()


def add(fmt: str) -> None:
    """Record a converter registered at run time (`converters.register` calls this)."""
    _registered.add(fmt)


def known() -> list[str]:
    """Every format with a converter, built-in, from an entry point, or registered at run time."""
    return sorted(set(BUILTIN) | _registered | {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)})
