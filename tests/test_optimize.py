"""sdk.optimize on a tiny trained CNN: real exports (ONNX for jetson: onnxruntime's CPU provider stands in for
TensorRT here, and the agent says so), the metric through that runtime, every candidate benchmarked by the real
local agent (child processes), the study in SQLite and resumed. jetson, because its exports are the fastest here."""
from __future__ import annotations

import json
import math

import pytest

import sdk
from samples import digits_cnn
from sdk.core.errors import UserInputError
from sdk.core.recipes import parse
from sdk.optimizer import Unavailable

CONSTRAINTS = {"size_mb": 1.0}


@pytest.fixture(scope="module")
def digits():
    model, example = digits_cnn.trained()
    return model, example, digits_cnn.calibration(32), digits_cnn.labeled(96)


@pytest.fixture(scope="module")
def searches(digits, tmp_path_factory):
    """The same study run twice: 1 trial, then resumed up to 2 (each run also measures the fp32 baseline). The first
    trial is half the channels pruned with almost no training, which the eval subset must reject before device time."""
    model, example, calibration, labeled = digits
    out = tmp_path_factory.mktemp("optimize")
    kwargs = {"calibration": calibration, "eval_data": labeled, "metric": "top1", "max_drop": 0.02,
              "objective": "latency", "constraints": CONSTRAINTS, "agent": "local", "study": out / "study.db",
              "output_dir": out, "subset": 16, "repeats": 2, "iterations": 10,
              "first": [("fp32", "prune:0.5"), ("int8", "none")]}
    first = sdk.optimize(model, "jetson", example, budget=sdk.Budget(trials=1, distill_steps=2), **kwargs)
    resumed = sdk.optimize(model, "jetson", example, budget=sdk.Budget(trials=2, distill_steps=2), **kwargs)
    return first, resumed


def test_front_is_non_dominated_and_best_meets_the_constraints(searches):
    _, res = searches
    measured = [res.baseline, *(c for c in res.candidates if c.status == "measured")]
    assert res.pareto and all(c in measured for c in res.pareto)
    for a in res.pareto:
        for b in measured:
            assert not (b.drop.value <= a.drop.value and b.value("latency") <= a.value("latency")
                        and (b.drop.value < a.drop.value or b.value("latency") < a.value("latency")))
    best = res.best
    assert best is not None and best.feasible
    assert best.drop.value <= res.max_drop and best.size_mb <= CONSTRAINTS["size_mb"]
    assert best.drop.low <= best.drop.value <= best.drop.high
    assert 0 <= best.latency_p50_ms.low <= best.latency_p50_ms.value <= best.latency_p50_ms.high
    assert math.isfinite(best.latency_p90_ms.value) and best.metric["n"] == 96
    assert isinstance(best.energy_mj, (float, Unavailable))
    assert best.value("latency") == min(c.value("latency") for c in measured if c.feasible)
    assert res.baseline.recipe == ("fp32",) and res.speedup(best) > 0


def test_resumed_study_keeps_earlier_trials(searches):
    first, resumed = searches
    assert (first.cost.trials_in_study, resumed.cost.trials_in_study, resumed.cost.trials_this_run) == (1, 2, 1)
    pruned = first.candidates[0]
    assert pruned.recipe == ("prune:0.5", "distill:2:30m", "fp32") and pruned.status == "rejected"
    assert "pruned before device time" in pruned.reason and first.cost.rejected_before_device == 1
    assert [c.recipe for c in resumed.candidates] == [pruned.recipe, ("int8",)]
    earlier = {c.trial: c.recipe for c in first.candidates}
    assert {c.trial: c.recipe for c in resumed.candidates if c.trial in earlier} == earlier
    assert first.baseline.run in {c.run for c in resumed.candidates} and resumed.baseline.run != first.baseline.run


def test_report_and_export_of_the_best(searches):
    _, res = searches
    saved = json.loads((res.output_dir / "optimize.json").read_text())
    assert saved["best"]["recipe"] == list(res.best.recipe) and len(saved["candidates"]) == len(res.candidates)
    page = (res.output_dir / "report.html").read_text()
    assert page.count("<tr>") == 1 + 1 + len(res.candidates) and "pareto.png" in page  # header, baseline, trials
    assert (res.output_dir / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    bundle = res.export()
    assert bundle.artifact.manifest["recipe"] == list(res.best.recipe) and bundle.report["parity"]["passed"]


@pytest.mark.parametrize("bad, match", [
    ({"objective": "speed"}, "objective must be one of"),
    ({"max_drop": float("nan")}, "max_drop is a fraction"),
    ({"constraints": {"size": 5}}, "unknown constraint 'size'"),
])
def test_bad_arguments_are_clear_errors(digits, bad, match):
    model, example, _, labeled = digits
    with pytest.raises(UserInputError, match=match):
        sdk.optimize(model, "intel-cpu", example, eval_data=labeled, **bad)


def test_space_proposes_passes_only_when_training_is_allowed():
    from sdk.optimizer.space import space_for

    profile = sdk.devices.get("apple-ane")  # lists palettize; a converter that takes only fp32/fp16/int8:
    plain = space_for(profile, frozenset({"fp32", "fp16", "int8"}), sdk.Budget(), has_calibration=False)
    assert plain.precisions == ("fp32", "fp16")  # int8 needs calibration; the rest are not supported
    notes = " ".join(plain.notes)
    assert "int8: needs calibration" in notes and "palettize: listed by apple-ane but not supported" in notes
    assert plain.passes == ("none",) and "distill_steps is 0" in notes
    supported = frozenset({"fp32", "fp16", "int8", "int8-dynamic", "palettize"})
    trained = space_for(profile, supported, sdk.Budget(minutes=5, distill_steps=50), has_calibration=True)
    assert trained.precisions == ("fp32", "fp16", "int8", "int8-dynamic", "palettize:4", "palettize:6", "palettize:8")
    assert "lowrank:0.5" in trained.passes
    assert trained.recipe("int8", "lowrank:0.5") == ["lowrank:0.5", "distill:50:5m", "int8"]  # the budget's minutes
    assert sdk.Distill(steps=50, minutes=5) == parse(trained.recipe("int8", "lowrank:0.5"))[1]


def test_mixed_precision_keeps_the_planted_sensitive_layer_float(tmp_path):
    """All-INT8 misses (one huge weight on a dead input sets every scale of `mid`): the export's fallback keeps
    `mid` in float (for the int8 default tolerance on held-out data, or, exported again with accuracy control,
    for max_drop); the candidate names it and the best's export repeats it."""
    import torch
    from quant_models import DeadInputOutlier

    torch.manual_seed(5)
    model = DeadInputOutlier().eval()
    calibration = [(torch.randn(1, 16),) for _ in range(20)]
    eval_data = [(torch.randn(1, 16),) for _ in range(40)]
    res = sdk.optimize(model, "jetson", calibration[0], calibration=calibration, eval_data=eval_data,
                       metric="cosine", max_drop=0.01, objective="size", budget=sdk.Budget(trials=1),
                       first=[("int8", "none")],
                       output_dir=tmp_path, repeats=2, iterations=5)
    (cand,) = res.candidates
    assert "mid" in cand.kept_float and cand.drop.value <= 0.01, cand
    assert "kept float: " in cand.label and any("mixed precision" in n for n in res.space.notes)
    assert res.best is cand and cand.size_mb < res.baseline.size_mb  # int8 with `mid` float is the smallest
    floats = {f["name"] for f in res.export().report["quantization"]["float_layers"]}
    assert set(cand.kept_float) <= floats


def test_cli_export_recipe_auto_writes_the_searched_best(tmp_path):
    """`edge-sdk export --recipe auto`: a short search per device, one line per trial, then the best's bundle."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "sdk.cli", "export", "samples/digits_cnn.py:trained", "-d", "jetson",
                          "--recipe", "auto", "--calibration", "samples/digits_cnn.py:calibration",
                          "--eval", "samples/digits_cnn.py:labeled", "--max-drop", "2%", "--out", str(tmp_path)],
                         cwd=root, capture_output=True, text=True, timeout=900, env=dict(os.environ, COLUMNS="200"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trial 0: " in out.stdout and "chosen by the search" in out.stdout
    saved = json.loads((tmp_path / "optimize" / "jetson-orin-nano" / "optimize.json").read_text())
    manifest = json.loads((tmp_path / "jetson-orin-nano" / "manifest.json").read_text())
    assert manifest["recipe"] == saved["best"]["recipe"]
