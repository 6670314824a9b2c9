"""An export described in a TOML file, for `edge-sdk export --config recipe.toml`.

Keys mirror the command's flags; a flag given on the command line wins over the file. Unknown keys and wrong
types are refused with the file and key named, before anything loads.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "recipe.toml"
>>> _ = path.write_text('model = "samples.mobilenet_v2:build"\\ndevice = ["intel-cpu"]\\nrecipe = ["int8"]\\n')
>>> load(path).recipe
'int8'
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from pathlib import Path

from sdk.errors import UserInputError, closest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ExportConfig", "load"]


@dataclass(frozen=True)
class ExportConfig:
    """What `edge-sdk export` takes, from a file: each field is the flag of the same name."""

    model: str | None = None
    device: tuple[str, ...] = ()
    out: str | None = None
    recipe: str | None = None
    calibration: str | None = None
    shape: tuple[str, ...] = ()
    validate: bool | None = None
    agent: str | None = None
    min_cosine: float | None = None


_TYPES = {"model": str, "out": str, "recipe": (str, list), "calibration": str, "validate": bool, "agent": str,
          "min_cosine": (int, float), "device": (str, list), "shape": (str, list)}


def load(path: str | Path) -> ExportConfig:
    """Read and check `path`; lists (device, shape, recipe) may also be given as one string."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"--config: file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"--config {path}: not valid TOML: {exc}") from None
    known = [f.name for f in fields(ExportConfig)]
    values = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            hint = closest(name, known)
            raise UserInputError(f"--config {path}: unknown key {key!r}{f' (did you mean {hint!r}?)' if hint else ''};"
                                 f" keys are {', '.join(known)}")
        if isinstance(value, bool) and name != "validate" or not isinstance(value, _TYPES[name]):
            raise UserInputError(f"--config {path}: {key} has the wrong type ({type(value).__name__})")
        if isinstance(value, list) and not all(isinstance(v, str) for v in value):
            raise UserInputError(f"--config {path}: {key} must be a list of strings")
        if name in ("device", "shape"):
            value = tuple([value] if isinstance(value, str) else value)
        elif name == "recipe" and isinstance(value, list):
            value = ",".join(value)
        elif name == "min_cosine":
            value = float(value)
        values[name] = value
    return ExportConfig(**values)


def merge(config: str | Path | None, **flags: object) -> ExportConfig:
    """The command line's flags over the file's keys over the defaults; MODEL and --device must come from one."""
    base = load(config) if config else ExportConfig()
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in flags.items() if v not in (None, [], ())}
    merged = ExportConfig(**{**{f.name: getattr(base, f.name) for f in fields(ExportConfig)}, **given})
    missing = [what for what, ok in (("MODEL", merged.model), ("--device", merged.device)) if not ok]
    if missing:
        raise UserInputError(f"give {' and '.join(missing)} on the command line, or model = / device = in a "
                             "--config file")
    return merged
