"""The converter driver, written once for every format: checks, exclusions, the account's invariants, errors.

A format plug-in (`Converter` subclass) supplies only what differs: `build(job)` (capture, quantize with the
job's exclusion set, save, read back what the file stores), the op-name patterns of its toolchain's errors and
its own float reasons. `Converter.convert` runs the plug-in through `convert` below, so every format gets
the same request checks before any work, the same translation of a toolchain exception (kept as the cause),
and the same invariants on what the saved file stores:

- a layer kept in float that came out quantized is an `InternalError` (a bug, never shipped);
- a quantized recipe that quantized no layer, or left more than half of the model's weight layers (convs and
  linears) in float without being asked (`keep_float`), is refused with the plug-in's reasons (an fp32 file
  labelled int4 is not the artifact asked for).

A model whose forward depends on a tensor's value (a Python branch on the data) is refused on every format:
torch.export refuses it, and `refuse_traced_branches` checks the one capture that does not (TorchScript's tracer,
which freezes the branch the example took and only warns).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from converters.quant.sensitivity import quantizable_layers
from sdk.core.errors import ConversionError, InternalError, ProfileError, SdkError, UnsupportedRecipeError, first_line

if TYPE_CHECKING:
    from converters.base import ConversionJob, ConversionResult, Converter
    from sdk.core.recipes import Config
    from sdk.core.results import QuantAccount
    from sdk.devices import DeviceProfile

__all__ = ["check_account", "check_keep_float", "check_target", "convert", "kept_by", "kept_reason",
           "refuse_traced_branches", "stage", "translate"]

log = logging.getLogger("sdk")
_STAGE = "_edge_sdk_stage"
#: how many float layers a refusal names, per reason
_NAMED = 6
#: TorchScript's TracerWarning when Python reads a tensor's value: the trace keeps what that value was
_TRACER_READ = re.compile(r"Converting a tensor to a Python|Iterating over a tensor")
_DATA_DEPENDENT = ("the model's forward depends on a tensor's value (data-dependent control flow: a Python branch "
                   "or a size computed from the data), which a graph captured at the example's value gets wrong "
                   "for other inputs")
_DATA_DEPENDENT_HINT = ("express the branch as tensor ops (torch.where(cond, a, b), or torch.cond for whole "
                        "sub-graphs) or move it out of the model; torch.export.export(model, example_inputs) shows "
                        "the line")


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
    """The invariants on what the saved file stores, from the plug-in's read-back account: nothing kept float
    came out quantized, and the scheme quantized something and (unless keep_float asked for it) most of the
    model's weight layers: a scheme that skips GPT-2's layers or every conv is not the artifact asked for."""
    quantized = account.quantized_layers if account else []
    leaked = [layer for layer in quantized if kept_by(layer, job.keep_float) is not None]
    if leaked:
        raise InternalError(f"{job.profile.format} conversion for device {job.profile.id!r}: layer(s) "
                            f"{', '.join(leaked)} were to stay float, but the saved file stores their weights "
                            "quantized. Please report this with the model; meanwhile use 'fp16'")
    layers = quantizable_layers(job.model)
    unasked = [layer for layer in layers if layer not in set(quantized) and kept_by(layer, job.keep_float) is None]
    if quantized and 2 * len(unasked) <= len(layers):
        return
    reasons = {entry.name: entry.reason for entry in account.float_layers} if account else {}
    by_reason: dict[str, list[str]] = {}
    for layer in unasked or reasons:
        reason = reasons.get(layer, "the toolchain did not quantize it and gave no reason")
        by_reason.setdefault(reason, []).append(layer)
    named = "; ".join(f"{', '.join(names[:_NAMED])}{f' and {len(names) - _NAMED} more' if len(names) > _NAMED else ''}"
                      f": {reason}" for reason, names in by_reason.items())
    what = (f"left {len(unasked)} of the model's {len(layers)} weight layers (convolutions and linears) in float "
            "without being asked" if quantized else "quantized no layer of this model")
    raise ConversionError(f"{job.precision} {what} ({named or 'none reported'})", fmt=job.profile.format,
                          device=job.profile.id,
                          hint="use a precision these layers take (int8 quantizes convolutions and linears on every "
                               "target), keep the model in fp16/fp32, or, for a partly quantized artifact, name the "
                               "layers to leave float: sdk.export(..., keep_float=[...])")


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


@contextlib.contextmanager
def refuse_traced_branches(job: ConversionJob) -> Iterator[ConversionJob]:
    """Wrap a TorchScript trace of the job it yields: where the tracer warns that Python read a tensor's value
    (its trace keeps the branch the example took, silently wrong for other inputs), torch.export, which refuses
    data-dependent control flow, tells a branch on the data (refused, see `translate`) from one on a shape.
    The yielded job traces a copy of the model: a trace may change the module (Hugging Face's Swin stores its
    window size as a tensor under torch.jit.is_tracing()), and torch.export must see the model as given."""
    import torch

    traced = dataclasses.replace(job, model=copy.deepcopy(job.model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        yield traced
    reads = [w for w in caught
             if issubclass(w.category, torch.jit.TracerWarning) and _TRACER_READ.search(str(w.message))]
    for w in caught:  # the trace's other warnings, as they would have been shown
        if w not in reads:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not reads:
        return
    try:
        with stage("torch.export (checking the TorchScript trace)"), torch.no_grad():
            torch.export.export(job.model, tuple(job.example_inputs))
    except Exception as exc:
        if _data_dependent(exc) is not None:
            raise
        log.warning("%s: TorchScript's tracer read a tensor's value (%s) and torch.export could not check whether "
                    "it depends on the data (%s: %s); only parity on held-out inputs can catch a frozen branch",
                    job.profile.id, first_line(reads[0].message)[:120], type(exc).__name__, first_line(exc))


def _data_dependent(exc: BaseException | None) -> BaseException | None:
    """torch.export's refusal of data-dependent control flow, in `exc` or its causes (exporters wrap it)."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, GuardOnDataDependentSymNode):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def translate(exc: Exception, converter: Converter, job: ConversionJob) -> ConversionError:
    """A toolchain's exception as the SDK's ConversionError: the stage, the op the plug-in's patterns find in the
    message, and the plug-in's hint for it; data-dependent control flow gets one message for every format."""
    where = getattr(exc, _STAGE, None)
    guard = _data_dependent(exc)
    if guard is not None:
        return ConversionError(f"{where or 'capture'} refused the model: {_DATA_DEPENDENT} ({first_line(guard)})",
                               fmt=job.profile.format, device=job.profile.id, hint=_DATA_DEPENDENT_HINT)
    op = converter.failed_op(str(exc))
    text = f"{type(exc).__name__}: {converter.summary(exc)}"
    return ConversionError(f"{where} failed with {text}" if where else text, fmt=job.profile.format,
                           device=job.profile.id, op=op, hint=converter.hint_for(exc, op, where))
