"""The converter conformance template, written once and run for every registered format (NNCF's
tests/cross_fw/test_templates style): what every format plug-in must do through the driver, whatever its
toolchain. Format-specific behaviour (schemes, storage, coverage) stays in tests/test_<format>_target.py and
tests/test_quant_<format>.py.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from target_helpers import make_job, outputs_of, specs
from torch import nn

import backends
import converters
import sdk.devices
from sdk.core.errors import ConversionError, InternalError, ProfileError
from sdk.core.parity import compare


def _profile(fmt: str) -> sdk.devices.DeviceProfile:
    """The first built-in profile of `fmt`: the template needs no per-format table."""
    return next(p for p in sdk.devices.list() if p.format == fmt)


FORMATS = [fmt for fmt in converters.formats() if any(p.format == fmt for p in sdk.devices.list())]


@torch.library.custom_op("conformance::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    """An op no toolchain knows: every format must refuse it by name."""
    return x.clone()


@_mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class Mystery(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mystery(x) + 1


class TwoInTwoOut(nn.Module):
    """Two inputs of different shapes, a tuple of two outputs of different shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.relu(self.a(x)), self.b(y) * 2


class ConvNet(nn.Module):
    """Convolutions and a linear layer: every format's int8 scheme quantizes these."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1))


@pytest.fixture(scope="module")
def convnet() -> tuple[nn.Module, tuple[torch.Tensor], list[tuple[torch.Tensor]]]:
    torch.manual_seed(0)
    return ConvNet().eval(), (torch.randn(1, 3, 8, 8),), [(torch.randn(1, 3, 8, 8),) for _ in range(8)]


def _int8(convnet, fmt: str, workdir: Path, keep_float: frozenset[str], converter=None):
    model, x, calibration = convnet
    job = make_job(model, x, _profile(fmt), workdir, "int8", calibration=calibration, keep_float=keep_float)
    return (converter or converters.get(fmt)).convert(job)


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp32_multi_input_multi_output_matches_torch(fmt, tmp_path):
    torch.manual_seed(0)
    model, inputs = TwoInTwoOut().eval(), (torch.randn(1, 8), torch.randn(2, 6))
    profile = _profile(fmt)
    result = converters.get(fmt).convert(make_job(model, inputs, profile, tmp_path, "fp32"))
    assert (tmp_path / result.model_file).exists() and result.quantization is None
    backend = backends.get(profile.runtime)
    if backend.unavailable_reason() is not None:
        pytest.skip(f"{profile.runtime} cannot run here: {backend.unavailable_reason()}")
    ref = outputs_of(model, inputs)
    manifest = {"inputs": specs("in", inputs), "outputs": specs("out", ref),
                "runtime_options": {**profile.converter, **result.runtime_options}, "recipe_configs": []}
    got = backend.load(tmp_path / result.model_file, manifest).run([t.numpy() for t in inputs])
    assert [g.shape for g in got] == [r.shape for r in ref]
    parity = compare([np.asarray(g) for g in got], ref, {"min_cosine": 0.9999})
    assert parity["passed"], parity["failures"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_unconvertible_op_error_names_the_op(fmt, tmp_path):
    job = make_job(Mystery().eval(), (torch.randn(1, 4),), _profile(fmt), tmp_path, "fp32")
    with pytest.raises(ConversionError) as info:
        converters.get(fmt).convert(job)
    assert info.value.op is not None and "mystery" in info.value.op, str(info.value)
    assert info.value.format == fmt and isinstance(info.value.__cause__, Exception)


@pytest.mark.parametrize("fmt", FORMATS)
def test_keep_float_is_honoured(fmt, convnet, tmp_path):
    account = _int8(convnet, fmt, tmp_path, frozenset({"fc"})).quantization
    assert "fc" not in account.quantized_layers and account.quantized_layers
    reasons = {entry.name: entry.reason for entry in account.float_layers}
    assert reasons["fc"].startswith("kept in float on request")


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantizing_nothing_is_refused(fmt, convnet, tmp_path):
    with pytest.raises(ConversionError, match="quantized no layer"):
        _int8(convnet, fmt, tmp_path, frozenset({"conv1", "conv2", "fc"}))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_kept_layer_that_comes_out_quantized_is_an_internal_error(fmt, convnet, tmp_path):
    plugin = type(converters.get(fmt))

    class Leaky(plugin):  # a plug-in bug: it forgets the exclusion set
        def build(self, job):
            return super().build(dataclasses.replace(job, keep_float=frozenset()))

    with pytest.raises(InternalError, match="fc"):
        _int8(convnet, fmt, tmp_path, frozenset({"fc"}), converter=Leaky())


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_profile_option_is_refused_before_any_work(fmt, tmp_path):
    profile = dataclasses.replace(_profile(fmt), converter={**_profile(fmt).converter, "no_such_option": 1})
    job = make_job(nn.Linear(4, 2).eval(), (torch.randn(1, 4),), profile, tmp_path, "fp32")
    with pytest.raises(ProfileError, match="no_such_option"):
        converters.get(fmt).convert(job)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_keep_float_naming_no_module_is_refused_before_any_work(fmt, convnet, tmp_path):
    with pytest.raises(ConversionError, match="keep_float names modules the model does not have: nope"):
        _int8(convnet, fmt, tmp_path, frozenset({"nope"}))
    assert list(tmp_path.iterdir()) == []
