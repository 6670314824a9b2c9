"""ExecuTorch/XNNPACK quantization with the real toolchain: PT2E XNNPACKQuantizer (int8, int8-dynamic) and torchao's
8da4w (int4), lowered to XNNPACK and run by the ExecuTorch runtime.

Layer outcomes are checked against the artifact, not only the converter's word: a layer kept in float must have its
float32 weights in the .pte byte for byte (XNNPACK stores conv filters OHWI), a quantized one must not; sizes are
the files' sizes and parity is the runtime's output against torch.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import quant_models
import torch
from quant_models import with_bn_statistics
from target_helpers import make_job
from torch import nn

pytest.importorskip("executorch")

import backends
import converters
import sdk.devices
import sdk.core.recipes
from converters.executorch import quantize as et_quantize
from converters.quant.sensitivity import quantizable_layers
from samples import transformer_encoder
from sdk.core.errors import ConversionError, UnsupportedRecipeError
from sdk.core.parity import compare
from sdk.core.results import FloatLayer

PROFILE = sdk.devices.get("android-arm64")
KEPT = "features.6"  # a conv with no BatchNorm after it, so its float weights reach the file unchanged


class Net(quant_models.Net):
    """quant_models.Net pooled by nn.AdaptiveAvgPool2d, which lowers to a keepdim mean that XNNPACK takes (a mean
    without keepdim it refuses, leaving that op to portable kernels): the whole int8 graph is delegated."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)).flatten(1))


class ConvAndOddLinear(nn.Module):
    """What 8da4w cannot take next to what it can: a conv, a Linear whose 40 inputs do not split into groups of
    32, and two Linears with 64 inputs (so most layers are quantized)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 40, 3)
        self.odd = nn.Linear(40, 64)
        self.even = nn.Linear(64, 64)
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.even(torch.relu(self.odd(self.conv(x).mean(dim=(2, 3)))))))


def _convert(model: nn.Module, inputs: tuple, workdir: Path, recipe: str | sdk.core.recipes.Config, **fields):
    result = converters.get("executorch").convert(make_job(model, inputs, PROFILE, workdir, [recipe], **fields))
    return result, workdir / result.model_file


def _cosine(model: nn.Module, path: Path, samples: list[tuple]) -> float:
    """The runtime's outputs on `samples` against torch's, pooled."""
    x, = samples[0]
    with torch.no_grad():
        ref = [model(*s).numpy() for s in samples]
    manifest = {"inputs": [{"name": "in_0", "shape": list(x.shape), "dtype": "float32"}],
                "outputs": [{"name": "out_0", "shape": list(ref[0].shape), "dtype": "float32"}],
                "runtime_options": dict(PROFILE.converter)}
    session = backends.get("executorch").load(path, manifest)
    got = [session.run([s[0].numpy()])[0] for s in samples]
    return compare([np.concatenate(got)], [np.concatenate(ref)], {"min_cosine": -1.0})["outputs"][0]["cosine"]


def _float_weight_in_file(module: nn.Module, path: Path) -> bool:
    """Whether the layer's float32 weight is in the file as XNNPACK stores it (conv filters OHWI)."""
    weight = module.weight.detach()
    layout = weight.permute(0, 2, 3, 1) if weight.dim() == 4 else weight
    return layout.contiguous().numpy().tobytes() in path.read_bytes()


@pytest.fixture(scope="module")
def net() -> Net:
    torch.manual_seed(0)
    return with_bn_statistics(Net(), spread=0.5)


@pytest.fixture(scope="module")
def calibration() -> list[tuple[torch.Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(1, 3, 32, 32),) for _ in range(20)]


@pytest.fixture(scope="module")
def heldout() -> list[tuple[torch.Tensor]]:
    torch.manual_seed(2)
    return [(torch.randn(1, 3, 32, 32),) for _ in range(8)]


@pytest.fixture(scope="module")
def fp32_size(net, tmp_path_factory) -> int:
    _, path = _convert(net, (torch.randn(1, 3, 32, 32),), tmp_path_factory.mktemp("fp32"), "fp32")
    return path.stat().st_size


@pytest.fixture(scope="module")
def int8(net, calibration, tmp_path_factory):
    return _convert(net, (torch.randn(1, 3, 32, 32),), tmp_path_factory.mktemp("int8"), "int8",
                    calibration=calibration[:16])


@pytest.fixture(scope="module")
def int8_kept(net, calibration, tmp_path_factory):
    return _convert(net, (torch.randn(1, 3, 32, 32),), tmp_path_factory.mktemp("kept"), "int8",
                    calibration=calibration, keep_float=frozenset({KEPT}))


@pytest.fixture(scope="module")
def encoder() -> transformer_encoder.TransformerEncoder:
    return transformer_encoder.build()  # 4 layers, d=384: 7.2M parameters


@pytest.fixture(scope="module")
def int4(encoder, tmp_path_factory):
    return _convert(encoder, transformer_encoder.example_inputs(encoder), tmp_path_factory.mktemp("int4"), "int4",
                    keep_float=frozenset({"head"}))


def test_static_int8_pte_is_small_with_xnnpack_qc8_weights(net, int8, fp32_size, heldout):
    result, path = int8
    assert path.stat().st_size <= 0.3 * fp32_size
    assert _cosine(net, path, heldout) >= 0.99
    q = result.quantization
    assert "XNNPACKQuantizer" in q.toolchain and "16 calibration samples" in q.scheme
    assert q.quantized_layers == quantizable_layers(net) and q.float_layers == []
    assert q.weight_dtypes == {"int8": 5} and q.activations == "int8-static"
    assert q.details["xnnpack_datatypes"] == {"weights": {"qcint8": 5}, "biases": {"qcint32": 5},
                                              "inputs": {"qint8": 5}}
    modules = dict(net.named_modules())
    assert not any(_float_weight_in_file(modules[name], path) for name in ("features.6", "features.8", "head"))


def test_kept_conv_computes_in_float_and_is_stored_fp32_ohwi(net, int8_kept, heldout):
    result, path = int8_kept
    q = result.quantization
    assert [f.name for f in q.float_layers] == [KEPT]
    assert q.weight_dtypes == {"int8": 4, "fp32": 1}
    assert q.details["xnnpack_datatypes"]["inputs"] == {"qint8": 4, "fp32": 1}  # the kept conv computes in float
    modules = dict(net.named_modules())
    assert _float_weight_in_file(modules[KEPT], path)
    assert not any(_float_weight_in_file(modules[name], path) for name in ("features.8", "head"))
    assert _cosine(net, path, heldout) >= 0.99


def test_dynamic_int8_quantizes_linear_inputs_per_inference_and_keeps_a_container_float(tmp_path):
    model = transformer_encoder.build(small=True)
    inputs = transformer_encoder.example_inputs(model)
    result, path = _convert(model, inputs, tmp_path, "int8-dynamic", keep_float=frozenset({"layers.0"}))
    q = result.quantization
    kept = [name for name in quantizable_layers(model) if name.startswith("layers.0.")]
    assert len(kept) == 6 and sorted(f.name for f in q.float_layers) == sorted(kept)
    assert all("inside kept module 'layers.0'" in f.reason for f in q.float_layers)
    assert sorted(q.quantized_layers) == sorted(set(quantizable_layers(model)) - set(kept))
    n = len(q.quantized_layers)
    assert q.details["xnnpack_datatypes"]["inputs"] == {"qdint8": n, "fp32": 6}  # activations quantized per inference
    assert q.weight_dtypes == {"int8": n, "fp32": 6} and q.activations == "int8-dynamic"
    torch.manual_seed(3)
    assert _cosine(model, path, [transformer_encoder.example_inputs(model) for _ in range(4)]) >= 0.99


def test_int4_8da4w_encoder_is_under_a_fifth_of_fp32(encoder, int4):
    result, path = int4
    fp32_bytes = 4 * sum(p.numel() for p in encoder.parameters())  # a fp32 .pte holds at least these
    assert path.stat().st_size <= 0.2 * fp32_bytes
    torch.manual_seed(4)
    assert _cosine(encoder, path, [transformer_encoder.example_inputs(encoder) for _ in range(3)]) >= 0.97
    q = result.quantization
    linears = [n for n, m in encoder.named_modules() if isinstance(m, nn.Linear)]
    assert sorted(q.quantized_layers) == sorted(set(linears) - {"head"})
    assert q.float_layers == [FloatLayer("head", "kept in float on request; stays fp32")]
    assert q.weight_dtypes == {"int4": 25, "fp32": 1} and q.activations == "int8-dynamic"  # 8da4w
    assert q.details["xnnpack_datatypes"]["weights"] == {"qbint4": 25, "fp32": 1}  # block-wise int4 in XNNPACK
    assert q.details["xnnpack_datatypes"]["inputs"] == {"qdint8": 25, "fp32": 1}
    assert _float_weight_in_file(encoder.head, path)
    assert not _float_weight_in_file(encoder.layers[0].mlp[0], path)


def test_int4_reports_what_8da4w_cannot_take(tmp_path):
    torch.manual_seed(0)
    model = ConvAndOddLinear().eval()
    result, path = _convert(model, (torch.randn(1, 3, 8, 8),), tmp_path, sdk.core.recipes.Int4Weight(group_size=32))
    q = result.quantization
    assert q.quantized_layers == ["even", "head"]
    reasons = {f.name: f.reason for f in q.float_layers}
    assert "nn.Linear layers only" in reasons["conv"]
    assert "in_features 40 is not a multiple of group_size 32" in reasons["odd"]
    assert q.weight_dtypes == {"fp32": 2, "int4": 2}
    assert _float_weight_in_file(model.odd, path) and _float_weight_in_file(model.conv, path)


def test_int4_on_a_model_without_linears_is_refused_with_the_8da4w_reason(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()).eval()
    with pytest.raises(ConversionError, match="int4:32 quantized no layer.*nn.Linear layers only"):
        _convert(model, (torch.randn(1, 3, 8, 8),), tmp_path, "int4")


def test_symmetric_activations_are_refused_before_any_work(net, calibration, tmp_path):
    with pytest.raises(UnsupportedRecipeError, match="symmetric_activations=True"):
        _convert(net, calibration[0], tmp_path, sdk.core.recipes.Int8Static(symmetric_activations=True),
                 calibration=calibration)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, says", [
    ({"avx2", "fma"}, "no int8 dot-product instructions (no VNNI)"),
    ({"avx2", "avx_vnni", "avx512_vnni"}, "int8 dot-product instructions (avx512_vnni, avx_vnni)"),
    (None, "could not be read"),
])
def test_speed_note_is_worded_from_the_cpu_flags(monkeypatch, flags, says):
    monkeypatch.setattr(et_quantize, "_cpu_flags", lambda: flags)
    note = et_quantize._speed_note()
    assert note.startswith("speed: quantization is applied for size and memory, not promised as a speed-up")
    assert says in note


def test_quantized_results_carry_the_speed_note(int8_kept):
    result, _ = int8_kept
    assert any(n.startswith("speed:") for n in result.notes)


class ReLU6Net(nn.Module):
    """conv-BN-ReLU6 blocks (nn.ReLU6 exports as hardtanh(0, 6), F.relu6 as aten.relu6) whose pre-activations span
    far beyond [0, 6], as in EfficientNet-Lite: observed before the clamp, a ReLU6 output gets few levels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.conv3 = nn.Conv2d(16, 32, 1)
        self.head = nn.Linear(32, 10)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2, self.conv3):
                conv.weight.mul_(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.bn1(self.conv1(x)))
        x = nn.ReLU6()(self.conv2(x))
        x = nn.ReLU6()(self.conv3(x))
        return self.head(x.mean(dim=(2, 3), keepdim=True).flatten(1))


@pytest.fixture(scope="module")
def relu6_net() -> ReLU6Net:
    torch.manual_seed(5)
    return with_relu6_bn_statistics(ReLU6Net())


def with_relu6_bn_statistics(model: ReLU6Net) -> ReLU6Net:
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-2, 2)
    return model.eval()


def test_relu6_is_observed_after_the_clamp_only(relu6_net, calibration, tmp_path):
    """Each conv -> ReLU6 is one pattern: no observer between the conv and its clamp, one after the clamp."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    job = make_job(relu6_net, calibration[0], PROFILE, tmp_path, ["int8"], calibration=calibration)
    graph = prepare_pt2e(torch.export.export(relu6_net, calibration[0]).module(), et_quantize._pt2e_quantizer(job))
    clamps = [n for n in graph.graph.nodes if n.op == "call_function"
              and n.target in (torch.ops.aten.hardtanh.default, torch.ops.aten.relu6.default)]
    assert len(clamps) == 3
    for clamp in clamps:
        assert clamp.args[0].target == torch.ops.aten.conv2d.default  # straight from the conv, unobserved
        assert [u.op for u in clamp.users] == ["call_module"]  # its one observer


def test_relu6_int8_stays_delegated_and_beats_the_upstream_annotation(relu6_net, calibration, heldout, tmp_path,
                                                                     monkeypatch):
    for name in ("fixed", "upstream"):
        (tmp_path / name).mkdir()
    fixed, fixed_path = _convert(relu6_net, calibration[0], tmp_path / "fixed", "int8", calibration=calibration)
    assert fixed.coverage.fraction == 1.0 and fixed.coverage.not_delegated == {}
    assert fixed.quantization.weight_dtypes == {"int8": 4}
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    monkeypatch.setattr(et_quantize, "ReLU6XNNPACKQuantizer", XNNPACKQuantizer)  # upstream: observer before the clamp
    _, upstream_path = _convert(relu6_net, calibration[0], tmp_path / "upstream", "int8", calibration=calibration)
    fixed_cosine, upstream_cosine = (_cosine(relu6_net, p, heldout) for p in (fixed_path, upstream_path))
    assert fixed_cosine >= 0.99 and 1 - fixed_cosine < 0.5 * (1 - upstream_cosine)
