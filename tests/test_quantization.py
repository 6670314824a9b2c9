"""Quantization through each target's own toolchain, via sdk.export: sizes, held-out parity, sensitivity, fallback."""
from __future__ import annotations

import pytest
import torch
from quant_models import REPORT_KEYS, DeadInputOutlier, Net, noise_images, trained_bn
from torch import nn

import sdk
from sdk.core.errors import InvalidInputsError, ParityError, UnsupportedRecipeError

HOST_RUNNABLE_INT8 = ["android-arm64", "android-litert", "intel-cpu", "jetson-orin-nano"]


class OutlierMLP(nn.Module):
    """One badly quantizable layer: `mid` reads a huge-outlier channel that per-tensor INT8 activations cannot
    represent without flattening every other channel to zero (the LLM 'outlier feature' problem, in miniature)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(32, 64)
        self.mid = nn.Linear(64, 64)
        self.out = nn.Linear(64, 10)
        with torch.no_grad():
            self.inp.weight[0].zero_()
            self.inp.bias[0] = 2000.0         # channel 0 of mid's input is a constant 2000 ...
            self.mid.weight[:, 0] = 1e-4      # ... that mid barely uses: its output depends on the small channels

    def forward(self, x):
        return self.out(torch.relu(self.mid(torch.relu(self.inp(x)))))


def _images(n: int, seed: int = 0) -> list[tuple[torch.Tensor]]:
    return noise_images(n, seed, size=32)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return trained_bn(Net(), _images(8, seed=9))


@pytest.fixture(scope="module")
def fp32_sizes(net, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32")
    return {d: sdk.export(net, d, _images(1)[0], recipe="fp32", output_dir=out).artifact.size_bytes
            for d in HOST_RUNNABLE_INT8 + ["apple-ane"]}


@pytest.fixture(scope="module")
def int8_exports(net, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8")
    return {d: sdk.export(net, d, _images(1)[0], recipe="int8", calibration=_images(20), output_dir=out)
            for d in HOST_RUNNABLE_INT8 + ["apple-ane"]}


@pytest.mark.parametrize("device_id", HOST_RUNNABLE_INT8 + ["apple-ane"])
def test_int8_is_small_and_checked(device_id, int8_exports, fp32_sizes):
    res = int8_exports[device_id]
    ratio = res.artifact.size_bytes / fp32_sizes[device_id]
    assert ratio <= 0.3, (device_id, ratio)
    q = res.report["quantization"]
    assert REPORT_KEYS <= set(q), (device_id, REPORT_KEYS - set(q))
    assert q["heldout"]["source"].startswith("last 4 of 20")
    if q["fallback"]["kept_float"]:  # the fallback ranked the layers to choose which stay float
        assert len(q["sensitivity"]["worst"]) > 0
    else:  # met at once: the ranking is not paid for unless asked (sensitivity=True)
        assert q["sensitivity"]["unavailable"].startswith("not measured: the first conversion met"), q
    if device_id != "apple-ane":
        assert res.report["parity"]["passed"] is True
        assert q["heldout"]["outputs"][0]["cosine"] >= 0.99, q["heldout"]


def test_static_int8_needs_calibration(net, tmp_path):
    with pytest.raises(InvalidInputsError, match="int8-dynamic"):
        sdk.export(net, "intel-cpu", _images(1)[0], recipe="int8", output_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_unsupported_int4_is_a_clear_error(net, tmp_path):
    with pytest.raises(UnsupportedRecipeError) as info:
        sdk.export(net, "android-litert", _images(1)[0], recipe=sdk.Int4Weight(group_size=32), output_dir=tmp_path)
    assert "int4" in str(info.value) and "int8" in str(info.value)


def _mlp_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 32, generator=g),) for _ in range(n)]


@pytest.mark.parametrize("device_id", ["intel-cpu", "android-arm64", "jetson-orin-nano", "android-litert"])
def test_fallback_keeps_the_outlier_layer_in_float(device_id, tmp_path):
    model = OutlierMLP().eval()
    tol = sdk.Tolerance(min_cosine=0.999)
    res = sdk.export(model, device_id, _mlp_data(1, 5)[0], recipe="int8", calibration=_mlp_data(20, 1),
                     tolerance=tol, output_dir=tmp_path)
    q = res.report["quantization"]
    assert q["sensitivity"]["worst"][0]["layer"] == "mid", q["sensitivity"]
    assert "mid" in q["fallback"]["kept_float"], q["fallback"]
    assert q["fallback"]["steps"][0]["met"] is False and q["fallback"]["steps"][-1]["met"] is True
    assert any(f["name"] == "mid" for f in q["float_layers"])
    assert q["heldout"]["outputs"][0]["cosine"] >= 0.999


def test_unreachable_tolerance_says_how_close(tmp_path):
    model = OutlierMLP().eval()
    with pytest.raises(ParityError, match="best reached"):
        sdk.export(model, "intel-cpu", _mlp_data(1, 5)[0], recipe="int8", calibration=_mlp_data(20, 1),
                   tolerance=sdk.Tolerance(min_cosine=0.9, max_abs_err=1e-9), output_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_scheme_that_quantizes_no_layer_is_refused(tmp_path):
    """Block-wise INT4 for TensorRT takes MatMul weights only; a conv-only network would come out all fp32."""
    import sdk
    from sdk.core.errors import ConversionError

    torch.manual_seed(0)
    convs = nn.Sequential(nn.Conv2d(3, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten()).eval()
    x = (torch.randn(1, 3, 16, 16),)
    with pytest.raises(ConversionError, match="quantized no layer") as err:
        sdk.export(convs, "jetson-orin-nano", x, recipe=["int4:64"], output_dir=tmp_path, validate=False)
    assert "MatMul" in str(err.value)
    assert not (tmp_path / "jetson-orin-nano").exists()


def test_few_calibration_samples_warn_once_per_export(tmp_path, caplog):
    """Below NNCF's default subset (300) a static INT8 export warns, once, with the count it calibrated on."""
    model, x = OutlierMLP().eval(), _mlp_data(1, 5)[0]
    with caplog.at_level("WARNING", logger="sdk"):
        sdk.export(model, "jetson-orin-nano", x, recipe="int8", calibration=_mlp_data(20, 1),
                   tolerance=sdk.Tolerance(min_cosine=0.0), output_dir=tmp_path / "few")
    warned = [r.getMessage() for r in caplog.records if "calibrated on" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "calibrated on 16 samples (20 given, the last 4 held out" in warned[0]
    assert "fewer than 300" in warned[0] and "accuracy may suffer" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="sdk"):
        sdk.export(model, "jetson-orin-nano", x, recipe="int8", calibration=_mlp_data(300, 2),
                   eval_data=_mlp_data(4, 3), tolerance=sdk.Tolerance(min_cosine=0.0), output_dir=tmp_path / "enough")
    assert not [r for r in caplog.records if "calibrated on" in r.getMessage()]


def _small(n: int, scale: float, g: torch.Generator) -> list[tuple[torch.Tensor]]:
    return [(scale * torch.randn(1, 16, generator=g),) for _ in range(n)]


@pytest.mark.parametrize("device_id", HOST_RUNNABLE_INT8)
def test_a_heldout_miss_refuses_the_export_without_tolerance(device_id, tmp_path):
    """The held-out inputs decide, with the recipe's default tolerance (min cosine 0.99 for int8): eval_data far
    outside the calibration range misses it (clipped activations), while the example, a calibration-like input,
    passes, as the same export with in-range eval_data shows. Before, that bundle was written on the example."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    g = torch.Generator().manual_seed(1)
    calibration, in_range, shifted = _small(16, 0.1, g), _small(8, 0.1, g), _small(8, 3.0, g)
    res = sdk.export(model, device_id, calibration[0], recipe="int8", calibration=calibration, eval_data=in_range,
                     output_dir=tmp_path / "in-range")
    held, reference = res.report["parity"]["decided_by"]
    assert held == {"inputs": "held-out", "source": "eval_data (8 samples)", "samples": 8, "passed": True,
                    "ran_on": res.report["quantization"]["heldout"]["ran_on"]}
    assert reference["source"].startswith("example_inputs") and reference["passed"] is True
    assert res.report["quantization"]["fallback"]["tolerance_from"] == "the default for int8"
    with pytest.raises(ParityError, match=r"could not meet min_cosine 0.99 \(the default for int8.*eval_data \(8"):
        sdk.export(model, device_id, calibration[0], recipe="int8", calibration=calibration, eval_data=shifted,
                   output_dir=tmp_path / "shifted")
    assert not (tmp_path / "shifted" / device_id).exists()


@pytest.mark.parametrize("device_id", HOST_RUNNABLE_INT8)
def test_the_fallback_meets_the_default_tolerance_without_tolerance(device_id, tmp_path):
    """All-INT8 DeadInputOutlier has held-out cosine ~0.73; without tolerance= the fallback keeps `mid` float
    until the int8 default (0.99) holds on the held-out inputs."""
    torch.manual_seed(5)
    model = DeadInputOutlier().eval()
    calibration = [(torch.randn(1, 16),) for _ in range(20)]
    res = sdk.export(model, device_id, calibration[0], recipe="int8", calibration=calibration, output_dir=tmp_path)
    fallback = res.report["quantization"]["fallback"]
    assert fallback["steps"][0]["min_cosine"] < 0.9 and "mid" in fallback["kept_float"], fallback
    assert fallback["steps"][-1]["met"] is True and fallback["tolerance"]["min_cosine"] == 0.99
    assert res.report["quantization"]["heldout"]["passed"] is True


class ConvTokens(nn.Module):
    """Two convs, then a linear over the 144 positions as tokens (a 3-D MatMul, which TensorRT's INT4 takes)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mix, self.proj = nn.Conv2d(3, 64, 3), nn.Conv2d(64, 64, 1), nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.mix(torch.relu(self.stem(x))).flatten(2).transpose(1, 2))


def test_most_weight_layers_left_float_unasked_is_refused_unless_kept_on_request(tmp_path):
    """TensorRT's INT4 takes MatMul weights only: on two convs and a linear it would quantize 1 of 3 weight
    layers. That is refused, naming the convs and why; keep_float asks for the partly quantized artifact."""
    from sdk.core.errors import ConversionError

    torch.manual_seed(0)
    model = ConvTokens().eval()
    x = (torch.randn(1, 3, 16, 16),)
    with pytest.raises(ConversionError, match=r"left 2 of the model's 3 weight layers .* in float without being "
                                              r"asked \(stem, mix: .*MatMul.*keep_float") as err:
        sdk.export(model, "jetson-orin-nano", x, recipe="int4:64", output_dir=tmp_path, validate=False)
    assert not (tmp_path / "jetson-orin-nano").exists(), err.value
    res = sdk.export(model, "jetson-orin-nano", x, recipe="int4:64", keep_float=["stem", "mix"],
                     output_dir=tmp_path, validate=False)
    q = res.report["quantization"]
    assert q["quantized_layers"] == ["proj"]
    assert {f["name"]: f["reason"] for f in q["float_layers"]} == {"stem": "kept in float on request",
                                                                   "mix": "kept in float on request"}
    with pytest.raises(InvalidInputsError, match="keep_float.*fp32 quantizes no layer"):
        sdk.export(model, "jetson-orin-nano", x, recipe="fp32", keep_float=["stem"], output_dir=tmp_path)
