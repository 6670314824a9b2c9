"""Bundle folders on disk after the fact: leftovers of killed exports, and permissions that follow the umask.

An export stages its bundle in `<out>/.<device>.partial-<pid>-*` (sdk.artifact.BundleWriter). A hard kill
(SIGKILL, power loss) leaves that folder behind; the next export to the same folder removes the ones whose process
is gone. A staging folder is created private (mode 0700, tempfile.mkdtemp); the finished bundle gets the mode the
user's umask gives a new folder, like any folder they create.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["clean_stale_partials", "apply_umask"]

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale_partials(output_dir: str | Path, name: str) -> list[Path]:
    """Remove `<output_dir>/.<name>.partial-<pid>-*` folders whose process no longer runs; returns what went."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    removed = []
    for entry in out.iterdir():
        match = _PARTIAL.match(entry.name)
        if match and match["name"] == name and entry.is_dir() and not _alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def apply_umask(folder: str | Path) -> None:
    """Give `folder` the permissions a new folder gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(folder, 0o777 & ~mask)
