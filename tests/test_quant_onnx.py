"""ONNX-for-TensorRT quantization with ONNX Runtime's own quantizers; ONNX Runtime's CPU provider runs the result.

Weight dtypes are read back from the saved model (the initializer behind each DequantizeLinear, or the float
initializer itself), and every Q/DQ is checked for what TensorRT needs (zero point 0, no int32 biases, int4
blocks TensorRT takes). TensorRT itself is not on this host: `ran_on` says ONNX Runtime stood in.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from quant_models import Net, images, with_bn_statistics
from target_helpers import make_job, outputs_of
from torch import nn

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, numpy_helper  # noqa: E402

import backends  # noqa: E402
import converters  # noqa: E402
from converters.onnx.weights import layer_weights, module_of  # noqa: E402
from converters.quant.sensitivity import quantizable_layers  # noqa: E402
from samples import transformer_encoder  # noqa: E402
from sdk import devices, recipes  # noqa: E402
from sdk.core.errors import ConversionError, UnsupportedRecipeError  # noqa: E402
from sdk.core.parity import compare  # noqa: E402
from sdk.core.results import FloatLayer  # noqa: E402

PROFILE = devices.get("jetson-orin-nano")
KEPT = "features.6"  # a conv with no BatchNorm after it, so its float weights reach the file unchanged
INT4 = recipes.Int4Weight(group_size=128)


def _convert(model: nn.Module, workdir: Path, recipe: str | recipes.Config, example: tuple,
             keep_float: frozenset[str] = frozenset(), calibration: list | None = None):
    job = make_job(model, example, PROFILE, workdir, [recipe], calibration=calibration, keep_float=keep_float)
    result = converters.get("onnx").convert(job)
    return result, workdir / result.model_file


def _run(model: nn.Module, path: Path, samples: list[tuple[torch.Tensor, ...]], recipe: str) -> tuple[dict, str]:
    """Held-out parity through the SDK's tensorrt backend (ONNX Runtime's CPU provider standing in)."""
    refs = [outputs_of(model, s) for s in samples]
    manifest = {"inputs": [{"name": f"in_{i}", "shape": list(t.shape), "dtype": "float32"}
                           for i, t in enumerate(samples[0])],
                "outputs": [{"name": f"out_{i}", "shape": list(r.shape), "dtype": "float32"}
                            for i, r in enumerate(refs[0])],
                "runtime_options": dict(PROFILE.converter), "recipe": [str(recipe)],
                "recipe_configs": recipes.Recipe(tuple(recipes.parse(recipe))).to_dicts()}
    session = backends.get("tensorrt").load(path, manifest)
    got = [session.run([t.numpy() for t in s]) for s in samples]
    outputs = range(len(refs[0]))
    return compare([np.concatenate([g[i] for g in got]) for i in outputs],
                   [np.concatenate([r[i] for r in refs]) for i in outputs], {"min_cosine": -1.0}), session.ran_on


def _stored(path: Path) -> dict[str, np.ndarray]:
    """The weight each Conv/Gemm/MatMul node reads, as stored in the file, by node name."""
    model = onnx.load(str(path))
    tensors = {t.name: t for t in model.graph.initializer}
    return {node.name: tensors[weight] for node, weight, _ in layer_weights(model)}


def _qdq(path: Path) -> tuple[onnx.ModelProto, dict[str, TensorProto], list]:
    model = onnx.load(str(path))
    return model, {t.name: t for t in model.graph.initializer}, [
        n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


@pytest.fixture(scope="module")
def net() -> nn.Module:
    torch.manual_seed(0)
    return with_bn_statistics(Net(), spread=0.2)


@pytest.fixture(scope="module")
def calibration() -> list[tuple[torch.Tensor]]:
    return images(16, 1)


@pytest.fixture(scope="module")
def heldout() -> list[tuple[torch.Tensor]]:
    return images(8, 2)


@pytest.fixture(scope="module")
def fp32(net, tmp_path_factory):
    return _convert(net, tmp_path_factory.mktemp("fp32"), "fp32", images(1, 0)[0])


@pytest.fixture(scope="module")
def int8(net, calibration, tmp_path_factory):
    return _convert(net, tmp_path_factory.mktemp("int8"), "int8", images(1, 0)[0], calibration=calibration)


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    return transformer_encoder.build()  # 4 layers, d=384


@pytest.fixture(scope="module")
def encoder_fp32(encoder, tmp_path_factory):
    return _convert(encoder, tmp_path_factory.mktemp("enc_fp32"), "fp32", transformer_encoder.example_inputs(encoder))


@pytest.fixture(scope="module")
def int4_kept(encoder, tmp_path_factory):
    return _convert(encoder, tmp_path_factory.mktemp("enc_int4"), INT4, transformer_encoder.example_inputs(encoder),
                    keep_float=frozenset({"layers.0.attn.q"}))


def test_int8_quantizes_every_layer_in_tensorrt_form(net, int8, fp32, heldout):
    result, path = int8
    q = result.quantization
    assert q.weight_dtypes == {"int8": 5}  # read back from the file
    assert q.quantized_layers == quantizable_layers(net) and q.float_layers == []
    assert "quantize_static" in q.toolchain and "16 calibration samples" in q.scheme
    assert q.activations == "int8-static" and not q.weight_only
    assert path.stat().st_size <= 0.3 * fp32[1].stat().st_size
    model, tensors, qdq = _qdq(path)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 17  # the profile's
    zero_points = [numpy_helper.to_array(tensors[n.input[2]]) for n in qdq]
    assert len(zero_points) == len(qdq) and all(not z.any() for z in zero_points)  # symmetric: TensorRT's rule
    assert {tensors[n.input[0]].data_type for n in qdq if n.input[0] in tensors} == {TensorProto.INT8}  # no int32 bias
    consumers = {i: n.op_type for n in model.graph.node for i in n.input}
    dequantized = [n.output[0] for n in qdq if n.op_type == "DequantizeLinear"]
    assert {consumers[t] for t in dequantized} == {"Conv", "Gemm"}  # Q/DQ only on the weighted ops' inputs
    parity, ran_on = _run(net, path, heldout, "int8")
    assert parity["outputs"][0]["cosine"] >= 0.99 and parity["outputs"][0]["max_abs_err"] > 0
    assert "stand-in for TensorRT" in ran_on and "Q/DQ graph ran on ONNX Runtime" in ran_on
    assert any("Tensor Cores" in note for note in result.notes)


def test_kept_conv_reads_its_own_float_initializer_and_the_rest_int8(net, calibration, heldout, tmp_path):
    result, path = _convert(net, tmp_path, "int8", images(1, 0)[0], frozenset({KEPT}), calibration)
    q = result.quantization
    assert q.weight_dtypes == {"int8": 4, "fp32": 1}
    assert q.float_layers == [FloatLayer(KEPT, "kept in float on request")]
    assert q.quantized_layers == [name for name in quantizable_layers(net) if name != KEPT]
    stored = _stored(path)
    kept = stored.pop(f"/features/{KEPT}/Conv")
    np.testing.assert_array_equal(numpy_helper.to_array(kept), net.get_submodule(KEPT).weight.detach().numpy())
    assert {t.data_type for t in stored.values()} == {TensorProto.INT8}
    parity, _ = _run(net, path, heldout, "int8")
    assert parity["outputs"][0]["cosine"] >= 0.99


def test_int8_two_inputs_two_outputs_and_a_layer_run_twice_on_one_stored_weight(two_in_two_out, two_inputs, tmp_path):
    g = torch.Generator().manual_seed(3)
    samples = [(torch.randn(1, 16, generator=g), torch.randn(1, 16, generator=g)) for _ in range(12)]
    result, path = _convert(two_in_two_out, tmp_path, "int8", two_inputs, calibration=samples[:8])
    assert result.quantization.quantized_layers == ["a", "b"]
    assert result.quantization.weight_dtypes == {"int8": 2}  # `a` runs twice on one stored weight
    parity, _ = _run(two_in_two_out, path, samples[8:], "int8")
    assert [o["cosine"] >= 0.99 for o in parity["outputs"]] == [True, True]


def test_int4_encoder_is_blockwise_weight_only_qdq(encoder, int4_kept, encoder_fp32):
    result, path = int4_kept
    q = result.quantization
    assert q.weight_dtypes == {"int4": 24, "fp32": 2}  # 4 x 6 Linears + embed, one kept; the head is a Gemm
    assert {f.name for f in q.float_layers} == {"layers.0.attn.q", "head"}
    assert "Gemm" in next(f.reason for f in q.float_layers if f.name == "head")
    assert q.activations == "float16" and q.weight_only  # what the driver's sensitivity simulation follows
    assert path.stat().st_size <= 0.2 * encoder_fp32[1].stat().st_size
    model, tensors, qdq = _qdq(path)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 21 and model.ir_version >= 10
    assert not [n for n in qdq if n.op_type == "QuantizeLinear"]  # weight-only: activations never quantized
    for node in qdq:
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs == {"axis": 0, "block_size": 128} and len(node.input) == 2  # no zero point: symmetric
        assert tensors[node.input[0]].data_type == TensorProto.INT4
    assert any("TensorRT >= 10" in note for note in result.notes)


def test_int4_keeps_the_requested_linear_float_and_tracks_fp32(encoder, int4_kept):
    stored = _stored(int4_kept[1])
    weight = numpy_helper.to_array(stored.pop("/layers/layers.0/attn/q/MatMul"))
    np.testing.assert_array_equal(weight, encoder.layers[0].attn.q.weight.detach().numpy().T)  # MatMul takes W^T
    assert sum(t.data_type == TensorProto.INT4 for t in stored.values()) == 24
    g = torch.Generator().manual_seed(4)
    samples = [(torch.randn(1, encoder.seq_len, encoder.in_dim, generator=g),) for _ in range(4)]
    parity, ran_on = _run(encoder, int4_kept[1], samples, str(INT4))
    assert parity["outputs"][0]["cosine"] >= 0.97 and parity["outputs"][0]["max_abs_err"] > 0
    assert "stand-in for TensorRT" in ran_on


def test_int4_on_linears_the_block_does_not_divide_is_refused_with_the_block_reason(tmp_path):
    model = nn.Sequential(nn.Linear(192, 64), nn.GELU(), nn.Linear(64, 128)).eval()  # K=192 is not 128 x n
    with pytest.raises(ConversionError, match="int4:128 quantized no layer") as info:  # the driver refuses it
        _convert(model, tmp_path, INT4, (torch.randn(1, 4, 192),))
    assert "192 is not a multiple of the block size 128" in str(info.value)
    assert "64 is not a multiple" in str(info.value)


def test_int4_blocks_tensorrt_cannot_build_are_refused_before_any_work(encoder, tmp_path):
    with pytest.raises(UnsupportedRecipeError, match="blocks of 64 or 128") as info:
        _convert(encoder, tmp_path, "int4", transformer_encoder.example_inputs(encoder))  # group 32
    assert "int4:128" in str(info.value)
    assert "int8-dynamic" not in converters.get("onnx").supported  # TensorRT has no dynamic INT8
    assert not list(tmp_path.iterdir())


def test_node_names_map_back_to_modules():
    modules = ["layers", "layers.0", "layers.0.attn", "layers.0.attn.q", "blocks.1", "blocks.1.conv", "head"]
    assert module_of("/layers/layers.0/attn/q/MatMul", modules) == "layers.0.attn.q"
    assert module_of("/layers/layers.0/attn/MatMul_1", modules) == "layers.0.attn"
    assert module_of("/blocks.1/conv/Conv", modules) == "blocks.1.conv"  # a ModuleList adds no scope
    assert module_of("/head/Gemm", modules) == "head"
    assert module_of("/ReduceMean", modules) is None and module_of("/nope/Conv", modules) is None
