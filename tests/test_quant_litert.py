"""LiteRT quantization with the real toolchain: litert-torch converts, ai-edge-quantizer quantizes, ai_edge_litert runs.

Weight dtypes are read back from the .tflite (never taken from the converter's word), and a layer kept in
float must show up in the file as exactly its torch weights in float32, the others as int8.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from quant_models import Net, images, with_bn_statistics
from target_helpers import make_job
from torch import nn

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("ai_edge_quantizer")

import backends
import converters
import sdk.devices
import sdk.core.recipes
from converters.litert import quantize as litert_quantize
from converters.quant.sensitivity import quantizable_layers
from sdk.core.errors import ConversionError, UnsupportedRecipeError
from sdk.core.parity import compare
from sdk.core.results import FloatLayer

PROFILE = sdk.devices.get("android-litert")
KEPT = "features.6"  # a conv with no BatchNorm after it, so its float weights reach the file unchanged


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + x


class Blocks(nn.Module):
    """Identical blocks in a ModuleList: the list is never called, so it is not on the module stack."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    """MultiheadAttention uses its out_proj's weights directly (F.multi_head_attention_forward), so out_proj
    never runs as a module and no op carries its path; `attn` owns both projections."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0])


def _convert(model: nn.Module, workdir: Path, recipe: str, keep_float: frozenset[str] = frozenset(),
             calibration: list | None = None):
    job = make_job(model, images(1, 0)[0], PROFILE, workdir, [recipe], calibration=calibration, keep_float=keep_float)
    result = converters.get("litert").convert(job)
    return result, workdir / result.model_file


def _parity(model: nn.Module, path: Path, samples: list[tuple[torch.Tensor]]) -> dict:
    """Held-out parity through the SDK's LiteRT backend (which (de)quantizes int8 model I/O)."""
    with torch.no_grad():
        ref = np.concatenate([model(*s).numpy() for s in samples])
    spec = {"name": "in_0", "shape": [1, 3, 32, 32], "dtype": "float32"}
    manifest = {"inputs": [spec], "outputs": [{"name": "out_0", "shape": [1, 10], "dtype": "float32"}],
                "runtime_options": {}}
    session = backends.get("litert").load(path, manifest)
    got = np.concatenate([session.run([s[0].numpy()])[0] for s in samples])
    return compare([got], [ref], {"min_cosine": 0.99})


def _weights(path: Path) -> list[tuple[np.dtype, np.ndarray]]:
    """The .tflite's conv/linear weights: (dtype, values), read without any delegate."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    return [(np.dtype(details[int(op["inputs"][1])]["dtype"]), interpreter.get_tensor(int(op["inputs"][1])))
            for op in interpreter._get_ops_details() if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED")]


def _assert_only_float_weights_are(path: Path, *modules: nn.Module) -> None:
    """The file's float32 weights are exactly these modules' (conv OIHW -> TFLite OHWI); the rest are int8."""
    weights = _weights(path)
    floats = [values for dtype, values in weights if dtype == np.float32]
    expected = [m.weight.detach().permute(0, 2, 3, 1).numpy() if m.weight.dim() == 4 else m.weight.detach().numpy()
                for m in modules]
    assert len(floats) == len(expected)
    for got, want in zip(floats, expected):
        np.testing.assert_array_equal(got, want)  # their own weights, untouched
    others = {dtype for dtype, _ in weights if dtype != np.float32}
    assert others == {np.dtype(np.int8)}


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
    return _convert(net, tmp_path_factory.mktemp("fp32"), "fp32")


@pytest.fixture(scope="module")
def int8(net, calibration, tmp_path_factory):
    return _convert(net, tmp_path_factory.mktemp("int8"), "int8", calibration=calibration)


@pytest.fixture(scope="module")
def int8_kept(net, calibration, tmp_path_factory):
    return _convert(net, tmp_path_factory.mktemp("int8_kept"), "int8", frozenset({KEPT}), calibration)


@pytest.fixture(scope="module")
def int8_dynamic(net, tmp_path_factory):
    return _convert(net, tmp_path_factory.mktemp("int8_dyn"), "int8-dynamic")


def test_static_int8_quantizes_every_layer_calibrated(net, int8, fp32, heldout):
    result, path = int8
    q = result.quantization
    assert q.weight_dtypes == {"int8": 5}  # read back from the .tflite
    assert q.quantized_layers == quantizable_layers(net) and q.float_layers == []
    assert "static_wi8_ai8" in q.toolchain and q.activations == "int8-static"
    assert "16 calibration samples" in q.scheme
    assert path.stat().st_size <= 0.3 * fp32[1].stat().st_size
    parity = _parity(net, path, heldout)
    assert parity["passed"], parity["failures"]
    assert parity["outputs"][0]["max_abs_err"] > 0  # really quantized
    assert result.coverage.not_delegated == {}  # XNNPACK takes the whole int8 graph
    assert any(note.startswith("speed:") and "measure on the device" in note for note in result.notes)


def test_static_int8_model_input_is_int8_and_output_float(int8):
    """The head keeps int8 weights but writes float logits (dynamic range), so no calibrated range clips them."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(int8[1])).get_signature_runner()
    assert runner.get_input_details()["in_0"]["dtype"] == np.int8
    assert runner.get_output_details()["out_0"]["dtype"] == np.float32
    assert "(FULLY_CONNECTED with int8 weights, dynamic range)" in int8[0].quantization.scheme


def test_kept_conv_is_stored_float32_ohwi_between_a_quantize_pair(net, int8_kept, heldout):
    result, path = int8_kept
    q = result.quantization
    assert q.weight_dtypes == {"int8": 4, "fp32": 1}
    assert q.float_layers == [FloatLayer(KEPT, "kept in float on request")]
    assert q.quantized_layers == [n for n in quantizable_layers(net) if n != KEPT]
    _assert_only_float_weights_are(path, net.get_submodule(KEPT))
    op_types = result.coverage.details["op_types"]
    # one pair around the kept conv; one more DEQUANTIZE into the head, whose float logits need no QUANTIZE
    assert op_types["DEQUANTIZE"] == 2 and op_types["QUANTIZE"] == 1
    parity = _parity(net, path, heldout)
    assert parity["passed"], parity["failures"]


def test_keep_float_finds_one_of_identical_blocks_in_a_module_list(tmp_path):
    torch.manual_seed(6)
    model = Blocks().eval()
    result, path = _convert(model, tmp_path, "int8-dynamic", frozenset({"blocks.1.conv"}))
    q = result.quantization
    assert q.quantized_layers == ["stem", "blocks.0.conv", "head"]
    assert q.float_layers == [FloatLayer("blocks.1.conv", "kept in float on request")]
    _assert_only_float_weights_are(path, model.blocks[1].conv)


def test_keep_float_of_a_module_with_no_op_of_its_own_says_to_keep_its_parent(tmp_path):
    torch.manual_seed(7)
    model, x = Attention().eval(), torch.randn(1, 8, 32)
    job = make_job(model, (x,), PROFILE, tmp_path, ["int8-dynamic"], keep_float=frozenset({"attn.out_proj"}))
    with pytest.raises(ConversionError, match="keep its parent module"):
        converters.get("litert").convert(job)
    job.keep_float = frozenset({"attn"})
    q = converters.get("litert").convert(job).quantization
    assert q.float_layers == [FloatLayer("attn", "kept in float on request")]
    assert q.quantized_layers == ["head"] and q.weight_dtypes == {"fp32": 2, "int8": 1}


def test_dynamic_int8_has_int8_weights_and_float_io(net, int8_dynamic, fp32, heldout):
    result, path = int8_dynamic
    q = result.quantization
    assert q.weight_dtypes == {"int8": 5} and q.quantized_layers == quantizable_layers(net)
    assert "dynamic_wi8_afp32" in q.toolchain and q.activations == "int8-dynamic"
    assert path.stat().st_size <= 0.3 * fp32[1].stat().st_size
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    assert runner.get_input_details()["in_0"]["dtype"] == np.float32
    parity = _parity(net, path, heldout)
    assert parity["passed"], parity["failures"]


def test_dynamic_int8_keeps_a_layer_float(net, tmp_path):
    result, path = _convert(net, tmp_path, "int8-dynamic", frozenset({KEPT}))
    assert result.quantization.weight_dtypes == {"int8": 4, "fp32": 1}
    _assert_only_float_weights_are(path, net.get_submodule(KEPT))


def test_symmetric_activations_are_refused_before_any_work(net, tmp_path):
    job = make_job(net, images(1, 0)[0], PROFILE, tmp_path, [sdk.core.recipes.Int8Static(symmetric_activations=True)],
                   calibration=images(2, 3))
    with pytest.raises(UnsupportedRecipeError, match="symmetric_activations"):
        converters.get("litert").convert(job)
    assert not list(tmp_path.iterdir())


class SumOfChannels(nn.Module):
    """Each hidden unit reads one of two inputs; the head adds them. Calibrated on inputs where only one is on,
    every hidden range is covered but the logits reach only half of what inputs with both on give: the logits
    exceed their calibrated range, as a classifier's do on inputs more confident than its calibration data."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden, self.head = nn.Linear(2, 8), nn.Linear(8, 4)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(4, 1))
            self.hidden.bias.zero_()
            self.head.weight.uniform_(0.5, 1.0)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.hidden(x)))


def _one_on(n: int) -> list[tuple[torch.Tensor]]:
    return [(torch.tensor([[u, 0.0]] if i % 2 else [[0.0, u]]),) for i, u in enumerate(torch.linspace(0, 1, n))]


def _both_on(n: int) -> list[tuple[torch.Tensor]]:
    return [(torch.full((1, 2), float(u)),) for u in torch.linspace(0.5, 1, n)]


def _run(path: Path, samples: list[tuple[torch.Tensor]]) -> np.ndarray:
    manifest = {"inputs": [{"name": "in_0", "shape": [1, 2], "dtype": "float32"}],
                "outputs": [{"name": "out_0", "shape": [1, 4], "dtype": "float32"}], "runtime_options": {}}
    session = backends.get("litert").load(path, manifest)
    return np.concatenate([session.run([s[0].numpy()])[0] for s in samples])


def test_logits_beyond_the_calibrated_range_are_not_clipped(tmp_path, monkeypatch):
    torch.manual_seed(8)
    model, calibration, heldout = SumOfChannels().eval(), _one_on(16), _both_on(8)
    with torch.no_grad():
        ref = np.concatenate([model(*s).numpy() for s in heldout])
        calibrated_max = max(float(model(*s).max()) for s in calibration)
    assert ref.max() > 1.5 * calibrated_max

    def convert(folder: str):
        job = make_job(model, calibration[0], PROFILE, tmp_path / folder, ["int8"], calibration=calibration)
        job.workdir.mkdir()
        result = converters.get("litert").convert(job)
        return result, job.workdir / result.model_file

    result, path = convert("float-logits")
    assert result.quantization.weight_dtypes == {"int8": 2} and result.coverage.fraction == 1.0
    np.testing.assert_allclose(_run(path, heldout), ref, rtol=0.05, atol=0.05 * calibrated_max)
    # int8 logits, as ai-edge-quantizer
    monkeypatch.setattr(litert_quantize, "_output_ops", lambda table, interpreter: [])
    _, clipped = convert("int8-logits")
    assert _run(clipped, heldout).max() <= 1.02 * calibrated_max < 0.7 * ref.max()
