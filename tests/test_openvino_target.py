"""OpenVINO target: torch -> IR with the real converter, run by the OpenVINO runtime on this host.

The NPU profile is converted for real; its IR runs on the CPU plugin here, and the session says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from target_helpers import make_job, outputs_of, specs
from torch import nn

ov = pytest.importorskip("openvino")

import backends  # noqa: E402
import converters  # noqa: E402
from sdk import devices, parity  # noqa: E402
from sdk.core.results import Unavailable  # noqa: E402


def convert(model: nn.Module, inputs: tuple, device: str, recipe: str | None, workdir: Path, n_out: int):
    profile = devices.get(device)
    return converters.get("openvino").convert(make_job(model, inputs, profile, workdir, recipe, n_out)), profile


def load(workdir: Path, result, profile, inputs: tuple, outputs: list[np.ndarray]):
    manifest = {"inputs": specs("in", inputs), "outputs": specs("out", outputs),
                "runtime_options": dict(profile.converter)}
    backend = backends.get(profile.runtime)
    assert backend.unavailable_reason() is None
    return backend.load(workdir / result.model_file, manifest)


def run_case(model, inputs, device, recipe, workdir) -> dict:
    ref = outputs_of(model, inputs)
    result, profile = convert(model, inputs, device, recipe, workdir, len(ref))
    session = load(workdir, result, profile, inputs, ref)
    got = session.run([t.numpy() for t in inputs])
    return {"result": result, "session": session, "got": got, "ref": ref, "workdir": workdir,
            "parity": parity.compare(got, ref, {"min_cosine": 0.9999})}


@pytest.fixture(scope="module", params=[("intel-cpu", "fp32"), ("intel-cpu", "fp16"), ("intel-npu", "fp16")],
                ids=lambda p: "-".join(p))
def cnn(request, tiny_cnn, tiny_input, tmp_path_factory):
    device, recipe = request.param
    case = run_case(tiny_cnn, tiny_input, device, recipe, tmp_path_factory.mktemp(f"ov_{device}_{recipe}"))
    return {"device": device, "recipe": recipe, **case}


def test_cpu_and_npu_profiles_match_torch_in_each_precision(cnn):
    assert cnn["parity"]["passed"], cnn["parity"]["failures"]
    assert [g.shape for g in cnn["got"]] == [r.shape for r in cnn["ref"]]


def test_cpu_computes_in_f32(cnn):
    """Without an explicit f32 hint the CPU plugin runs bf16 on AVX512-BF16/AMX hosts (max error ~3e-4 here)."""
    assert "CPU f32" in cnn["session"].ran_on or cnn["device"] == "intel-npu"
    if cnn["recipe"] == "fp32":
        assert cnn["parity"]["outputs"][0]["max_abs_err"] < 1e-5


def test_weights_are_stored_in_the_recipe_precision(cnn):
    """save_model compresses to fp16 by default: the fp32 recipe must keep fp32 weights."""
    model = ov.Core().read_model(str(cnn["workdir"] / cnn["result"].model_file))
    weight_types = {op.get_element_type().get_type_name() for op in model.get_ops()
                    if op.get_type_name() == "Constant" and op.get_output_partial_shape(0).rank.get_length() >= 2}
    assert weight_types == ({"f32"} if cnn["recipe"] == "fp32" else {"f16"})
    assert (cnn["result"].quantization is None) == (cnn["recipe"] == "fp32")


def test_ir_has_sdk_names_and_static_shapes(cnn, tiny_input):
    model = ov.Core().read_model(str(cnn["workdir"] / cnn["result"].model_file))
    assert [p.get_any_name() for p in model.inputs] == ["in_0"]
    assert [p.get_any_name() for p in model.outputs] == ["out_0"]
    assert model.inputs[0].get_partial_shape().is_static
    assert list(model.inputs[0].get_shape()) == list(tiny_input[0].shape)


def test_coverage_on_cpu_and_absent_npu(cnn):
    result = cnn["result"]
    if cnn["device"] == "intel-cpu":
        assert result.coverage.delegate == "OpenVINO CPU plugin" and result.coverage.not_delegated == {}
        assert result.coverage.delegated == result.coverage.total > 0 and result.coverage.fraction == 1.0
    else:
        assert isinstance(result.coverage, Unavailable)
        assert "no NPU on this host" in result.coverage.reason


def test_npu_profile_falls_back_to_cpu_and_says_so(cnn):
    ran_on = cnn["session"].ran_on
    if cnn["device"] == "intel-npu":
        assert "NPU" in ov.Core().available_devices or ("CPU" in ran_on and "stand-in" in ran_on and "NPU" in ran_on)
    else:
        assert "stand-in" not in ran_on


def test_output_that_is_an_input_keeps_both_names(tmp_path):
    class Passthrough(nn.Module):
        def forward(self, x):
            return x * 3, x, x * 3

    case = run_case(Passthrough().eval(), (torch.randn(1, 4),), "intel-cpu", "fp32", tmp_path)
    assert case["parity"]["passed"], case["parity"]["failures"]
