"""OpenVINO quantization with the real toolchain: NNCF quantizes the converted ov.Model, OpenVINO CPU runs it.

What is stored is read back from the saved IR with an independent walk (weight Constant element types,
decompression scales, FakeQuantize ranges), never taken from the converter's word. The intel-npu IR runs
on the CPU plugin here (no NPU on this host).
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from quant_models import Net, images, trained_bn
from target_helpers import make_job
from torch import nn

ov = pytest.importorskip("openvino")
pytest.importorskip("nncf")

import backends  # noqa: E402
import converters  # noqa: E402
from samples import transformer_encoder  # noqa: E402
from sdk import devices  # noqa: E402
from sdk.core.parity import compare  # noqa: E402
from sdk.core.results import FloatLayer  # noqa: E402

WEIGHTED = {"Convolution", "GroupConvolution", "MatMul"}


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return trained_bn(Net(), [(x.repeat(4, 1, 1, 1),) for (x,) in images(4, seed=3)])


@pytest.fixture(scope="module")
def convert(net, tmp_path_factory):
    """convert(device, recipe, keep_float=(), model=net, inputs) -> (result, model.xml path), cached.

    Only `net` gets calibration data; other models are for weight-only recipes."""

    @functools.cache
    def run(device: str, recipe: str, keep_float: frozenset[str] = frozenset(), model: nn.Module | None = None,
            inputs: tuple | None = None):
        calibration = images(16, seed=2) if model is None else None
        model, inputs = (net, images(1, seed=1)[0]) if model is None else (model, inputs)
        profile = devices.get(device)
        workdir = tmp_path_factory.mktemp(f"{device}-{recipe}")
        job = make_job(model, inputs, profile, workdir, recipe, calibration=calibration, keep_float=keep_float)
        result = converters.get("openvino").convert(job)
        return result, workdir / result.model_file

    return run


def _size(xml: Path) -> int:
    return xml.stat().st_size + xml.with_suffix(".bin").stat().st_size


def _weights(xml: Path) -> list[dict]:
    """Each Convolution/MatMul weight: the stored Constant's dtype and shape, and the decompression scale's shape,
    found by walking from the op's weight input through Multiply (scale) / Subtract (zero point) / Convert / Reshape."""
    out = []
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() not in WEIGHTED:
            continue
        node, scale = op.input_value(1).get_node(), None
        while node.get_type_name() in ("Multiply", "Subtract", "Convert", "Reshape"):
            if node.get_type_name() == "Multiply":
                scale = list(node.input_value(1).get_shape())
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant":
            out.append({"dtype": node.get_element_type().get_type_name(), "shape": list(node.get_output_shape(0)),
                        "scale": scale, "input": op.input_value(0).get_node().get_type_name()})
    return out


def _fake_quantizes(xml: Path) -> list[tuple[str, float, float]]:
    """Activation FakeQuantize ops: (producer op type, input_low, input_high)."""
    out = []
    for op in ov.Core().read_model(str(xml)).get_ordered_ops():
        if op.get_type_name() == "FakeQuantize":
            low, high = (float(op.input_value(i).get_node().get_data().ravel()[0]) for i in (1, 2))
            out.append((op.input_value(0).get_node().get_type_name(), low, high))
    return out


def _input_range(xml: Path) -> tuple[float, float]:
    """The FakeQuantize range on the model input (signed data, so symmetric vs asymmetric shows)."""
    return next((low, high) for producer, low, high in _fake_quantizes(xml) if producer == "Parameter")


def _run(xml: Path, device: str, samples: list[tuple], config: dict | None = None) -> list[np.ndarray]:
    """The IR on the SDK's OpenVINO backend (config=None), or compiled on CPU with an explicit config."""
    if config is None:
        manifest = {"inputs": [{"name": "in_0", "shape": list(samples[0][0].shape), "dtype": "float32"}],
                    "outputs": [{"name": "out_0", "shape": [1, 10], "dtype": "float32"}],
                    "runtime_options": dict(devices.get(device).converter)}
        session = backends.get("openvino").load(xml, manifest)
        return [session.run([x.numpy()])[0] for (x,) in samples]
    compiled = ov.Core().compile_model(str(xml), "CPU", config)
    return [compiled([t.numpy() for t in s])[0] for s in samples]


def _cosine(model: nn.Module, xml: Path, device: str, samples: list[tuple], config: dict | None = None) -> float:
    with torch.no_grad():
        ref = np.concatenate([model(*s).numpy() for s in samples])
    got = np.concatenate(_run(xml, device, samples, config))
    return compare([got], [ref], {"min_cosine": -1.0})["outputs"][0]["cosine"]


# --- static INT8 (nncf.quantize) ---

def test_int8_cpu_stores_int8_per_channel_weights_and_quantizes_activations(net, convert):
    result, xml = convert("intel-cpu", "int8")
    _, fp32 = convert("intel-cpu", "fp32")
    weights = _weights(xml)
    assert [w["dtype"] for w in weights] == ["i8"] * 5
    assert all(w["scale"] == [w["shape"][0]] + [1] * (len(w["shape"]) - 1) for w in weights)  # one per out channel
    q = result.quantization
    assert q.quantized_layers == ["features.0", "features.3", "features.6", "features.8", "head"]  # BN-folded too
    assert q.float_layers == [] and q.weight_dtypes == {"int8": 5} and q.activations == "int8-static"
    assert q.details["activation_quantizers"] == len(_fake_quantizes(xml)) == 6  # input, 4 ReLUs, pooled features
    assert all(part in q.toolchain for part in ("nncf.quantize", "preset=mixed", "target_device=CPU"))
    low, high = _input_range(xml)  # signed data: an asymmetric range on CPU (preset=mixed)
    assert low < 0 < high and abs(low / high + 128 / 127) > 1e-3
    assert _size(xml) <= 0.3 * _size(fp32), (_size(xml), _size(fp32))
    assert _cosine(net, xml, "intel-cpu", images(8, seed=9)) >= 0.99


def test_int8_npu_quantizes_activations_symmetrically(net, convert):
    result, xml = convert("intel-npu", "int8")
    assert [w["dtype"] for w in _weights(xml)] == ["i8"] * 5
    low, high = _input_range(xml)
    assert low / high == pytest.approx(-128 / 127, rel=1e-4)  # signed symmetric int8
    toolchain = result.quantization.toolchain
    assert "preset=performance" in toolchain and "target_device=NPU" in toolchain
    assert any("symmetric" in note and "intel-npu" in note for note in result.notes)
    assert _cosine(net, xml, "intel-npu", images(8, seed=9)) >= 0.99  # on the CPU plugin, as stand-in


def test_keep_float_finds_a_batchnorm_folded_conv_in_the_ir_by_value(convert):
    """features.3 has its BatchNorm folded in the IR (op named Multiply_N): matched by value, ignored by NNCF."""
    result, xml = convert("intel-cpu", "int8", frozenset({"features.3"}))
    by_shape = {tuple(w["shape"]): w for w in _weights(xml)}
    assert by_shape[(64, 32, 3, 3)]["dtype"] == "f32" and by_shape[(64, 32, 3, 3)]["input"] != "FakeQuantize"
    assert [w["dtype"] for s, w in by_shape.items() if s != (64, 32, 3, 3)] == ["i8"] * 4
    q = result.quantization
    assert q.float_layers == [FloatLayer("features.3", "kept in float on request")]
    assert q.weight_dtypes == {"float32": 1, "int8": 4} and "features.3" not in q.quantized_layers


def test_weight_only_int8_keeps_a_parent_modules_layers_f32_in_the_ir(convert):
    result, xml = convert("intel-cpu", "int8-dynamic", frozenset({"features"}))
    assert [w["dtype"] for w in _weights(xml)] == ["f32"] * 4 + ["u8"]
    reasons = {f.name: f.reason for f in result.quantization.float_layers}
    assert reasons == {n: "kept in float on request (inside kept module 'features')"
                       for n in ("features.0", "features.3", "features.6", "features.8")}
    assert result.quantization.quantized_layers == ["head"]


# --- weight-only (nncf.compress_weights) ---

def test_int8_dynamic_is_weight_only_and_cpu_quantizes_matmul_inputs_at_run_time(tmp_path):
    model = transformer_encoder.build(small=True)
    inputs = transformer_encoder.example_inputs(model)
    profile = devices.get("intel-cpu")
    job = make_job(model, inputs, profile, tmp_path, "int8-dynamic")
    result = converters.get("openvino").convert(job)
    xml = tmp_path / result.model_file
    assert {w["dtype"] for w in _weights(xml)} == {"u8"}  # asymmetric: uint8 + zero point
    assert not _fake_quantizes(xml)  # activations are not quantized in the IR
    q = result.quantization
    assert q.weight_dtypes == {"uint8": 14} and "DYNAMIC_QUANTIZATION_GROUP_SIZE" in q.scheme
    assert q.activations == "float32" and q.weight_only  # float in the IR: the simulation quantizes weights only
    assert q.float_layers == [FloatLayer("pos", "not the weight of a convolution, MatMul or embedding in the IR "
                                                "(NNCF quantizes only those); stays float")]
    samples = [transformer_encoder.example_inputs(model) for _ in range(4)]
    on = _run(xml, "intel-cpu", samples, {"INFERENCE_PRECISION_HINT": "f32"})
    off = _run(xml, "intel-cpu", samples, {"INFERENCE_PRECISION_HINT": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0})
    for config in ({"INFERENCE_PRECISION_HINT": "f32"}, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}):
        assert _cosine(model, xml, "intel-cpu", samples, config) >= 0.99
    if _has_vnni():  # the CPU plugin's condition for run-time int8 activations (AVX-VNNI / AVX512-VNNI)
        assert not all(np.array_equal(a, b) for a, b in zip(on, off))


def _has_vnni() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx_vnni" in flags or " avx512_vnni" in flags


@pytest.fixture(scope="module")
def encoder_int4(tmp_path_factory):
    """The sample transformer encoder (4 layers, d=384, ~7M parameters) as fp32 and INT4 IRs."""
    model = transformer_encoder.build()
    inputs = transformer_encoder.example_inputs(model)
    profile = devices.get("intel-cpu")
    out = {"model": model}
    for recipe in ("fp32", "int4"):
        workdir = tmp_path_factory.mktemp(f"encoder-{recipe}")
        job = make_job(model, inputs, profile, workdir, recipe)
        result = converters.get("openvino").convert(job)
        out[recipe] = (result, workdir / result.model_file)
    return out


def test_int4_transformer_is_group_wise_int4_with_int8_last_layer(encoder_int4):
    result, xml = encoder_int4["int4"]
    _, fp32 = encoder_int4["fp32"]
    weights = _weights(xml)
    int4 = [w for w in weights if w["dtype"] == "i4"]
    assert len(int4) == 25  # embed + 4 x (q, k, v, out, mlp.0, mlp.2)
    assert all(w["shape"][-1] == 32 and w["scale"] == w["shape"][:-1] + [1] for w in int4)  # a scale per 32 weights
    q = result.quantization
    assert q.weight_dtypes == {"int4": 25, "uint8": 1}
    assert q.details["backup_layers"] == [{"name": "head", "dtype": "uint8", "reason": "the model's last MatMul: "
                                           "NNCF keeps it at the backup precision unless all_layers=True"}]
    assert [f.name for f in q.float_layers] == ["pos"]  # the learned positions: an Add, not a weight
    assert "INT4_SYM" in q.toolchain and "group_size=32" in q.toolchain
    assert _size(xml) <= 0.2 * _size(fp32), (_size(xml), _size(fp32))
    model = encoder_int4["model"]
    samples = [transformer_encoder.example_inputs(model) for _ in range(4)]
    assert _cosine(model, xml, "intel-cpu", samples) >= 0.97


def test_int4_leaves_float_the_layer_whose_width_the_group_does_not_divide(convert):
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    result, xml = convert("intel-cpu", "int4", model=model, inputs=(torch.randn(1, 64),))
    assert [w["dtype"] for w in _weights(xml)] == ["i4", "f32", "u8"]
    q = result.quantization
    assert q.float_layers == [FloatLayer("2", "its 48 input channels are not a multiple of group_size 32: NNCF "
                                              "(group_size_fallback_mode=IGNORE) leaves it float32")]
    assert q.details["layer_dtypes"] == {"0": "int4", "2": "float32", "4": "uint8"}


def test_int4_on_npu_uses_a_symmetric_backup(convert):
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    result, xml = convert("intel-npu", "int4", model=model, inputs=(torch.randn(1, 64),))
    # the float layer stays f32: save_model skips fp16 compression for quantized models (is_model_optimized)
    assert [w["dtype"] for w in _weights(xml)] == ["i4", "f32", "i8"]
    assert result.quantization.details["backup_layers"][0]["dtype"] == "int8"
    assert "backup_mode=int8_sym" in result.quantization.toolchain
