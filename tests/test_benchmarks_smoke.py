"""The `make bench` harness end to end on a tiny model (the real run takes minutes; this checks its code):
rows measured and labelled, unsupported recipes reported rather than raised, docs and plots written."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks import run_all
from benchmarks.models import Workload
from benchmarks.render import headline


def _tiny() -> Workload:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 10)).eval()
    images = [(torch.randn(1, 3, 32, 32),) for _ in range(12)]
    return Workload(name="tiny", title="Tiny CNN", source="a random test network", model=model,
                    example_inputs=images[0], calibration=images[:8], train_batches=[], eval_inputs=images[8:],
                    metric="top1")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(run_all.BUILDERS, "tiny", _tiny)
        yield run_all.main(["--models", "tiny", "--targets", "intel-cpu", "--recipes", "fp32", "--harness-rounds", "1", "--workers", "1",
                            "--cache", str(tmp / "cache"), "--results", str(tmp / "results.json"),
                            "--docs", str(tmp / "docs")]), tmp


def test_rows_are_measured_against_the_same_runs_torch_baseline(results):
    res, _ = results
    rows = {(r["target"], r["row"]): r for r in res["rows"]}
    assert set(rows) == {(None, "torch eager fp32"), (None, "torch eager fp32 (1 thread)"),
                         ("intel-cpu", "OpenVINO default"), ("intel-cpu", "fp32")}
    sdk_fp32 = rows[("intel-cpu", "fp32")]
    assert all(r["status"] == "ok" for r in rows.values()), [r["status"] for r in rows.values()]
    torch_p50 = min(rows[(None, label)]["latency_ms"]["p50"] for label in ("torch eager fp32", "torch eager fp32 (1 thread)"))
    assert sdk_fp32["speedup"] == pytest.approx(torch_p50 / sdk_fp32["latency_ms"]["p50"])
    agreement = sdk_fp32["agreement"]  # fp32 OpenVINO keeps every arg-max, and the logits
    assert (agreement["metric"], agreement["value"], agreement["n"]) == ("top1", 1.0, 4)
    assert agreement["min_cosine"] > 0.9999
    assert sdk_fp32["roofline"]["bound_ms"] > 0 and sdk_fp32["ran_on"].startswith("openvino")
    assert "default config" in rows[("intel-cpu", "OpenVINO default")]["ran_on"]


def test_harness_check_compares_the_agent_with_benchmark_app(results):
    res, _ = results
    (check,) = res["harness"]
    assert check["tool"] == "benchmark_app" and len(check["agent_ms"]) == len(check["tool_ms"]) == 1
    assert check["ratio_median"] > 0


def test_docs_and_plots_are_written_from_the_results(results):
    res, tmp = results
    page = (tmp / "docs" / "benchmarks.md").read_text()
    assert "## Headline: the best recipe per target" in page and "## Tiny CNN" in page
    assert f"{res['rows'][0]['latency_ms']['p50']:.2f}" in page  # the numbers come from the run
    assert (tmp / "docs" / "img" / "pareto-tiny.png").stat().st_size > 1000
    assert (tmp / "docs" / "img" / "size-tiny.png").stat().st_size > 1000


def test_a_second_run_reuses_the_cached_artifacts(results, tmp_path):
    _, tmp = results
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(run_all.BUILDERS, "tiny", _tiny)
        again = run_all.main(["--models", "tiny", "--targets", "intel-cpu", "--recipes", "fp32", "--harness-rounds", "0", "--workers", "1",
                              "--cache", str(tmp / "cache"), "--results", str(tmp_path / "r.json"),
                              "--docs", str(tmp_path / "docs")])
    assert [r.get("cached") for r in again["rows"] if r["target"]] == [True, True]


def test_recipes_a_target_lacks_are_rows_that_say_so():
    import sdk

    assert run_all._unsupported(sdk.devices.get("android-litert"), "int4").startswith("android-litert does not list int4")
    assert run_all._unsupported(sdk.devices.get("intel-cpu"), "int8") is None


def test_headline_is_the_fastest_recipe_that_clears_the_bar():
    def row(name, p50, agree):
        return {"kind": "sdk", "row": name, "status": "ok", "latency_ms": {"p50": p50},
                "agreement": {"metric": "top1", "value": agree}}
    rows = [row("fp32", 10.0, 1.0), row("int8", 4.0, 0.99), row("int4", 3.0, 0.5)]
    assert headline(rows, "top1") == (rows[1], True)
    assert headline([rows[0] | {"agreement": {"metric": "top1", "value": 0.2}}, rows[2]], "top1")[1] is False


def test_labeled_accuracy_rows_carry_intervals_and_control(tmp_path):
    """benchmarks/labeled_accuracy.py's row on a tiny labeled model: a real INT8 export measured with the metric,
    rendered with both intervals and the paired drop; an error row says its error."""
    from benchmarks import labeled_accuracy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    images = [torch.randn(1, 3, 16, 16) for _ in range(40)]
    with torch.no_grad():
        labeled = [(x, int(model(x).argmax())) for x in images[:24]]  # labels the fp32 model gets right
    row = labeled_accuracy.measure(model, "intel-cpu", labeled, "top1", [(x,) for x in images[24:]], 0.5)
    a = row["accuracy"]
    assert a["n"] == 24 and a["fp32"]["value"] == 1.0 and a["passed"] is True
    text = labeled_accuracy.table([{"model": "tiny", "device": "intel-cpu", "metric": "top1", **row},
                                   {"model": "tiny", "device": "jetson", "metric": "top1",
                                    "accuracy": {"error": "ConversionError: no"}}])
    lines = text.splitlines()
    assert lines[2].startswith("| tiny | intel-cpu | top1 (%) | 24 | 100.0 [") and "| yes |" in lines[2]
    assert "error: ConversionError: no" in lines[3]
