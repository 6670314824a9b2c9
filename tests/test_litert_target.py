"""The LiteRT target end to end on the host: litert-torch converts, ai_edge_litert (with XNNPACK) runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from target_helpers import make_job, outputs_of, small_cnn, specs

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

import backends  # noqa: E402
import converters  # noqa: E402
import sdk.devices  # noqa: E402
from backends import InputMismatchError  # noqa: E402
from sdk.core.parity import compare  # noqa: E402

PROFILE = sdk.devices.get("android-litert")


class ManyOutputs(torch.nn.Module):
    """Twelve outputs: 'out_10' sorts before 'out_2', so only a name-based mapping keeps their order."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(x[:, : i + 1] * (i + 1) for i in range(12))


class PartlyDelegated(torch.nn.Module):
    """CUMSUM and ARG_MAX have no XNNPACK kernels: the graph splits into two delegate partitions around them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.cumsum(self.a(x), dim=-1)
        return self.b(torch.relu(y)), torch.argmax(y, dim=-1)


def _manifest(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> dict:
    return {"inputs": specs("in", inputs), "outputs": specs("out", outputs), "runtime_options": {}}


def _export(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], workdir: Path, recipe: str | None = None):
    """Convert with the converter, load with the backend: (result, session, numpy inputs, fp32 outputs, model path)."""
    ref = outputs_of(model, inputs)
    np_inputs = [t.numpy() for t in inputs]
    result = converters.get(PROFILE.format).convert(make_job(model, inputs, PROFILE, workdir, recipe))
    path = workdir / result.model_file
    session = backends.get(PROFILE.runtime).load(path, _manifest(np_inputs, ref))
    return result, session, np_inputs, ref, path


@pytest.fixture(scope="module")
def cnn():
    return small_cnn(spread=0.5, batch=2)


@pytest.fixture(scope="module")
def cnn_fp32(cnn, tmp_path_factory):
    return _export(*cnn, tmp_path_factory.mktemp("fp32"))


@pytest.fixture(scope="module")
def cnn_fp16(cnn, tmp_path_factory):
    return _export(*cnn, tmp_path_factory.mktemp("fp16"), "fp16")


def test_xnnpack_runs_every_op_of_the_fp32_cnn_with_batchnorm_folded(cnn_fp32):
    result, session, _, _, _ = cnn_fp32
    assert result.model_file == "model.tflite"
    cov = result.coverage
    op_types = cov.details["op_types"]
    assert op_types["CONV_2D"] == 1 and op_types["FULLY_CONNECTED"] == 1
    assert not any("BATCH" in op for op in op_types)  # folded into the convolution
    assert cov.delegated == cov.total and cov.fraction == 1.0 and cov.not_delegated == {} and cov.unit == "ops"
    assert session.ran_on.startswith("ai_edge_litert ")
    assert f"XNNPACK delegate on {cov.total}/{cov.total} ops" in session.ran_on


def test_fp16_halves_the_weights_and_stays_close(cnn_fp32, cnn_fp16):
    result, session, inputs, ref, path = cnn_fp16
    parity = compare(session.run(inputs), ref, {"min_cosine": 0.999})
    assert parity["passed"], parity["failures"]
    assert parity["outputs"][0]["max_abs_err"] > 0  # the weights really were rounded to float16
    assert result.quantization.weight_dtypes == {"fp16": 2} and result.quantization.activations == "float32"
    assert result.coverage.details["op_types"]["DEQUANTIZE"] == 2 and result.coverage.not_delegated == {}
    assert path.stat().st_size < 0.7 * cnn_fp32[4].stat().st_size


def test_signature_outputs_keep_their_order_past_ten(tmp_path):
    inputs = (torch.arange(1, 13, dtype=torch.float32).reshape(1, 12),)
    _, session, np_inputs, ref, _ = _export(ManyOutputs().eval(), inputs, tmp_path)
    got = session.run(np_inputs)
    assert len(got) == 12
    for g, r in zip(got, ref):
        np.testing.assert_array_equal(g, r)


def test_coverage_counts_ops_left_outside_xnnpack(tmp_path):
    torch.manual_seed(4)
    result, session, np_inputs, ref, _ = _export(PartlyDelegated().eval(), (torch.randn(2, 8),), tmp_path)
    cov = result.coverage
    assert (cov.total, cov.delegated, cov.fraction) == (5, 3, 0.6)
    assert cov.not_delegated == {"CUMSUM": 1, "ARG_MAX": 1}
    assert "XNNPACK delegate on 3/5 ops" in session.ran_on
    logits, index = session.run(np_inputs)
    assert compare([logits], ref[:1], {"min_cosine": 0.9999})["passed"]
    assert index.dtype == np.int64  # LiteRT computes it in int32 (no x64); the manifest's dtype comes back
    np.testing.assert_array_equal(index, ref[1])


def test_int64_token_ids_feed_the_int32_model(tmp_path):
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Flatten(), torch.nn.Linear(24, 4)).eval()
    _, session, np_inputs, ref, _ = _export(model, (torch.tensor([[1, 7, 49]]),), tmp_path)
    parity = compare(session.run(np_inputs), ref, {"min_cosine": 0.9999})
    assert parity["passed"], parity["failures"]
    with pytest.raises(InputMismatchError, match="range"):
        session.run([np.array([[1, 2, 2**40]], dtype=np.int64)])


def test_int8_model_io_is_converted_with_the_tensors_own_params(tmp_path):
    """litert-torch's static PT2E flow gives a model with int8 I/O; the session still takes and returns floats."""
    from ai_edge_litert.interpreter import Interpreter
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(8, 16)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
    prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    prepared(x)
    quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    converter = converters.get("litert")
    job = make_job(model, (x,), PROFILE, tmp_path)
    path = converter._convert(job, quantized, QuantConfig(pt2e_quantizer=quantizer))

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    assert runner.get_input_details()["in_0"]["dtype"] == np.int8  # the path under test
    assert runner.get_output_details()["out_0"]["dtype"] == np.int8
    with torch.no_grad():
        ref = [model(x).numpy()]
    session = backends.get("litert").load(path, _manifest([x.numpy()], ref))
    got = session.run([x.numpy()])
    assert got[0].dtype == np.float32
    parity = compare(got, ref, {"min_cosine": 0.99})
    assert parity["passed"], parity["failures"]
