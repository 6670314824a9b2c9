"""The typed results and their one JSON form (sdk.core.results)."""
from __future__ import annotations

import json
import typing

import pytest

from sdk.core.results import ActivationMode, Coverage, FloatLayer, QuantAccount, Unavailable, to_dict


def _account(activations: ActivationMode) -> QuantAccount:
    return QuantAccount(scheme="weights int8 per-channel", activations=activations, toolchain="tool 1.0",
                        quantized_layers=["a"], float_layers=[FloatLayer("b", "kept in float on request")],
                        weight_dtypes={"int8": 1, "fp32": 1}, details={"datatypes": {"qcint8": 1}})


def test_account_round_trips_through_json():
    account = _account("int8-static")
    data = json.loads(json.dumps(to_dict(account)))
    assert data["float_layers"] == [{"name": "b", "reason": "kept in float on request"}]  # the report's shape
    restored = QuantAccount(**{**data, "float_layers": [FloatLayer(**f) for f in data["float_layers"]]})
    assert restored == account


def test_coverage_round_trips_and_derives_its_fraction():
    coverage = Coverage(delegate="XNNPACK", unit="ops", total=5, delegated=3, not_delegated={"CUMSUM": 2},
                        reasons={"CUMSUM": "no kernel"}, details={"op_types": {"CUMSUM": 2, "ADD": 3}})
    data = json.loads(json.dumps(to_dict(coverage)))
    assert data["fraction"] == 0.6
    assert Coverage(**{k: v for k, v in data.items() if k != "fraction"}) == coverage
    assert Coverage(delegate="none", unit="nodes", total=0, delegated=0).fraction == 1.0  # nothing to delegate


def test_unavailable_is_written_with_its_reason_inside_containers():
    assert to_dict(Unavailable("no NPU on this host")) == {"unavailable": "no NPU on this host"}
    assert to_dict({"coverage": Unavailable("x"), "runs": (1, 2)}) == {"coverage": {"unavailable": "x"}, "runs": [1, 2]}


@pytest.mark.parametrize("activations", typing.get_args(ActivationMode))
def test_weight_only_follows_the_activation_literal(activations):
    assert _account(activations).weight_only == (activations in ("float32", "float16", "bfloat16"))
