"""Compression passes on real data: a CNN trained on scikit-learn's digits, a transformer encoder, MobileNetV2.

`benchmarks.passes_table.digits_table()` is the measurement behind docs/passes.md: it trains the digits CNN,
runs every pass with and without distillation, and returns params, MACs and test accuracy per recipe.
These tests rerun it and check the counts and the invariants; the accuracies themselves differ between CPUs,
so the page's table is written by `python -m benchmarks.passes_table` on the machine that measures it.
"""
from __future__ import annotations

import copy
import datetime
import math
import re

import pytest
import torch
from torch import nn

import samples.mobilenet_v2 as mobilenet_v2
import samples.transformer_encoder as transformer
from benchmarks.passes_table import (
    END,
    PAGE,
    START,
    TABLE_RECIPES,
    WEIGHT_DEPENDENT,
    digits_table,
    machine_line,
    quoted_table,
    render_page,
    trained_digits,
)
from converters.passes import apply, register_pass
from converters.passes.depthwise import effective_weight as depthwise_weight
from converters.passes.depthwise import separate
from converters.passes.lowrank import effective_weight as lowrank_weight
from converters.passes.lowrank import factorize
from sdk.compression import compress
from sdk.core.errors import InternalError, InvalidInputsError, RecipeError
from sdk.core.recipes import Config, DepthwiseSeparable, LowRank, Prune


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest, and steadiest on a shared 2-core box, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained():
    return trained_digits()


@pytest.fixture(scope="module")
def table(trained):
    return {row["pass"]: row for row in digits_table(*trained)}


# --- the digits CNN: accuracy, distillation, and what each pass removes ---

def assert_distillation_recovers(accuracies: dict[str, tuple[float, float]]) -> None:
    """{pass: (accuracy, accuracy after distill)}: what every run of the table shows, on any machine."""
    base = accuracies["none"][0]
    assert base > 0.95  # a real classifier
    for label, (before, after) in accuracies.items():
        gap_before, gap_after = base - before, base - after
        # within a point of the original, or at least half of what the pass cost won back
        assert gap_after <= max(0.01, gap_before / 2), (label, gap_before, gap_after)
    before, after = accuracies["depthwise"]
    assert before < base - 0.05 < after


def test_docs_table_is_the_generators_and_holds_the_invariants(table):
    """docs/passes.md's block is what benchmarks/passes_table.py writes: the machine and date it was measured
    on, the same rows, and the same counts as this run (they do not depend on the CPU). Its accuracies were
    measured on that machine, so they are held to the invariants every run satisfies, not to this run's."""
    page = PAGE.read_text()
    line, quoted = quoted_table(page)
    assert re.fullmatch(r"Measured by `python -m benchmarks\.passes_table` on \d{4}-\d\d-\d\d \d\d:\d\d UTC, on .+ "
                        r"\(.+, \d+ usable logical CPUs(, virtualised)?\), torch \S+, one thread\.", line), line
    assert list(quoted) == [label for label, _ in TABLE_RECIPES], "rerun python -m benchmarks.passes_table"
    for name, row in table.items():
        if name not in WEIGHT_DEPENDENT:
            counts = [f"{row['params']:,}", f"{row['nonzero_params']:,}", f"{row['macs']:,}"]
            assert quoted[name][:3] == counts, f"{name}: rerun python -m benchmarks.passes_table"
    assert_distillation_recovers({name: (float(c[3].rstrip("%")) / 100, float(c[4].rstrip("%")) / 100)
                                  for name, c in quoted.items()})
    rows = list(table.values())
    line = machine_line(datetime.datetime(2026, 1, 2, 3, 4))
    rendered = render_page(page, rows, line)  # what the generator would write from this run
    assert quoted_table(rendered) == (line, {r["pass"]: [f"{r['params']:,}", f"{r['nonzero_params']:,}", f"{r['macs']:,}",
                                                         f"{100 * r['accuracy']:.1f}%", f"{100 * r['accuracy_distilled']:.1f}%"]
                                             for r in rows})
    assert rendered.split(START)[0] == page.split(START)[0] and rendered.split(END)[1] == page.split(END)[1]


def test_baseline_is_a_real_classifier(table):
    assert table["none"]["accuracy"] > 0.95
    assert table["none"]["macs"] == 599_680  # 9216 + 294912 + 294912 + 640, counted by FlopCounterMode


def test_distillation_recovers_accuracy(table):
    assert_distillation_recovers({name: (row["accuracy"], row["accuracy_distilled"]) for name, row in table.items()})


def test_distillation_reports_parity_before_and_after(table):
    report = table["depthwise"]["distill_report"]
    before, after = (report[k]["outputs"][0] for k in ("parity_before_distill", "parity_after_distill"))
    assert report["parity_before_distill"]["inputs"].startswith("held-out")
    assert after["cosine"] > before["cosine"] and after["top1_agreement"] > before["top1_agreement"]
    assert report["parity"] == report["parity_after_distill"]


def test_structured_prune_removes_the_fraction_asked(table, trained):
    model, _ = trained
    report = table["prune:0.3"]["report"]["passes"][0]
    rows = {row["name"]: row for row in report["layers"]}
    assert report["kept_whole"] == ["classifier", "features.0"]  # first conv and classifier (the output)
    assert set(rows) == {"features.3", "features.7", "classifier"}
    for name, row in rows.items():
        before, after = math.prod(row["weight_shape_before"]), math.prod(row["weight_shape_after"])
        assert after <= 0.7 * before, name  # >= 30% of every pruned layer's weights removed
        assert row["macs_after"] < row["macs_before"] and 0 < row["rel_error"] < 1
    assert rows["classifier"]["weight_shape_after"][0] == 10  # the classes stay
    prunable = sum(p.numel() for n, m in model.named_modules() if n in rows for p in m.parameters())
    removed = report["params_before"] - report["params_after"]
    assert removed >= 0.3 * prunable


def test_unstructured_prune_zeroes_the_fraction_asked(table):
    row = table["prune:0.5 unstructured"]
    report = row["report"]["passes"][0]
    assert report["sparsity"] == pytest.approx(0.5, abs=1 / report["pruned_weights"])
    assert report["nonzero_params_before"] - report["nonzero_params_after"] >= 0.5 * report["pruned_weights"] - 1
    assert row["params"] == table["none"]["params"] and row["macs"] == table["none"]["macs"]  # dense shapes stay
    assert row["nonzero_params_distilled"] == row["nonzero_params"]  # distillation keeps the zeros


def test_lowrank_keeps_the_rank_asked(table):
    report = table["lowrank:0.5"]["report"]["passes"][0]
    assert {row["name"] for row in report["layers"]} == {"features.3", "features.7"}
    shapes = {"features.3": (32, 16 * 9), "features.7": (64, 32 * 9)}  # out x (in k k)
    for row in report["layers"]:
        out_dim, in_dim = shapes[row["name"]]
        assert row["rank"] == math.floor(0.5 * out_dim * in_dim / (out_dim + in_dim))  # keeps half the parameters
        assert row["params_after"] <= 0.5 * row["params_before"] + out_dim  # (+ the bias)
        assert row["macs_after"] < row["macs_before"] and row["params_after"] < row["params_before"]
    assert {s["name"]: s["reason"] for s in report["skipped"]} == {
        "features.0": "left alone by scope", "classifier": "left alone by scope"}


def test_depthwise_macs_match_the_formula(table):
    report = table["depthwise"]["report"]["passes"][0]
    rows = {row["name"]: row for row in report["layers"]}
    assert set(rows) == {"features.3", "features.7"}
    # C m (k^2 + N) per output pixel, m = 1: features.3 (16 -> 32, 8x8), features.7 (32 -> 64, 4x4)
    assert rows["features.3"]["macs_after"] == 16 * (9 + 32) * 64
    assert rows["features.7"]["macs_after"] == 32 * (9 + 64) * 16


# --- exactness of the substitutions ---

@pytest.mark.parametrize("layer", [nn.Linear(24, 40), nn.Conv2d(6, 10, 3, stride=2, padding=1, dilation=1),
                                   nn.Conv2d(5, 7, (3, 2), padding=(2, 1), dilation=2, bias=False)])
def test_lowrank_is_exact_at_full_rank(layer):
    torch.manual_seed(0)
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    factors = factorize(layer, full)
    assert torch.allclose(lowrank_weight(factors), layer.weight, atol=1e-5)
    x = torch.randn(2, 24) if isinstance(layer, nn.Linear) else torch.randn(2, layer.in_channels, 9, 9)
    assert torch.allclose(factors(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 16, 3, padding=1), nn.Conv2d(3, 5, 3, stride=2, padding=2, dilation=2),
                                  nn.Conv2d(6, 6, (3, 5), padding=(1, 2), bias=False)])
def test_depthwise_is_exact_when_multiplier_reaches_min_n_k2(conv):
    torch.manual_seed(0)
    m = min(conv.out_channels, conv.weight.shape[2] * conv.weight.shape[3])
    pair = separate(conv, m)
    with torch.no_grad():
        error = float(torch.linalg.vector_norm(depthwise_weight(pair) - conv.weight) / torch.linalg.vector_norm(conv.weight))
    assert error < 1e-5
    x = torch.randn(2, conv.in_channels, 11, 11)
    assert torch.allclose(pair(x), conv(x), atol=1e-5)
    assert pair[0].groups == conv.in_channels and pair[1].kernel_size == (1, 1)


def test_lowrank_error_is_the_discarded_spectrum():
    torch.manual_seed(0)
    layer = nn.Linear(32, 48)
    s = torch.linalg.svdvals(layer.weight.detach().double())
    _, report = apply(nn.Sequential(nn.Linear(8, 32), layer, nn.Linear(48, 4)), LowRank(ratio=0.25),
                      example_inputs=(torch.randn(1, 8),))
    row = report["passes"][0]["layers"][0]
    assert row["rank"] == 4  # floor(0.25 * 32 * 48 / (32 + 48)): a quarter of the parameters
    assert row["rel_error"] == pytest.approx(float(torch.sqrt((s[4:] ** 2).sum() / (s ** 2).sum())), abs=1e-5)


def test_lowrank_energy_keeps_the_spectrum_asked():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    s2 = torch.linalg.svdvals(layer.weight.detach().double()) ** 2
    _, report = apply(nn.Sequential(nn.Linear(4, 64), layer, nn.Linear(64, 2)), LowRank(energy=0.5),
                      example_inputs=(torch.randn(1, 4),))
    rank = report["passes"][0]["layers"][0]["rank"]
    assert s2[:rank].sum() / s2.sum() >= 0.5 > s2[:rank - 1].sum() / s2.sum()


# --- scoping ---

def test_scope_none_leaves_a_layer_untouched(trained):
    model, (x, *_) = trained
    small, _ = apply(model, LowRank(ratio=0.5, scope={"features.3": None}), example_inputs=(x[:1],))
    assert isinstance(small.features[3], nn.Conv2d) and torch.equal(small.features[3].weight, model.features[3].weight)
    assert isinstance(small.features[7], nn.Sequential)
    pruned, _ = apply(model, Prune(0.5, scope={"features.3": None}), example_inputs=(x[:1],))
    assert pruned.features[3].out_channels == 32 and pruned.features[7].out_channels == 32


def test_scope_precedence_name_then_type_then_global(trained):
    model, (x, *_) = trained
    config = LowRank(ratio=0.5, scope={"Conv2d": LowRank(ratio=0.25), "features.7": LowRank(ratio=0.75),
                                       "classifier": LowRank(ratio=0.1)})
    _, report = apply(model, config, example_inputs=(x[:1],))
    ranks = {row["name"]: row["rank"] for row in report["passes"][0]["layers"]}
    # rank = floor(ratio * out * in / (out + in)): features.3 by type (0.25, 32 x 144), features.7 by name
    # (0.75, 64 x 288), classifier by name despite the default that protects it (0.1 of 10 x 64: at least 1),
    # features.0 (first conv) still protected: a type key does not override that
    assert ranks == {"features.3": 6, "features.7": 39, "classifier": 1}


def test_scope_key_that_matches_nothing_is_an_error(trained):
    model, (x, *_) = trained
    with pytest.raises(RecipeError, match="'clasifier' matches no layer.*Did you mean 'classifier'"):
        apply(model, LowRank(scope={"clasifier": None}), example_inputs=(x[:1],))
    with pytest.raises(RecipeError, match="scope"):
        LowRank(scope={"classifier": Prune(0.3)})


# --- errors and the registry ---

def test_bad_recipe_strings_list_the_valid_ones(trained):
    model, (x, *_) = trained
    with pytest.raises(RecipeError, match="Did you mean 'lowrank'.*Valid entries:.*depthwise.*distill.*prune"):
        compress(model, "lowrnk:0.5", example_inputs=(x[:1],))
    with pytest.raises(RecipeError, match="is not a number"):
        compress(model, "prune:lots", example_inputs=(x[:1],))
    with pytest.raises(RecipeError, match="sparsity must be in"):
        compress(model, "prune:1.5", example_inputs=(x[:1],))
    with pytest.raises(RecipeError, match="precision config.*sdk.export"):
        compress(model, ["lowrank:0.5", "int8"], example_inputs=(x[:1],))


def test_distill_without_calibration_says_what_to_pass(trained):
    model, (x, *_) = trained
    with pytest.raises(InvalidInputsError, match="calibration="):
        compress(model, "distill", example_inputs=(x[:1],))


def test_registry_refuses_duplicates_and_names_known_passes():
    with pytest.raises(InternalError, match="already registered"):
        register_pass(LowRank)(lambda model, config, ctx: (model, {}))

    class Mystery(Config):
        name, kind = "mystery", "pass"

    with pytest.raises(RecipeError, match="known passes: depthwise, distill, lowrank, prune"):
        apply(nn.Linear(2, 2), [Mystery()], example_inputs=(torch.randn(1, 2),))


def test_compress_returns_a_new_model_with_its_report(trained):
    model, (x, _, x_test, _) = trained
    state = copy.deepcopy(model.state_dict())
    small = compress(model, ["lowrank:0.5", "distill:20"], example_inputs=(x[:1],), calibration=[x[:200]])
    assert not small.training and small is not model
    assert [p["pass"] for p in small.edge_sdk_report["passes"]] == ["lowrank:0.5", "distill:20"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # the teacher is untouched
    assert small(x_test[:3]).shape == (3, 10)


def test_distill_takes_a_labelled_dataloader_and_matches_every_output():
    """(x, y) batches: the label is dropped; a tuple of outputs is matched with MSE, one output at a time."""
    torch.manual_seed(0)

    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.body, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1), nn.Linear(16, 4)

        def forward(self, x):
            features = self.body(torch.relu(self.stem(x)))
            return self.head(features.mean(dim=(2, 3))), features

    x = torch.randn(64, 3, 8, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(64)), batch_size=16)
    _, report = apply(TwoHeads(), ["lowrank:0.25", "distill:60"], example_inputs=(x[:1],), calibration=loader)
    distill = report["passes"][1]
    assert distill["loss"] == "mse" and distill["loss_last"] < distill["loss_first"]
    # 64 samples: 13 held out for parity, 5 of the other 51 for early stopping
    assert (distill["train_samples"], distill["heldout_samples"], distill["batch_size"]) == (46, 13, 16)
    assert distill["validation"]["samples"] == 5 and "top1_agreement" not in distill["validation"]["best"]
    before, after = (report[k]["outputs"] for k in ("parity_before_distill", "parity_after_distill"))
    assert [o["name"] for o in after] == ["out_0", "out_1"]
    assert after[1]["cosine"] > before[1]["cosine"]


# --- other architectures: every pass keeps the interface and lowers the cost ---

ALL_PASSES = {"prune": ["prune:0.3"], "unstructured": [Prune(0.3, structured=False)], "lowrank": ["lowrank:0.5"],
              "depthwise": ["depthwise"], "all": ["depthwise", "lowrank:0.5", "prune:0.3", "distill:10"]}


def _check_passes(model: nn.Module, example: tuple[torch.Tensor, ...], calibration: list,
                  factors_nothing: str | None = None) -> dict[str, dict]:
    """Run ALL_PASSES; with `factors_nothing`, the recipes with lowrank must fail with that reason."""
    reference = model(*example)
    reports = {}
    for label, recipe in ALL_PASSES.items():
        if factors_nothing and any("lowrank" in str(c) for c in recipe):
            with pytest.raises(RecipeError, match=f"lowrank:0.5 factored no layer.*{factors_nothing}"):
                apply(model, recipe, example_inputs=example, calibration=calibration)
            continue
        small, report = apply(model, recipe, example_inputs=example, calibration=calibration)
        assert small(*example).shape == reference.shape
        first, last = report["passes"][0], report["passes"][-1]
        assert last["params_after"] <= first["params_before"] and last["macs_after"] <= first["macs_before"]
        reports[label] = report
    return reports


@pytest.fixture(scope="module")
def small_transformer():
    model = transformer.build(small=True)
    return model, transformer.example_inputs(model), [transformer.example_inputs(model, 8) for _ in range(4)]


def test_transformer_prune_touches_only_the_mlp(small_transformer):
    model, example, calibration = small_transformer
    reports = _check_passes(model, example, calibration)
    prune = reports["prune"]["passes"][0]
    assert prune["attention_groups_left_whole"] == 2  # q/k/v widths meet in the score matmul: left whole
    assert {row["name"] for row in prune["layers"]} == {f"layers.{i}.mlp.{j}" for i in (0, 1) for j in (0, 2)}
    for row in prune["layers"]:
        assert row["params_after"] <= 0.71 * row["params_before"]
    lowrank = reports["lowrank"]["passes"][0]  # a compression ratio: square attention projections are factored too
    square = {f"layers.{i}.attn.{p}" for i in (0, 1) for p in ("q", "k", "v", "out")}
    assert {row["name"] for row in lowrank["layers"]} == square | {f"layers.{i}.mlp.{j}" for i in (0, 1) for j in (0, 2)}
    for row in lowrank["layers"]:
        assert row["params_after"] <= 0.5 * row["params_before"] + 256  # half the weights (+ the bias)


def test_torch_multihead_attention_is_pruned_per_head_and_not_substituted():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(8, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), nn.Linear(32, 3)).eval()
    reports = _check_passes(model, (torch.randn(1, 5, 8),), [torch.randn(6, 5, 8) for _ in range(3)],
                            factors_nothing="its TransformerEncoderLayer parent reads the weight directly")
    pruned = {row["name"] for row in reports["prune"]["passes"][0]["layers"]}
    assert pruned == {f"1.layers.{i}.linear{j}" for i in (0, 1) for j in (1, 2)}


def test_mobilenet_v2_through_residuals_and_depthwise_groups():
    model = mobilenet_v2.build(num_classes=10, width_mult=0.35)
    example = (torch.randn(1, 3, 32, 32),)
    reports = _check_passes(model, example, [torch.randn(4, 3, 32, 32) for _ in range(3)])
    prune = reports["prune"]["passes"][0]
    assert prune["macs_after"] < 0.7 * prune["macs_before"]
    assert any(row["name"].endswith("conv.1.0") for row in prune["layers"])  # depthwise convs follow their expansion
    assert reports["depthwise"]["passes"][0]["layers"] == []  # already separable; only the protected stem is dense
    _, report = apply(model, DepthwiseSeparable(scope={"features.0.0": DepthwiseSeparable()}), example_inputs=example)
    assert [row["name"] for row in report["passes"][0]["layers"]] == ["features.0.0"]
