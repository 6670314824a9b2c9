"""One exception tree: every error the SDK raises on purpose sits under one of the four branches."""
from __future__ import annotations

import pytest
import torch
from target_helpers import make_job

import backends
from converters import ConversionResult
import sdk.devices
from sdk import errors
from sdk.agent.intake import IntakeError
from sdk.agent.power import ProbeError
from sdk.quantization import HeldOutEvaluator

BRANCHES = (errors.UserInputError, errors.UnsupportedError, errors.DeviceError, errors.InternalError)


def test_four_branches_and_every_error_under_one():
    assert tuple(errors.SdkError.__subclasses__()) == BRANCHES
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and cls is not errors.SdkError:
            assert issubclass(cls, BRANCHES), name
    assert issubclass(backends.InputMismatchError, errors.UserInputError)
    assert issubclass(IntakeError, errors.AgentError) and issubclass(ProbeError, errors.DeviceError)


def test_backend_registry_errors_are_typed():
    with pytest.raises(errors.RuntimeUnavailableError, match="Did you mean 'openvino'"):
        backends.get("openvin")
    with pytest.raises(errors.RegistryError, match="already registered"):
        backends.register(type(backends.get("onnxruntime")))


def test_runtime_failure_in_heldout_evaluation_is_translated_with_its_cause(tmp_path):
    model, x = torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),)
    job = make_job(model, x, sdk.devices.get("jetson"), tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not an onnx file")
    evaluate = HeldOutEvaluator(job, [x], None, sdk.Tolerance())
    with pytest.raises(errors.ConversionError, match="failed to run in tensorrt on the held-out inputs") as info:
        evaluate(ConversionResult(model_file="model.onnx"), frozenset())
    assert info.value.__cause__ is not None and not isinstance(info.value.__cause__, errors.SdkError)

