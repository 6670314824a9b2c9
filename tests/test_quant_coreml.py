"""Core ML quantization: coremltools.optimize.coreml schemes, read back from the saved mlpackage's spec.

Core ML runs only on macOS, so on Linux these tests check what the artifact stores (weight dtypes, LUTs,
scales, weight.bin size) and what the report says about every weight; held-out parity comes from the
driver's torch simulation and is labelled as such.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from quant_models import REPORT_KEYS, noise_images, trained_bn
from target_helpers import make_job
from torch import nn

ct = pytest.importorskip("coremltools")

import converters  # noqa: E402
import sdk  # noqa: E402
from sdk.core.readers.coreml import spec_summary, weight_storage  # noqa: E402
from samples import transformer_encoder  # noqa: E402
from sdk import devices, recipes  # noqa: E402
from sdk.core.errors import UnsupportedRecipeError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_BIN = "Data/com.apple.CoreML/weights/weight.bin"
ON_MAC = platform.system() == "Darwin"


class DwCNN(nn.Module):
    """A stem under coremltools' weight_threshold (2048 elements), an expand conv with its BatchNorm folded in
    (the fused op carries the norm's debug handle), a depthwise conv that per-block INT4 cannot take (1 input
    channel per group), a pointwise conv and a classifier: ~150k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(32, 256, 1), nn.BatchNorm2d(256), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1, groups=256), nn.ReLU())
        self.project = nn.Conv2d(256, 512, 1)
        self.head = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.project(self.dw(self.expand(self.stem(x)))).mean((2, 3)))


def _images(n: int, seed: int) -> list[tuple[torch.Tensor]]:
    return noise_images(n, seed, size=16)


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    torch.manual_seed(0)
    return trained_bn(DwCNN(), _images(4, seed=3))


@pytest.fixture(scope="module")
def convert(cnn, tmp_path_factory):
    """convert(device, recipe, keep_float=(), model=cnn) -> (result, weight_storage, weight.bin bytes), cached."""
    cache: dict = {}

    def run(device: str, recipe: str, keep_float=(), model: nn.Module | None = None, inputs=None):
        key = (device, recipe, frozenset(keep_float), id(model))
        if key not in cache:
            model, inputs = (model, inputs) if model is not None else (cnn, _images(1, seed=1)[0])
            profile = devices.get(device)
            workdir = tmp_path_factory.mktemp(f"{device}-{recipe.replace(':', '')}")
            job = make_job(model, inputs, profile, workdir, recipe, calibration=_images(4, seed=2),
                           keep_float=frozenset(keep_float))
            result = converters.get("coreml").convert(job)
            package = workdir / result.model_file
            cache[key] = result, weight_storage(package), (package / WEIGHTS_BIN).stat().st_size, package
        return cache[key]

    return run


def _by_layer(result) -> dict[str, str]:
    """layer -> 'quantized' or its float reason, from the converter's report."""
    q = result.quantization
    return {**{name: "quantized" for name in q.quantized_layers}, **{f.name: f.reason for f in q.float_layers}}


def _constexpr_shapes(package: Path, op_type: str) -> list[dict[str, list[int]]]:
    """Shapes of each compression op's tensors (iOS16 ops keep them as attributes), straight from the proto."""
    from coremltools.models.utils import load_spec

    main = load_spec(str(package)).mlProgram.functions["main"]
    return [{k: [d.constant.size for d in v.type.tensorType.dimensions]
             for k, v in op.attributes.items() if k != "name"}
            for op in main.block_specializations[main.opset].operations if op.type == op_type]


def test_int8_weights_are_int8_per_output_channel(convert):
    result, storage, size, package = convert("apple-ane", "int8")
    _, _, fp32_size, _ = convert("apple-ane", "fp32")
    q = result.quantization
    assert q.quantized_layers == ["expand.0", "dw.0", "project", "head"]  # expand.0: found through BN folding
    assert [f.name for f in q.float_layers] == ["stem.0"]
    assert "weight_threshold (2048)" in q.float_layers[0].reason
    assert q.weight_dtypes == {"float16": 1, "int8": 4}
    assert sorted(e["stored"] for e in storage) == ["float16", "int8", "int8", "int8", "int8"]
    # per channel: one scale per output channel of every quantized weight (iOS17: constexpr_affine_dequantize)
    shapes = _constexpr_shapes(package, "constexpr_affine_dequantize")
    assert sorted((s["quantized_data"][0], s["scale"]) for s in shapes) == [(10, [10]), (256, [256]), (256, [256]),
                                                                           (512, [512])]
    assert size <= 0.3 * fp32_size, (size, fp32_size)
    assert "linear_quantize_weights" in q.toolchain and "per_channel" in q.toolchain
    assert "constexpr_lut_to_dense" not in spec_summary(package)["ops"]


@pytest.mark.skipif(ON_MAC, reason="checks what a host without Core ML does for static INT8")
def test_int8_off_macos_says_activations_stay_fp16(convert):
    result, *_ = convert("apple-ane", "int8")
    q = result.quantization
    assert q.activations == "float16" and q.weight_only
    assert "W8A16" in q.scheme and "only macOS" in q.scheme and "linear_quantize_activations" in q.scheme
    assert any("simulation" in note for note in result.notes)


def test_int8_dynamic_is_weight_only_and_says_so(convert):
    result, *_ = convert("apple-ane", "int8-dynamic")
    q = result.quantization
    assert q.activations == "float16" and "no run-time (dynamic) activation quantization" in q.scheme
    assert q.weight_dtypes == {"float16": 1, "int8": 4}


@pytest.mark.parametrize("device_id, recipe, stored", [
    ("apple-ane", "palettize:4", "lut_uint4"),  # iOS17 op: packed uint8 indices + a 16-entry LUT per tensor
    ("apple-mac-ane", "palettize:2", "lut_uint2"),  # iOS18 op: uint2 indices + a 4-entry LUT
])
def test_palettize_stores_lookup_table_indices(convert, device_id, recipe, stored):
    result, _, size, package = convert(device_id, recipe)
    _, _, fp32_size, _ = convert(device_id, "fp32")
    q = result.quantization
    assert q.weight_dtypes == {"float16": 1, stored: 4}
    assert q.quantized_layers == ["expand.0", "dw.0", "project", "head"]
    assert "k-means" in q.scheme and "palettize_weights" in q.toolchain
    assert spec_summary(package)["ops"]["constexpr_lut_to_dense"] == 4
    nbits = int(recipe.split(":")[1])
    assert size <= (nbits / 32 + 0.05) * fp32_size, (size, fp32_size)


def test_int4_blocks_weights_and_names_the_depthwise_conv_it_skips(convert):
    result, storage, _, package = convert("apple-mac-ane", "int4")
    q = result.quantization
    assert q.weight_dtypes == {"float16": 2, "int4": 3}
    assert q.quantized_layers == ["expand.0", "project", "head"]
    reasons = {f.name: f.reason for f in q.float_layers}
    assert set(reasons) == {"stem.0", "dw.0"}
    assert "weight_threshold" in reasons["stem.0"]
    assert "block size 32" in reasons["dw.0"] and "depthwise" in reasons["dw.0"] and "[256, 1, 3, 3]" in reasons["dw.0"]
    assert {e["op_type"]: e["stored"] for e in storage if e["shape"] == [256, 1, 3, 3]} == {"conv": "float16"}
    assert spec_summary(package)["ops"].get("constexpr_blockwise_shift_scale") == 3


def test_int4_needs_ios18_and_is_refused_before_any_work(convert, tmp_path):
    # The built-in iOS17 profile does not list int4, so the recipe is refused before any work ...
    with pytest.raises(UnsupportedRecipeError, match="apple-ane"):
        recipes.resolve(devices.get("apple-ane"), "int4")
    # ... and a user profile that lists it with an iOS17 target is refused by the converter, which says why.
    profile = dataclasses.replace(devices.get("apple-ane"), id="my-iphone", aliases=(),
                                  precisions=(*devices.get("apple-ane").precisions, "int4"))
    job = make_job(nn.Linear(64, 64), (torch.randn(1, 64),), profile, tmp_path, "int4")
    with pytest.raises(UnsupportedRecipeError, match="iOS18") as info:
        converters.get("coreml").convert(job)
    assert "palettize:4" in str(info.value) and "int4" not in info.value.supported
    assert not any(tmp_path.iterdir())


def test_palettize_bits_coremltools_lacks_are_refused(convert, tmp_path):
    profile = devices.get("apple-ane")
    job = make_job(nn.Linear(64, 64), (torch.randn(1, 64),), profile, tmp_path, "palettize:5")
    with pytest.raises(UnsupportedRecipeError, match="1, 2, 3, 4, 6, 8"):
        converters.get("coreml").convert(job)


def test_keep_float_reaches_a_batchnorm_folded_conv_and_stores_kept_weights_float16(convert):
    result, storage, *_ = convert("apple-ane", "int8", keep_float={"expand", "head"})
    layers = _by_layer(result)
    assert layers["expand.0"] == "kept in float on request (inside kept module 'expand')"  # the BN-folded conv
    assert layers["head"] == "kept in float on request"
    assert layers["dw.0"] == layers["project"] == "quantized"
    assert result.quantization.weight_dtypes == {"float16": 3, "int8": 2}
    by_shape = {tuple(e["shape"]): e["stored"] for e in storage}
    assert by_shape[(256, 32, 1, 1)] == by_shape[(10, 512)] == "float16"
    assert by_shape[(256, 1, 3, 3)] == by_shape[(512, 256, 1, 1)] == "int8"


def test_int4_transformer_encoder_is_a_fifth_of_fp32(convert):
    model = transformer_encoder.build()  # 4 layers, d=384: ~7.1M parameters
    inputs = transformer_encoder.example_inputs(model)
    _, _, fp32_size, _ = convert("apple-mac-ane", "fp32", model=model, inputs=inputs)
    result, _, size, _ = convert("apple-mac-ane", "int4", model=model, inputs=inputs)
    q = result.quantization
    assert size <= 0.2 * fp32_size, (size, fp32_size)
    assert q.weight_dtypes == {"int4": 27} and q.float_layers == []  # 4 x 6 linears, embed, pos, head
    assert {"embed", "pos", "layers.0.attn.q", "layers.3.mlp.2", "head"} <= set(q.quantized_layers)


def test_weight_storage_reads_ios18_packages_without_torch(convert):
    """The device side reads a compressed bundle's weights with coremltools alone."""
    *_, package = convert("apple-mac-ane", "int4")
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from sdk.core.readers.coreml import spec_summary, weight_storage\n"
            f"print(json.dumps([spec_summary({str(package)!r})['weight_dtypes'], weight_storage({str(package)!r})]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    dtypes, storage = json.loads(done.stdout.strip().splitlines()[-1])
    assert storage == convert("apple-mac-ane", "int4")[1]
    assert dtypes["int4"] == 256 * 32 + 512 * 256 + 10 * 512  # the three INT4 weights' elements


def test_palettize_through_sdk_export_is_checked_on_the_example_inputs(cnn, tmp_path):
    """Palettization takes no calibration data, so the driver's held-out parity can only use example_inputs."""
    res = sdk.export(cnn, "apple-ane", _images(1, seed=1)[0], recipe="palettize:4", output_dir=tmp_path,
                     sensitivity=True)
    q = res.report["quantization"]
    assert REPORT_KEYS <= set(q), REPORT_KEYS - set(q)
    assert q["quantized_layers"] == ["expand.0", "dw.0", "project", "head"]
    assert len(q["sensitivity"]["worst"]) == 5
    assert q["heldout"]["ran_on"].startswith("Core ML" if ON_MAC else "simulated in torch")
    assert q["heldout"]["source"].startswith("example_inputs only")
    assert spec_summary(res.artifact.model_path)["ops"]["constexpr_lut_to_dense"] == 4


@pytest.mark.skipif(not ON_MAC, reason="activation calibration runs Core ML predictions: macOS only")
def test_static_int8_on_macos_quantizes_activations(convert):
    result, _, _, package = convert("apple-ane", "int8")
    assert result.quantization.activations == "int8-static" and "W8A8" in result.quantization.scheme
    ops = spec_summary(package)["ops"]
    assert ops.get("quantize", 0) > 0 and ops.get("dequantize", 0) > 0
