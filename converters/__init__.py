"""Registry of converters, keyed by format name.

Built-in converters live in `converters/<format>/` (the registered plug-in in its `__init__`, helpers in
submodules named for what they hold) and are imported only when first used, so a format's heavy toolchain
is never loaded for another format. Third-party converters register with
`converters.register` or an entry point in the `edge_sdk.converters` group.
"""
from __future__ import annotations

import importlib
from importlib import metadata

from converters.base import ConversionJob, ConversionResult, Converter
from sdk.core import formats as _formats
from sdk.core.errors import InternalError, ProfileError, UnsupportedError, closest
from sdk.core.formats import BUILTIN, ENTRY_POINT_GROUP

__all__ = ["Converter", "ConversionJob", "ConversionResult", "register", "get", "formats"]

_registry: dict[str, Converter] = {}


def register(converter_cls: type[Converter]) -> type[Converter]:
    """Class decorator: register a converter under its `format`. Duplicates are refused."""
    fmt = converter_cls.format
    if fmt in _registry:
        raise InternalError(f"a converter for format {fmt!r} is already registered ({type(_registry[fmt]).__name__})")
    _registry[fmt] = converter_cls()
    _formats.add(fmt)
    return converter_cls


def formats() -> list[str]:
    """Every format with a converter, built-in or from an entry point."""
    return _formats.known()


def get(fmt: str) -> Converter:
    """The converter for `fmt`, importing its module on first use."""
    if fmt not in _registry:
        eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        if fmt in BUILTIN:
            try:
                importlib.import_module(BUILTIN[fmt])
            except ImportError as exc:
                raise UnsupportedError(
                    f"the {fmt} converter needs its toolchain, which is not installed ({exc}). "
                    f"Install it with: pip install 'edge-sdk[{fmt}]'"
                ) from exc
        elif fmt in eps:
            eps[fmt].load()
        if fmt not in _registry:
            hint = closest(fmt, formats())
            raise ProfileError(f"no converter for format {fmt!r}{f' (did you mean {hint!r}?)' if hint else ''}; "
                               f"known formats: {', '.join(formats())}")
    return _registry[fmt]
