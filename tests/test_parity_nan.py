"""NaN and Inf never pass parity: in the math, through LocalAgent on a real ONNX bundle, and through
sdk.export(validate=True) on a model whose fp32 output is NaN. An all-zero reference passes only with a warning."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from agent_bundles import make_bundle

import sdk
from sdk.agent import LocalAgent
from sdk.errors import ParityError
from sdk.parity import compare

REF = [np.array([[1.0, -2.0, 3.0, 0.5]], dtype=np.float32)]
TOL = [{"min_cosine": 0.9999}, {"max_abs_err": 1e-3}, {"min_sqnr_db": 30.0}, {"min_top1_agreement": 1.0}, {}]


@pytest.mark.parametrize("tolerance", TOL)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_output_fails_every_check(bad, tolerance):
    got = REF[0].copy()
    got[0, 1] = bad
    r = compare([got], REF, tolerance)
    assert r["passed"] is False
    assert "runtime output holds" in r["failures"][0] and ("1 NaN" in r["failures"][0] or "1 Inf" in r["failures"][0])
    assert r["outputs"][0]["cosine"] is None  # undefined, not a number that could pass


@pytest.mark.parametrize("tolerance", TOL)
def test_nonfinite_reference_fails(tolerance):
    ref = [np.full((1, 4), np.nan, np.float32)]
    r = compare(ref, ref, tolerance)  # NaN == NaN "matches": still a failure
    assert r["passed"] is False and "fp32 reference holds 4 NaN" in r["failures"][-1]


def test_all_zero_reference_is_not_a_silent_pass():
    zeros = [np.zeros((1, 4), np.float32)]
    same = compare(zeros, zeros, {"min_cosine": 0.9999})
    assert same["passed"] and same["outputs"][0]["cosine"] is None
    assert "all zeros" in same["warnings"][0]
    off = compare([np.full((1, 4), 0.5, np.float32)], zeros, {"min_cosine": 0.9999})
    assert not off["passed"] and "all zeros" in off["failures"][0]
    assert compare(REF, REF, {"min_cosine": 0.9999})["warnings"] == []


def test_local_agent_fails_parity_on_a_nan_onnx_bundle(tmp_path):
    bundle = make_bundle(tmp_path, 3, "nan", nan=True)
    r = LocalAgent().benchmark(bundle, warmup=0, iterations=2, idle_s=0, energy=False)
    assert r.ran and r.parity.passed is False
    assert r.parity.failures == ["out_0: the runtime output holds 1 NaN and 0 Inf of 4 values"]
    assert r.soak.parity_after_loop.passed is False


class LogOfShifted(torch.nn.Module):
    def forward(self, x):
        return torch.log(x - 100.0)  # NaN for every input below 100: the fp32 model itself is broken


def test_export_refuses_a_model_whose_output_is_nan(tmp_path):
    with pytest.raises(ParityError, match="NaN"):
        sdk.export(LogOfShifted().eval(), "intel-cpu", (torch.randn(1, 8),), output_dir=tmp_path, validate=True)
    assert not (tmp_path / "intel-cpu").exists()  # nothing half-written
