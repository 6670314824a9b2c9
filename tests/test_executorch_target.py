"""The ExecuTorch target end to end on the host: torch.export + XNNPACK lowering, run by the ExecuTorch runtime."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import target_helpers
import torch
from target_helpers import make_job, outputs_of, specs

import backends
import converters
import sdk.devices
from converters import ConversionResult
from sdk.core.errors import BundleError
from sdk.core.parity import compare

pytest.importorskip("executorch")

PROFILE = sdk.devices.get("android-arm64")


class MeanPoolCNN(torch.nn.Module):
    """Pools with mean(dim=(2, 3)) without keepdim, which XNNPACK refuses: that op runs on portable kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _manifest(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> dict:
    """The parts of a bundle manifest a backend reads."""
    return {"inputs": specs("in", inputs), "outputs": specs("out", outputs_of(model, inputs)),
            "runtime_options": dict(PROFILE.converter)}


class Run(NamedTuple):
    result: ConversionResult
    path: Path
    session: Any
    got: list[np.ndarray]
    ref: list[np.ndarray]


def _convert_and_run(model, inputs, workdir: Path, recipe: str | None = None) -> Run:
    """Convert, load with the ExecuTorch backend, run, and keep torch's outputs beside the runtime's."""
    result = converters.get("executorch").convert(make_job(model, inputs, PROFILE, workdir, recipe))
    path = workdir / result.model_file
    session = backends.get("executorch").load(path, _manifest(model, inputs))
    return Run(result, path, session, session.run([t.numpy() for t in inputs]), outputs_of(model, inputs))


@pytest.fixture(scope="module")
def small_cnn() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    return target_helpers.small_cnn(spread=1.0, batch=1)


@pytest.fixture(scope="module")
def cnn_fp32(small_cnn, tmp_path_factory):
    return _convert_and_run(*small_cnn, tmp_path_factory.mktemp("et_cnn"))


def test_xnnpack_takes_the_whole_cnn_in_one_subgraph(cnn_fp32):
    cov = cnn_fp32.result.coverage
    assert cov.delegate == "XnnpackBackend" and cov.unit == "nodes"
    assert cov.fraction > 0.9
    assert cov.delegated == 5 and cov.not_delegated == {}  # conv, BN, ReLU, view, linear
    assert cov.details["delegated_subgraphs"] == 1


def test_op_xnnpack_refuses_runs_on_portable_kernels_with_its_reason(tmp_path):
    run = _convert_and_run(MeanPoolCNN().eval(), (torch.randn(1, 3, 8, 8),), tmp_path)
    assert compare(run.got, run.ref, {"min_cosine": 0.9999})["passed"]
    cov = run.result.coverage
    assert cov.not_delegated == {"aten_mean_dim": 1}
    assert "keepdim" in cov.reasons["aten_mean_dim"]
    assert cov.details["delegated_subgraphs"] == 2 and cov.fraction == 0.75  # conv, ReLU, linear | mean


def test_session_says_it_ran_on_executorch_with_xnnpack(cnn_fp32):
    ran_on = cnn_fp32.session.ran_on
    assert ran_on.startswith("executorch ") and "XNNPACK" in ran_on


def test_manifest_that_does_not_match_the_pte_program_is_refused(cnn_fp32, small_cnn):
    manifest = _manifest(*small_cnn)
    manifest["inputs"][0]["shape"] = [1, 3, 16, 16]
    with pytest.raises(BundleError, match=r"model.pte takes inputs float32\[1, 3, 8, 8\]"):
        backends.get("executorch").load(cnn_fp32.path, manifest)


def test_fp16_runs_in_half_with_float32_io(small_cnn, cnn_fp32, tmp_path):
    run = _convert_and_run(*small_cnn, tmp_path, recipe="fp16")
    assert run.got[0].dtype == np.float32
    parity = compare(run.got, run.ref, {"min_cosine": 0.999})
    assert parity["passed"], parity["failures"]
    assert parity["outputs"][0]["sqnr_db"] < 90  # fp16 rounding shows (fp32 gives ~130 dB): not silently fp32
    # the fp32 <-> fp16 casts at the program's boundary are the only ops left out of XNNPACK
    assert run.result.coverage.not_delegated == {"dim_order_ops__to_dim_order_copy_default": 2}
    assert run.result.quantization.activations == "float16" and run.result.quantization.weight_only
    # read back from the XNNPACK payloads: the linear's weight is fp16; the conv's, with the BatchNorm that
    # XNNPACK's FuseBatchNormPass folds into it, is stored fp32
    assert run.result.quantization.weight_dtypes == {"fp16": 1, "fp32": 1}
    assert run.path.stat().st_size < 0.7 * cnn_fp32.path.stat().st_size  # the 5k linear weights are stored in fp16
