"""The converter conformance template, written once and run for every registered format (NNCF's
tests/cross_fw/test_templates style): what every format plug-in must do through the driver and its runtime,
whatever its toolchain. Only format-specific behaviour (schemes, storage layouts, coverage, runtime options)
stays in tests/test_<format>_target.py and tests/test_quant_<format>.py.

Where a format's runtime cannot run on this host (Core ML off macOS) the runtime checks skip, saying why; the
conversion checks and the stored-weight checks run everywhere.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from quant_models import REPORT_KEYS, DeadInputOutlier
from target_helpers import make_job, outputs_of, specs
from torch import nn

import backends
import converters
import sdk
import sdk.devices
from backends import InputMismatchError
from converters.quant.sensitivity import quantizable_layers
from sdk.core import recipes
from sdk.core.errors import ConversionError, InternalError, ProfileError, UnsupportedRecipeError
from sdk.core.parity import compare


def _profile(fmt: str) -> sdk.devices.DeviceProfile:
    """The first built-in profile of `fmt`: the template needs no per-format table."""
    return next(p for p in sdk.devices.list() if p.format == fmt)


FORMATS = [fmt for fmt in converters.formats() if any(p.format == fmt for p in sdk.devices.list())]
PRECISIONS = [name for name in recipes.config_names() if recipes.parse(name)[0].kind == "precision"]


def _runtime_or_skip(profile: sdk.devices.DeviceProfile) -> backends.Backend:
    backend = backends.get(profile.runtime)
    if backend.unavailable_reason() is not None:
        pytest.skip(f"{profile.runtime} cannot run here: {backend.unavailable_reason()}")
    return backend


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


class Eigh(nn.Module):
    """A core ATen op that no format's toolchain translates: each names it in its own words."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]


class DataDependentBranch(nn.Module):
    """A Python branch on a tensor's value: a graph captured at the example's value is wrong for other inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x - 1


class TwoInNestedOut(nn.Module):
    """An image through conv + BatchNorm (non-trivial statistics, so folding it is exercised) and a vector through
    a linear layer: two inputs of different shapes, a nested tuple of three outputs of different shapes, so a
    swapped input or output cannot pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(6, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1.0, 1.0)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        h = torch.relu(self.bn(self.conv(x)))
        return h.flatten(1), (self.fc(y) * 2, h.mean(dim=(2, 3)))


class ConvNet(nn.Module):
    """A conv, a container holding a conv, and a linear layer that makes the graph output; every layer is above
    Core ML's weight_threshold (2048), so every format's int8 scheme quantizes all three."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 5, padding=2)
        self.block = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(torch.relu(self.stem(x))).flatten(1))


def _stored(workdir: Path) -> bytes:
    """Every byte the conversion wrote (a model file, or a package folder's files)."""
    return b"".join(path.read_bytes() for path in sorted(workdir.rglob("*")) if path.is_file())


def _float_weight_stored(module: nn.Module, stored: bytes) -> bool:
    """Whether the layer's own float weight is in the files byte for byte: fp32 or fp16, conv filters OIHW or
    OHWI (an independent read-back: no format's reader involved)."""
    weight = module.weight.detach()
    layouts = [weight, weight.permute(0, 2, 3, 1)] if weight.dim() == 4 else [weight]
    return any(w.contiguous().to(dtype).numpy().tobytes() in stored
               for w in layouts for dtype in (torch.float32, torch.float16))


@pytest.fixture(scope="module", params=FORMATS)
def fp32(request, tmp_path_factory) -> dict:
    """TwoInNestedOut converted in fp32 for each format, with the manifest its runtime loads it by."""
    fmt = request.param
    torch.manual_seed(0)
    model, inputs = TwoInNestedOut().eval(), (torch.randn(1, 3, 8, 8), torch.randn(2, 6))
    profile, workdir = _profile(fmt), tmp_path_factory.mktemp(f"fp32_{fmt}")
    result = converters.get(fmt).convert(make_job(model, inputs, profile, workdir, "fp32"))
    ref = outputs_of(model, inputs)
    manifest = {"inputs": specs("in", inputs), "outputs": specs("out", ref),
                "runtime_options": {**profile.converter, **result.runtime_options}, "recipe_configs": []}
    return {"profile": profile, "result": result, "path": workdir / result.model_file, "manifest": manifest,
            "inputs": [t.numpy() for t in inputs], "ref": ref}


@pytest.fixture(scope="module")
def convnet() -> tuple[nn.Module, tuple[torch.Tensor], list[tuple[torch.Tensor]]]:
    torch.manual_seed(0)
    return ConvNet().eval(), (torch.randn(1, 3, 8, 8),), [(torch.randn(1, 3, 8, 8),) for _ in range(8)]


def _int8(convnet, fmt: str, workdir: Path, keep_float: frozenset[str], converter=None):
    model, x, calibration = convnet
    job = make_job(model, x, _profile(fmt), workdir, "int8", calibration=calibration, keep_float=keep_float)
    return (converter or converters.get(fmt)).convert(job)


@pytest.fixture(scope="module", params=FORMATS)
def int8_kept(request, convnet, tmp_path_factory):
    """ConvNet in int8 for each format, keeping a leaf (`fc`, which makes the graph output) and a container."""
    workdir = tmp_path_factory.mktemp(f"int8_kept_{request.param}")
    return _int8(convnet, request.param, workdir, frozenset({"block", "fc"})), workdir


def test_fp32_file_with_two_inputs_and_nested_outputs_matches_torch(fp32):
    assert fp32["path"].exists() and fp32["result"].quantization is None
    backend = _runtime_or_skip(fp32["profile"])
    got = backend.load(fp32["path"], fp32["manifest"]).run(fp32["inputs"])  # bound by the names in_i / out_i
    assert [g.shape for g in got] == [r.shape for r in fp32["ref"]] == [(1, 512), (2, 3), (1, 8)]
    parity = compare([np.asarray(g) for g in got], fp32["ref"], {"min_cosine": 0.9999})
    assert parity["passed"], parity["failures"]


def test_runtime_session_refuses_wrong_inputs(fp32):
    session = _runtime_or_skip(fp32["profile"]).load(fp32["path"], fp32["manifest"])
    x, y = fp32["inputs"]
    with pytest.raises(InputMismatchError, match="shape"):
        session.run([x, np.zeros((1, 6), np.float32)])
    with pytest.raises(InputMismatchError, match="float32"):
        session.run([x.astype(np.float64), y])
    with pytest.raises(InputMismatchError, match="2 input"):
        session.run([x])


@pytest.mark.parametrize("model, x, op", [(Mystery(), torch.randn(1, 4), "mystery"),
                                         (Eigh(), torch.randn(1, 4, 4), "linalg_eigh")], ids=["custom", "aten"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_unconvertible_op_error_names_the_op(fmt, model, x, op, tmp_path):
    job = make_job(model.eval(), (x,), _profile(fmt), tmp_path, "fp32")
    with pytest.raises(ConversionError) as info:
        converters.get(fmt).convert(job)
    assert info.value.op is not None and op in info.value.op, str(info.value)
    assert info.value.format == fmt and info.value.device == job.profile.id
    assert job.profile.id in str(info.value) and isinstance(info.value.__cause__, Exception)


@pytest.mark.parametrize("fmt", FORMATS)
def test_data_dependent_control_flow_is_refused_with_the_torch_cond_hint(fmt, tmp_path):
    job = make_job(DataDependentBranch(), (torch.randn(4),), _profile(fmt), tmp_path, "fp32")
    with pytest.raises(ConversionError, match="data-dependent control flow.*torch.cond"):
        converters.get(fmt).convert(job)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_precision_the_converter_lacks_is_refused_by_name_before_any_work(fmt, tmp_path):
    converter, profile = converters.get(fmt), _profile(fmt)
    lacking = [name for name in PRECISIONS if name not in converter.supported]
    if not lacking:
        pytest.skip(f"the {fmt} converter takes every precision config")
    job = make_job(nn.Linear(4, 2).eval(), (torch.randn(1, 4),), profile, tmp_path, "fp32")
    job.recipe = recipes.Recipe((recipes.parse(lacking[0])[0],))
    with pytest.raises(UnsupportedRecipeError, match=f"{lacking[0]}.*the {fmt} converter") as info:
        converter.convert(job)
    assert lacking[0] not in info.value.supported and list(tmp_path.iterdir()) == []
    with pytest.raises(UnsupportedRecipeError, match=lacking[0]):  # sdk.export refuses it from the profile
        sdk.export(nn.Linear(4, 2).eval(), profile.id, (torch.randn(1, 4),), recipe=lacking[0], output_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_keep_float_keeps_a_layer_and_every_layer_of_a_kept_module(int8_kept, convnet):
    result, workdir = int8_kept
    account = result.quantization
    assert account.quantized_layers == ["stem"] and quantizable_layers(convnet[0]) == ["stem", "block.0", "fc"]
    reasons = {entry.name: entry.reason for entry in account.float_layers}
    assert reasons.keys() == {"block.0", "fc"}
    assert reasons["fc"].startswith("kept in float on request")
    assert reasons["block.0"].startswith("kept in float on request (inside kept module 'block')")
    assert account.weight_dtypes.get("int8") == 1 and sum(account.weight_dtypes.values()) == 3  # read back


def test_kept_layers_are_stored_float_and_the_quantized_one_is_not(int8_kept, convnet):
    model, stored = convnet[0], _stored(int8_kept[1])
    assert _float_weight_stored(model.fc, stored) and _float_weight_stored(model.block[0], stored)
    assert not _float_weight_stored(model.stem, stored)


@pytest.mark.parametrize("fmt", FORMATS)
def test_quantizing_nothing_is_refused(fmt, convnet, tmp_path):
    with pytest.raises(ConversionError, match="int8 quantized no layer.*kept in float on request"):
        _int8(convnet, fmt, tmp_path, frozenset({"stem", "block", "fc"}))


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


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reports_heldout_sensitivity_and_the_fallback_that_keeps_the_outlier_layer(fmt, tmp_path):
    """sdk.export end to end: the driver's held-out split, sensitivity and fallback on top of the plug-in's
    account; the layer the fallback keeps is stored float in the bundle's files."""
    profile = _profile(fmt)
    torch.manual_seed(5)
    model = DeadInputOutlier(inputs=64, outputs=64).eval()  # every layer above Core ML's weight_threshold
    calibration = [(torch.randn(1, 64),) for _ in range(20)]
    res = sdk.export(model, profile.id, calibration[0], recipe=["int8"], calibration=calibration,
                     tolerance=sdk.Tolerance(min_cosine=0.99), output_dir=tmp_path)
    q = res.report["quantization"]
    assert REPORT_KEYS <= q.keys(), REPORT_KEYS - q.keys()
    assert q["heldout"]["source"] == "last 4 of 20 calibration samples" and q["heldout"]["samples"] == 4
    runs_here = backends.get(profile.runtime).unavailable_reason() is None
    assert q["heldout"]["ran_on"].startswith("simulated in torch") is not runs_here, q["heldout"]["ran_on"]
    if q["activations"] == "int8-static":  # the quantizer calibrated on the 16 samples not held out
        assert re.search(r"\b16 (calibration )?samples", q["scheme"]), q["scheme"]
    assert q["heldout"]["outputs"][0]["cosine"] >= 0.99
    assert q["sensitivity"]["layers_measured"] == len(q["sensitivity"]["worst"]) == 3
    assert q["fallback"]["kept_float"] == ["mid"]
    assert q["fallback"]["steps"][0]["met"] is False and q["fallback"]["steps"][-1]["met"] is True
    assert q["quantized_layers"] == ["inp", "out"]
    assert q["float_layers"] == [{"name": "mid", "reason": "kept in float by the fallback to meet the tolerance"}]
    assert q["weight_dtypes"].get("int8") == 2 and sum(q["weight_dtypes"].values()) == 3
    assert res.report["parity"]["passed"] is (True if runs_here else None)
    stored = _stored(res.artifact.path)
    assert _float_weight_stored(model.mid, stored) and not _float_weight_stored(model.inp, stored)
