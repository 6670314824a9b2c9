"""The converter contract: torch model in, model file(s) of one format out.

A converter is registered by format name (`converters.register`). It declares which precision
configs it implements; `sdk.export` checks the recipe against that before any work starts.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

if TYPE_CHECKING:
    import torch

    from sdk.devices import DeviceProfile
    from sdk.core.recipes import Config, Recipe


@dataclass
class ConversionResult:
    """What a converter wrote into its work folder.

    `model_file` is the file or folder a runtime loads, relative to the work folder. `coverage` says how
    much of the graph runs on the target's accelerated path (None with `coverage_reason` where the
    toolchain cannot tell). `quantization` is the converter's account of what it quantized.
    """

    model_file: str
    coverage: dict[str, Any] | None = None
    coverage_reason: str | None = None
    quantization: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    #: what the runtime must know that differs from the profile's [converter] table (e.g. the real ONNX opset)
    runtime_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ConversionJob:
    """Everything a converter needs, in one object so the signature stays stable as features grow."""

    model: "torch.nn.Module"
    example_inputs: tuple["torch.Tensor", ...]
    recipe: "Recipe"
    profile: "DeviceProfile"
    workdir: Path
    input_names: Sequence[str]
    output_names: Sequence[str]
    calibration: list[tuple["torch.Tensor", ...]] | None = None
    #: qualified names of torch modules (as in model.named_modules()) to leave in float, mapped by each
    #: converter onto its toolchain's own exclusion mechanism (PT2E module filter, NNCF ignored_scope, ...)
    keep_float: frozenset[str] = frozenset()

    @property
    def precision(self) -> "Config":
        return self.recipe.precision


class Converter:
    """Base class: subclasses set `format`, `supported`, `options` and implement `convert`."""

    format: ClassVar[str]
    #: precision config names this converter implements ("fp32", "fp16", "int8", ...)
    supported: ClassVar[frozenset[str]] = frozenset({"fp32"})
    #: keys allowed in a profile's [converter] table, with their meaning
    options: ClassVar[dict[str, str]] = {}

    def convert(self, job: ConversionJob) -> ConversionResult:  # pragma: no cover - abstract
        raise NotImplementedError


def first_match(patterns: Iterable[re.Pattern[str]], message: str) -> str | None:
    """Group 1 of the first pattern found in `message`: how converters pull the failing op's name out of a
    toolchain's error text, whose wording differs by toolchain and version (hence several patterns)."""
    return next((found.group(1) for pattern in patterns if (found := pattern.search(message))), None)
