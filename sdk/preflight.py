"""Checks that need no torch and no model, run before either loads: a typo fails in well under a second.

`sdk.export` calls `check_export` first; the CLI calls `check_cli_export` before it imports the model file. The
messages name what the caller typed: keyword arguments from Python, flags from the shell (`Terms`).

>>> check_export("jetson", recipe="int8")
Traceback (most recent call last):
...
sdk.core.errors.InvalidInputsError: static INT8 ('int8') for jetson-orin-nano needs calibration data ...
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sdk import devices, recipes
from sdk.devices import DeviceProfile
from sdk.core.errors import InvalidInputsError, OutputDirError, RecipeError, UnsupportedRecipeError, UserInputError

__all__ = ["Terms", "API", "CLI", "check_export", "check_cli_export", "check_output_dir"]


@dataclass(frozen=True)
class Terms:
    """How the caller spells each input: `calibration=` in Python, `--calibration` in the shell."""

    calibration: str
    output_dir: str
    recipe: str
    tolerance: str
    validate: str


API = Terms(calibration="calibration=", output_dir="output_dir=", recipe="recipe=", tolerance="tolerance=",
            validate="validate=")
CLI = Terms(calibration="--calibration", output_dir="--out", recipe="--recipe", tolerance="--min-cosine",
            validate="--agent")


def check_export(device: str | DeviceProfile, *, recipe: Any = None, calibration: Any = None, tolerance: Any = None,
                 output_dir: str | Path = "out", validate: bool | str = True, terms: Terms = API) -> DeviceProfile:
    """Every torch-free check of one export: device, recipe, calibration presence, tolerance, validate, output folder.

    Returns the device profile, so the caller resolves the name once.
    """
    profile = devices.get(device)
    try:
        plan = recipes.resolve(profile, recipe)
    except RecipeError as exc:
        raise type(exc)(f"{terms.recipe}: {exc}") from None
    if calibration is None:
        needing = [c for c in plan.configs if isinstance(c, (recipes.Int8Static, recipes.Distill))]
        if needing:
            raise InvalidInputsError(_calibration_needed(needing[0], profile, terms))
    if tolerance is not None and not isinstance(tolerance, recipes.Tolerance):
        raise UserInputError(f"{terms.tolerance} must be an sdk.Tolerance, e.g. sdk.Tolerance(min_cosine=0.99), "
                             f"got {type(tolerance).__name__}")
    if isinstance(validate, str):
        if not validate.startswith(("http://", "https://")):
            raise UserInputError(f"{terms.validate} must be an agent URL such as http://jetson.local:8765, "
                                 f"got {validate!r}")
    elif not isinstance(validate, bool) and not callable(getattr(validate, "benchmark", None)):
        raise UserInputError(f"validate= must be True, False, an agent URL or an agent (Client, LocalAgent, a farm), "
                             f"got {validate!r}")
    check_output_dir(output_dir, profile.id, terms)
    return profile


def _calibration_needed(config: recipes.Config, profile: DeviceProfile, terms: Terms) -> str:
    if isinstance(config, recipes.Distill):
        return (f"'{config}' trains the compressed model on unlabeled inputs: give {terms.calibration} "
                "(a list or DataLoader of input tuples; a few hundred real samples is typical)")
    if "int8-dynamic" in profile.precisions:
        instead = "or use 'int8-dynamic', which quantizes activations at run time and needs none"
    else:
        others = [p for p in profile.precisions if p not in ("int8", "fp32")]
        instead = f"or use one of {', '.join(others)} ({profile.id} has no run-time activation quantization)"
    return (f"static INT8 ('{config}') for {profile.id} needs calibration data to set activation ranges: give "
            f"{terms.calibration} (an iterable of input tuples; 100-500 real samples is typical), {instead}")


def check_output_dir(output_dir: str | Path, name: str, terms: Terms = API) -> None:
    """The bundle's folder `<output_dir>/<name>` can be created: no file in the way, the nearest folder writable."""
    out = Path(output_dir)
    where = f"output folder {out} (from {terms.output_dir})"
    for path in (out / name, out):
        if path.exists() and not path.is_dir():
            raise OutputDirError(f"{where}: {path} is a file, not a folder; pick another folder or move the file")
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.is_file():
        raise OutputDirError(f"{where}: {existing} is a file, so no folder can be made under it; pick another folder")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputDirError(f"{where}: {existing} is not writable by this user; pick a writable folder")


def _check_spec(spec: str, flag: str) -> None:
    """`file.py:name` or `package.module:name`, with the file present (importing it is what loads torch)."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise UserInputError(f"{flag} must look like path/to/file.py:name or package.module:name, got {spec!r}")
    if target.endswith(".py") and not Path(target).is_file():
        raise UserInputError(f"{flag}: file {target} does not exist (run from the folder it is relative to, or "
                             "give a package.module:name)")


def check_cli_export(model: str, device: Sequence[str], *, recipe: str | None, calibration: str | None,
                     out: Path, min_cosine: float | None, agent: str | None) -> list[str]:
    """The CLI's checks before the model file is imported; returns the device ids to export to."""
    _check_spec(model, "MODEL")
    if calibration:
        _check_spec(calibration, "--calibration")
    if min_cosine is not None and (math.isnan(min_cosine) or not -1.0 <= min_cosine <= 1.0):
        raise UserInputError(f"--min-cosine must be in [-1, 1], got {min_cosine}")
    if [d.lower() for d in device] == ["all"]:
        profiles = devices.list()
    else:
        profiles = [devices.get(d) for d in device]
    tolerance = recipes.Tolerance(min_cosine=min_cosine) if min_cosine is not None else None
    for profile in profiles:
        try:
            check_export(profile, recipe=recipe, calibration=calibration, tolerance=tolerance, output_dir=out,
                         validate=agent or True, terms=CLI)
        except UnsupportedRecipeError:
            if len(profiles) == 1:
                raise  # with several devices, that device's row says it (the others still export)
    return [p.id for p in profiles]
