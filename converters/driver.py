"""The converter driver, written once for every format: checks, exclusions, the account's invariants, errors.

A format plug-in (`Converter` subclass) supplies only what differs: `build(job)` (capture, quantize with the
job's exclusion set, save, read back what the file stores), the op-name patterns of its toolchain's errors and
its own float reasons. `Converter.convert` runs the plug-in through `convert` below, so every format gets
the same request checks before any work, the same translation of a toolchain exception (kept as the cause),
and the same invariants on what the saved file stores:

- a layer kept in float that came out quantized is an `InternalError` (a bug, never shipped);
- a quantized recipe that quantized no layer is refused with the plug-in's reasons (an fp32 file labelled
  int4 is not the artifact asked for).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from sdk.core.errors import ConversionError, InternalError, ProfileError, SdkError, UnsupportedRecipeError

if TYPE_CHECKING:
    from converters.base import ConversionJob, ConversionResult, Converter
    from sdk.core.recipes import Config
    from sdk.core.results import QuantAccount
    from sdk.devices import DeviceProfile

__all__ = ["check_account", "check_keep_float", "check_target", "convert", "kept_by", "kept_reason", "stage",
           "translate"]

_STAGE = "_edge_sdk_stage"


def kept_by(layer: str, keep_float: Iterable[str]) -> str | None:
    """The keep_float entry covering `layer` (the layer itself or a module enclosing it), if any."""
    return next((k for k in sorted(keep_float) if layer == k or layer.startswith(k + ".")), None)


def kept_reason(layer: str, keep_float: Iterable[str]) -> str | None:
    """The report's reason for a layer kept in float on request (naming the enclosing kept module), else None."""
    kept = kept_by(layer, keep_float)
    if kept is None:
        return None
    return "kept in float on request" + ("" if kept == layer else f" (inside kept module {kept!r})")


def convert(converter: Converter, job: ConversionJob) -> ConversionResult:
    """Check the request, run the plug-in's `build`, translate its toolchain's exception, check the account."""
    check_target(converter, job.profile, job.precision)
    check_keep_float(converter, job)
    try:
        result = converter.build(job)
    except SdkError:
        raise
    except Exception as exc:  # a toolchain failure the plug-in did not classify
        raise translate(exc, converter, job) from exc
    if job.precision.quantizes:
        check_account(job, result.quantization)
    return result


def check_target(converter: Converter, profile: DeviceProfile, precision: Config) -> None:
    """Refuse, before any work, a profile option or a precision the plug-in does not take."""
    fmt = converter.format
    unknown = sorted(set(profile.converter) - set(converter.options))
    if unknown:
        raise ProfileError(f"device profile {profile.id!r}: [converter] key {unknown[0]!r} is not an option of the "
                           f"{fmt} converter (options: {', '.join(converter.options) or 'none'})")
    if precision.name not in converter.supported:
        supported = [p for p in profile.precisions if p in converter.supported] or sorted(converter.supported)
        raise UnsupportedRecipeError(precision.to_string(), fmt, profile.id, supported)


def check_keep_float(converter: Converter, job: ConversionJob) -> None:
    """Refuse keep_float names that are not modules of the model (quantized recipes; others keep all in float)."""
    if not job.precision.quantizes:
        return
    modules = {name for name, _ in job.model.named_modules()}
    missing = sorted(name for name in job.keep_float if name not in modules)
    if missing:
        raise ConversionError(f"keep_float names modules the model does not have: {', '.join(missing)}",
                              fmt=converter.format, device=job.profile.id,
                              hint="use qualified names as model.named_modules() lists them")


def check_account(job: ConversionJob, account: QuantAccount | None) -> None:
    """The invariants on what the saved file stores, from the plug-in's read-back account."""
    quantized = account.quantized_layers if account else []
    leaked = [layer for layer in quantized if kept_by(layer, job.keep_float) is not None]
    if leaked:
        raise InternalError(f"{job.profile.format} conversion for device {job.profile.id!r}: layer(s) "
                            f"{', '.join(leaked)} were to stay float, but the saved file stores their weights "
                            "quantized. Please report this with the model; meanwhile use 'fp16'")
    if not quantized:
        reasons = "; ".join(sorted({entry.reason for entry in account.float_layers} if account else set())[:3])
        raise ConversionError(f"{job.precision} quantized no layer of this model ({reasons or 'none reported'})",
                              fmt=job.profile.format, device=job.profile.id,
                              hint="use a precision these layers take (int8 quantizes convolutions and linears on "
                                   "every target), or keep the model in fp16/fp32")


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the toolchain step a block runs ("torch.export", "NNCF quantize"), for the driver's error message."""
    try:
        yield
    except SdkError:
        raise
    except Exception as exc:
        if not hasattr(exc, _STAGE):
            with contextlib.suppress(AttributeError):  # a few C-level exceptions take no attributes
                setattr(exc, _STAGE, name)
        raise


def translate(exc: Exception, converter: Converter, job: ConversionJob) -> ConversionError:
    """A toolchain's exception as the SDK's ConversionError: the stage, the op the plug-in's patterns find in the
    message, and the plug-in's hint for it."""
    op = converter.failed_op(str(exc))
    where = getattr(exc, _STAGE, None)
    text = f"{type(exc).__name__}: {converter.summary(exc)}"
    return ConversionError(f"{where} failed with {text}" if where else text, fmt=job.profile.format,
                           device=job.profile.id, op=op, hint=converter.hint_for(exc, op, where))
