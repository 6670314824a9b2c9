"""The SDK's exception hierarchy (torch-free; the device side raises these too).

One root (`SdkError`) and four branches a caller can act on: bad user input (`UserInputError`), a
request the target cannot do (`UnsupportedError`), a failure on the device or agent side
(`DeviceError`), and broken invariants, i.e. SDK bugs (`InternalError`). A toolchain's or runtime's
own exception is translated once, at the boundary, keeping it as `__cause__`. Every message says
what failed, where (layer/op, device), and what to try.

>>> import sdk.core.errors as e
>>> [c.__name__ for c in e.SdkError.__subclasses__()]
['UserInputError', 'UnsupportedError', 'DeviceError', 'InternalError']
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "SdkError",
    "UserInputError",
    "UnknownDeviceError",
    "ProfileError",
    "RecipeError",
    "MetricError",
    "InvalidInputsError",
    "InputMismatchError",
    "RegistryError",
    "OutputDirError",
    "UnsupportedError",
    "UnsupportedRecipeError",
    "ConversionError",
    "AccuracyError",
    "ParityError",
    "DeviceError",
    "RuntimeUnavailableError",
    "BundleError",
    "AgentError",
    "IntakeError",
    "ProbeError",
    "InternalError",
    "closest",
    "first_line",
]


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name nearest to `name`, for 'did you mean' hints."""
    match = difflib.get_close_matches(name.lower(), [k.lower() for k in known], n=1, cutoff=0.4)
    if not match:
        return None
    return next(k for k in known if k.lower() == match[0])


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without a trailing period (toolchains write pages)."""
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(".") if text else ""


class SdkError(Exception):
    """Root of every error the SDK raises on purpose."""


class UserInputError(SdkError, ValueError):
    """The caller passed something the SDK cannot use."""


class UnknownDeviceError(UserInputError, KeyError):
    """A device name that no registered profile id or alias matches."""

    def __init__(self, name: str, known: list[str]):
        self.name, self.known = name, known
        hint = closest(name, known)
        did_you_mean = f" Did you mean {hint!r}?" if hint else ""
        super().__init__(
            f"Unknown device {name!r}.{did_you_mean} Known devices: {', '.join(sorted(known))}. "
            "Add your own with sdk.devices.register('my_board.toml')."
        )

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class ProfileError(UserInputError):
    """A device profile (TOML or dict) is malformed."""


class RecipeError(UserInputError):
    """A recipe string or config is malformed."""


class InvalidInputsError(UserInputError):
    """`example_inputs` or calibration data do not fit the model."""


class InputMismatchError(UserInputError):
    """Inputs given to a loaded model do not match its declared inputs (count, shape or dtype)."""


class RegistryError(UserInputError):
    """A plug-in registered under a name that is already taken."""


class OutputDirError(UserInputError):
    """The output folder cannot be written."""


class UnsupportedError(SdkError):
    """The target cannot do what was asked."""


class UnsupportedRecipeError(UnsupportedError):
    """A recipe config that the device's converter does not implement."""

    def __init__(self, config: str, fmt: str, device: str, supported: list[str]):
        self.config, self.format, self.device, self.supported = config, fmt, device, supported
        super().__init__(
            f"{config!r} is not supported by the {fmt} converter for device {device!r}. "
            f"{device} supports: {', '.join(supported) or 'nothing beyond fp32'}."
        )


class ConversionError(UnsupportedError):
    """The format's toolchain failed to convert the model."""

    def __init__(self, message: str, *, fmt: str, device: str, op: str | None = None, hint: str = ""):
        self.format, self.device, self.op = fmt, device, op
        where = f" at op {op!r}" if op else ""
        tail = f" Try: {hint}" if hint else ""
        super().__init__(f"{fmt} conversion for device {device!r} failed{where}: {message}.{tail}")


class ParityError(UnsupportedError):
    """The artifact's outputs differ from the fp32 reference beyond the tolerance: the target
    cannot give this recipe at this accuracy."""

    def __init__(self, message: str, parity: dict | None = None):
        self.parity = parity or {}
        super().__init__(message)


class DeviceError(SdkError):
    """Something failed on the device or runtime side."""


class RuntimeUnavailableError(DeviceError):
    """The runtime a bundle needs is not installed or cannot run on this machine."""


class BundleError(DeviceError):
    """An artifact bundle is missing files, corrupt, or does not match its manifest."""


class AgentError(DeviceError):
    """The test agent refused a request, failed a job, or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None):
        self.status_code = status_code
        super().__init__(message)


class IntakeError(AgentError):
    """An upload the agent refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message, status_code=status)


class ProbeError(DeviceError, RuntimeError):
    """A power probe that worked at detection failed while measuring (sensor gone, process died)."""


class InternalError(SdkError):
    """A broken invariant, i.e. a bug in the SDK or a plug-in: please report it with the traceback."""


class MetricError(UserInputError):
    """A metric name, labels or outputs the metric cannot use (shapes, missing labels, NaN/Inf)."""


class AccuracyError(ParityError):
    """The artifact's metric dropped more than `max_drop` (or could not be measured) on the real runtime;
    `accuracy` holds the measured report when there is one."""

    def __init__(self, message: str, accuracy: dict[str, Any] | None = None):
        super().__init__(message, accuracy)
        self.accuracy = accuracy or {}
