"""The converter contract: torch model in, model file(s) of one format out.

A converter is registered by format name (`converters.register`). It declares which precision
configs it implements and implements `build`; `convert` runs it through the driver
(`converters.driver`), which does the checks, the error translation and the invariants once for all.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from sdk.core.errors import first_line
from sdk.core.results import Coverage, QuantAccount, Unavailable

if TYPE_CHECKING:
    import torch

    from sdk.devices import DeviceProfile
    from sdk.core.recipes import Config, Recipe


@dataclass
class ConversionResult:
    """What a converter wrote into its work folder.

    `model_file` is the file or folder a runtime loads, relative to the work folder. `coverage` says how
    much of the graph runs on the target's accelerated path, or why the host cannot tell. `quantization` is
    the converter's account of what the file stores (None for an fp32 file).
    """

    model_file: str
    coverage: Coverage | Unavailable = Unavailable("the converter reports no coverage")
    quantization: QuantAccount | None = None
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
    """Base class of a format plug-in: subclasses set `format`, `supported`, `options` and implement `build`."""

    format: ClassVar[str]
    #: precision config names this converter implements ("fp32", "fp16", "int8", ...)
    supported: ClassVar[frozenset[str]] = frozenset({"fp32"})
    #: keys allowed in a profile's [converter] table, with their meaning
    options: ClassVar[dict[str, str]] = {}
    #: patterns whose group 1 is the failing op's name in the toolchain's error text
    error_patterns: ClassVar[tuple[re.Pattern[str], ...]] = ()
    #: what to try when the toolchain fails in a way the plug-in did not classify
    error_hint: ClassVar[str] = ("run with logging at DEBUG for the toolchain's full message, or try another device "
                                 "with a different format (see `edge-sdk devices`)")

    def convert(self, job: ConversionJob) -> ConversionResult:
        """Convert through the driver: request checks, `build`, error translation, invariants on the account."""
        from converters import driver

        return driver.convert(self, job)

    def failed_op(self, message: str) -> str | None:
        """The op a toolchain error message names, found with `error_patterns`."""
        return first_match(self.error_patterns, message)

    def summary(self, exc: Exception) -> str:
        """The useful part of a toolchain's (often pages-long) error message."""
        return first_line(exc)[:300]

    def hint_for(self, exc: Exception, op: str | None, stage: str | None) -> str:
        """What to try after the toolchain raised `exc` in `stage` (at `op`, where its message names one)."""
        return self.error_hint

    def build(self, job: ConversionJob) -> ConversionResult:  # pragma: no cover - abstract
        """Capture, quantize (leaving `job.keep_float` in float), save, and read back what the file stores."""
        raise NotImplementedError


def first_match(patterns: Iterable[re.Pattern[str]], message: str) -> str | None:
    """Group 1 of the first pattern found in `message`: how converters pull the failing op's name out of a
    toolchain's error text, whose wording differs by toolchain and version (hence several patterns)."""
    return next((found.group(1) for pattern in patterns if (found := pattern.search(message))), None)
