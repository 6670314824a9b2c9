"""Toolchain helpers the conversion, the quantizer and the account share: the installed version of a package
(litert-torch, ai-edge-quantizer), and their progress output kept quiet."""
from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide litert-torch's progress lines and ai-edge-quantizer's size prints, unless the user asked for
    them with LITERT_TORCH_SHOW_PROGRESS."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "n"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        os.environ.pop(key, None)
