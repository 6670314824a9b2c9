"""One RunSpec for every caller, the Agent protocol, and measurements that carry their own evidence (n, a CI
of the median, the coefficient of variation, the machine's conditions). Structure and invariants only: no
assertion on a timing value."""
from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import numpy as np
import pytest
from agent_bundles import make_bundle

from sdk.agent import Agent, Client, LocalAgent, RunSpec, bench
from sdk.agent.spec import SpecError
from sdk.agent.stats import BOOTSTRAP_MAX_N, latency_stats, median_ci


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("spec"), 21)


@pytest.mark.parametrize("data, words", [
    ({"iterations": 0}, "iterations: must be >= 1"),
    ({"iterations": 2.5}, "iterations: must be an integer"),
    ({"iterations": True}, "iterations: must be an integer"),
    ({"energy": 1}, "energy: must be true or false"),
    ({"timeout_s": 0}, "timeout_s: must be > 0"),
    ({"idle_s": float("nan")}, "idle_s: must be a finite number"),
    ({"target": "cloud"}, "target: must be one of local, phone"),
    ({"tolerance": {"min_cos": 0.9}}, "tolerance.min_cos: unknown key"),
    ({"tolerance": {"min_cosine": 2}}, "tolerance.min_cosine: must be within"),
    ({"tolerance": "loose"}, "tolerance: must be an object"),
    ({"warmup": None}, "warmup: must not be null"),
    ({"iteratons": 5}, "iteratons: unknown key"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_specs_say_what_is_wrong(data, words):
    with pytest.raises(SpecError, match="invalid run spec") as err:
        RunSpec.from_dict(data)
    assert words in str(err.value)


def test_one_set_of_defaults_everywhere():
    spec = RunSpec()
    assert RunSpec.from_dict({}) == spec and RunSpec.from_dict(spec.to_dict()) == spec
    assert RunSpec.of(spec, iterations=7).iterations == 7 and RunSpec.of(None) == spec
    for method in (Client.benchmark, Client.submit, LocalAgent.benchmark, bench.run, bench.run_isolated):
        params = inspect.signature(method).parameters
        assert "spec" in params and not {f.name for f in dataclasses.fields(RunSpec)} & set(params), method


def test_client_and_local_agent_are_agents():
    assert isinstance(LocalAgent(), Agent)
    assert isinstance(Client("http://127.0.0.1:9", "x" * 16), Agent)


def test_median_ci_brackets_the_median_and_narrows_with_n():
    rng = np.random.default_rng(3)
    small, large = rng.lognormal(0, 0.2, 100), rng.lognormal(0, 0.2, 10_000)
    for samples in (small, large):
        ci = median_ci(samples)
        assert ci["low"] <= float(np.median(samples)) <= ci["high"] and ci["confidence"] == 0.95
    assert median_ci(small)["method"].startswith("bootstrap") and len(large) > BOOTSTRAP_MAX_N
    assert median_ci(large)["method"].startswith("order statistics")
    assert median_ci(large)["half_width_pct"] < median_ci(small)["half_width_pct"]
    assert median_ci([1.0])["half_width_pct"] is None
    stats = latency_stats(small)
    assert stats["n"] == 100 and math.isclose(stats["cv"], np.std(small) / np.mean(small))


def test_every_latency_carries_n_ci_cv_and_conditions(bundle):
    r = bench.run(bundle, warmup=1, iterations=20, probes=[])
    lat = r["latency_ms"]
    assert lat["n"] == r["iterations"] == 20 and lat["median_ci"]["low"] <= lat["p50"] <= lat["median_ci"]["high"]
    assert lat["cv"] >= 0 and r["spec"] == RunSpec(warmup=1, iterations=20).to_dict()
    for when in ("before", "after"):
        snap = r["conditions"][when]
        assert set(snap) == {"cpu_governor", "cpu_frequency_mhz", "thermal_c", "load_average"}
        for reading in snap.values():  # a value, or unavailable with the reason
            assert reading and (set(reading) != {"unavailable"} or reading["unavailable"])
    assert isinstance(r["warnings"], list)


def test_runs_until_the_ci_is_tight_or_the_time_cap(bundle):
    spec = RunSpec(warmup=0, iterations=10, target_ci_pct=0.5, max_duration_s=1.0, energy=False)
    r = bench.run(bundle, spec)
    half, n = r["latency_ms"]["median_ci"]["half_width_pct"], r["latency_ms"]["n"]
    assert n >= 10
    wide = [w for w in r["warnings"] if "wider than" in w]
    assert (half is not None and half <= 0.5 and not wide) or wide  # tight, or a warning that says it is not
    r = bench.run(bundle, warmup=0, iterations=5, min_duration_s=0.2, energy=False)
    assert r["latency_ms"]["n"] >= 5
