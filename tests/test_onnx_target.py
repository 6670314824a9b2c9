"""ONNX target (Jetson / TensorRT profiles): torch -> ONNX with the real exporters, run by ONNX Runtime here.

Opset 17 (the Jetson profiles) goes through the TorchScript exporter, opset 18+ through the torch.export-based
one; both paths are converted and run. TensorRT itself is not on this host: the `tensorrt` runtime says that
ONNX Runtime's CPU provider stood in.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from target_helpers import make_job, outputs_of, specs
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import backends  # noqa: E402
import converters  # noqa: E402
import converters.onnx.export as onnx_export  # noqa: E402
from sdk import devices, parity, recipes  # noqa: E402
from sdk.core.errors import ConversionError, ProfileError  # noqa: E402
from sdk.core.results import Unavailable  # noqa: E402

HAS_TENSORRT_EP = "TensorrtExecutionProvider" in ort.get_available_providers()


def profile_with(opset: int | None = None, device: str = "jetson-orin-nano", **options) -> devices.DeviceProfile:
    profile = devices.get(device)
    table = dict(profile.converter) | options | ({"opset": opset} if opset else {})
    return dataclasses.replace(profile, converter=table)


def convert(model: nn.Module, inputs: tuple, profile: devices.DeviceProfile, recipe: str | None, workdir: Path,
            n_out: int):
    return converters.get("onnx").convert(make_job(model, inputs, profile, workdir, recipe, n_out))


def run_case(model, inputs, profile, recipe, workdir, runtime: str | None = None) -> dict:
    ref = outputs_of(model, inputs)
    plan = recipes.resolve(profile, recipe)
    result = convert(model, inputs, profile, recipe, workdir, len(ref))
    manifest = {"inputs": specs("in", inputs), "outputs": specs("out", ref),
                "runtime_options": dict(profile.converter), "recipe": plan.to_strings(),
                "recipe_configs": plan.to_dicts()}
    backend = backends.get(runtime or profile.runtime)
    assert backend.unavailable_reason() is None
    session = backend.load(workdir / result.model_file, manifest)
    got = session.run([t.numpy() for t in inputs])
    return {"result": result, "session": session, "got": got, "ref": ref, "workdir": workdir,
            "graph": onnx.load(str(workdir / result.model_file)),
            "parity": parity.compare(got, ref, {"min_cosine": 0.9999})}


def static_dims(values) -> bool:
    return all(d.HasField("dim_value") and d.dim_value > 0 for v in values for d in v.type.tensor_type.shape.dim)


@pytest.fixture(scope="module", params=[(17, "fp32"), (17, "fp16"), (18, "fp32")], ids=lambda p: f"opset{p[0]}-{p[1]}")
def cnn(request, tiny_cnn, tiny_input, tmp_path_factory):
    opset, recipe = request.param
    workdir = tmp_path_factory.mktemp(f"onnx_{opset}_{recipe}")
    case = run_case(tiny_cnn, tiny_input, profile_with(opset), recipe, workdir)
    return {"opset": opset, "recipe": recipe, **case}


def test_each_exporter_path_and_fp16_match_torch(cnn):
    assert cnn["parity"]["passed"], cnn["parity"]["failures"]


def test_graph_is_at_profile_opset_with_bn_folded_and_static_shapes(cnn):
    graph = cnn["graph"]
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) == cnn["opset"]
    ops = {node.op_type for node in graph.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert [i.name for i in graph.graph.input] == ["in_0"] and [o.name for o in graph.graph.output] == ["out_0"]
    inferred = onnx.shape_inference.infer_shapes(graph, strict_mode=True).graph
    assert static_dims(list(inferred.input) + list(inferred.output) + list(inferred.value_info))


def test_weights_are_inline_in_one_file(cnn):
    assert sorted(p.name for p in cnn["workdir"].iterdir()) == ["model.onnx"]


def test_fp16_keeps_fp32_onnx_and_asks_tensorrt_for_fp16(cnn):
    weights = {init.data_type for init in cnn["graph"].graph.initializer if len(init.dims) >= 2}
    assert weights == {onnx.TensorProto.FLOAT}
    if cnn["recipe"] == "fp16":
        account = cnn["result"].quantization
        assert account.activations == "float16" and set(account.weight_dtypes) == {"fp32"}
        assert "fp16" in cnn["session"].ran_on
    else:
        assert cnn["result"].quantization is None


def test_tensorrt_runtime_says_what_stood_in(cnn):
    if HAS_TENSORRT_EP:
        pytest.skip("this onnxruntime has the TensorRT provider")
    ran_on = cnn["session"].ran_on
    assert ran_on.startswith(f"onnxruntime {ort.__version__} CPUExecutionProvider (stand-in for TensorRT")
    assert ("fp16 engine precision is not applied" in ran_on) == (cnn["recipe"] == "fp16")
    coverage = cnn["result"].coverage
    assert isinstance(coverage, Unavailable) and "runtime" in coverage.reason


def test_opset18_exporter_keeps_two_inputs_and_tuple_outputs_in_order(two_in_two_out, two_inputs, tmp_path):
    """The template runs the profiles' opset-17 (TorchScript) path; this is the torch.export-based one."""
    case = run_case(two_in_two_out, two_inputs, profile_with(18), "fp32", tmp_path)
    assert case["parity"]["passed"], case["parity"]["failures"]
    assert [g.shape for g in case["got"]] == [(1, 8), (1, 4)]
    assert [i.name for i in case["graph"].graph.input] == ["in_0", "in_1"]
    assert [o.name for o in case["graph"].graph.output] == ["out_0", "out_1"]


class OpsetSensitive(nn.Module):
    """Ops whose ONNX form changed in opset 18 (Split, Pad, ReduceMean axes): the opset-17 path must still write 17."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(4, 4, 3, padding=1), nn.LayerNorm(8)

    def forward(self, x):
        a, b = torch.split(self.conv(F.pad(x, (1, 1, 1, 1), mode="reflect")), [1, 3], dim=1)
        y = F.interpolate(torch.cat([a.relu(), b.sigmoid()], 1), scale_factor=0.5, mode="bilinear")
        return self.norm(y.flatten(2)[..., :8]), y.mean(dim=(2, 3))


@pytest.mark.parametrize("opset", [17, 18])
def test_split_pad_reduce_keep_the_profile_opset(opset, tmp_path):
    torch.manual_seed(0)
    case = run_case(OpsetSensitive().eval(), (torch.randn(1, 4, 14, 14),), profile_with(opset), "fp32", tmp_path)
    assert case["parity"]["passed"], case["parity"]["failures"]
    assert next(o.version for o in case["graph"].opset_import if o.domain in ("", "ai.onnx")) == opset
    assert {"Split", "Pad", "ReduceMean"} <= {node.op_type for node in case["graph"].graph.node}


def test_plain_onnxruntime_runtime_and_num_threads(tiny_cnn, tiny_input, tmp_path):
    case = run_case(tiny_cnn, tiny_input, profile_with(17, num_threads=1), "fp32", tmp_path, runtime="onnxruntime")
    assert case["parity"]["passed"]
    ran_on = case["session"].ran_on
    assert ran_on.startswith(f"onnxruntime {ort.__version__} ") and "stand-in" not in ran_on
    assert case["session"]._session.get_session_options().intra_op_num_threads == 1


def test_weights_over_the_inline_limit_go_to_one_data_file(tiny_cnn, tiny_input, tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "INLINE_LIMIT_BYTES", 0)
    case = run_case(tiny_cnn, tiny_input, profile_with(17), "fp32", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert case["parity"]["passed"]


def test_opset18_exporter_error_names_the_op(tmp_path):
    """The template checks the profiles' opset-17 (TorchScript) exporter; the torch.export-based one words it
    differently."""
    class Eigh(nn.Module):
        def forward(self, x):
            return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]

    with pytest.raises(ConversionError, match="jetson-orin-nano") as info:
        convert(Eigh().eval(), (torch.randn(1, 4, 4),), profile_with(18), None, tmp_path, 1)
    assert "linalg_eigh" in info.value.op


def test_opset_below_17_is_refused(tiny_cnn, tiny_input, tmp_path):
    with pytest.raises(ProfileError, match="opset must be >= 17"):
        convert(tiny_cnn, tiny_input, profile_with(16), None, tmp_path, 1)
