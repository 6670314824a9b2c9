"""Recipe configs: string forms, validation, resolution against a profile."""
from __future__ import annotations

import json

import numpy as np
import pytest

import sdk
from sdk.core.bundle import BundleWriter, load_artifact
from sdk.core.errors import RecipeError, UnsupportedRecipeError
from sdk.core.recipes import Fp16, Int4Weight, LowRank, Palettize, Prune, Recipe, from_dict, parse, resolve


def test_string_forms_round_trip():
    configs = parse(["depthwise", "lowrank:0.5", "prune:0.3", "distill:300", "int8"])
    assert [c.to_string() for c in configs] == ["depthwise", "lowrank:0.5", "prune:0.3", "distill:300", "int8"]
    assert parse("int4:64")[0] == Int4Weight(group_size=64)
    assert parse("palettize:3")[0] == Palettize(nbits=3)
    assert parse([sdk.LowRank(ratio=0.25), "fp16"]) == [LowRank(ratio=0.25), Fp16()]


def test_unknown_entry_lists_valid_ones():
    with pytest.raises(RecipeError) as info:
        parse("lowrnk:0.5")
    assert "lowrank" in str(info.value) and "Did you mean" in str(info.value) and "palettize" in str(info.value)


@pytest.mark.parametrize("bad", ["prune:1.5", "prune:abc", "palettize:9", "int4:33", "fp16:2", "lowrank:0"])
def test_bad_arguments(bad):
    with pytest.raises(RecipeError):
        parse(bad)


def test_configs_are_frozen_and_validate():
    with pytest.raises(RecipeError):
        Prune(sparsity=0.3, importance="random")
    with pytest.raises(Exception):
        Prune().sparsity = 0.5  # frozen


def test_resolve_default_and_order():
    assert resolve(sdk.devices.get("jetson"), None).to_strings() == ["fp16"]
    assert resolve(sdk.devices.get("android"), ["lowrank:0.5"]).to_strings() == ["lowrank:0.5", "fp32"]
    with pytest.raises(RecipeError, match="passes must come before"):
        resolve(sdk.devices.get("android"), ["int8", "lowrank:0.5"])
    with pytest.raises(RecipeError, match="at most one precision"):
        resolve(sdk.devices.get("android"), ["int8", "fp16"])


def test_unsupported_precision_names_config_format_device():
    with pytest.raises(UnsupportedRecipeError) as info:
        resolve(sdk.devices.get("android-litert"), ["palettize:4"])
    msg = str(info.value)
    assert "palettize:4" in msg and "litert" in msg and "android-litert" in msg and "int8" in msg


def test_tolerance_defaults_follow_recipe():
    plan = resolve(sdk.devices.get("android"), ["int8"])
    assert plan.tolerance().min_cosine == pytest.approx(0.99)
    assert plan.tolerance(sdk.Tolerance(min_cosine=0.995)).min_cosine == 0.995
    assert resolve(sdk.devices.get("android"), None).tolerance().min_cosine == 0.9999


@pytest.mark.parametrize("config", [
    sdk.Int8Static(per_channel=False), sdk.Distill(steps=10, lr=0.1), Int4Weight(group_size=64),
    LowRank(energy=0.9, scope={"fc": None, "conv": LowRank(ratio=0.25)}),
    Prune(sparsity=0.5, structured=False, importance="l1")])
def test_dict_form_is_lossless(config):
    data = json.loads(json.dumps(config.to_dict()))  # what a manifest stores
    assert from_dict(data) == config


def test_dict_form_refuses_unknown_keys_names_and_versions():
    good = sdk.Int8Static().to_dict()
    for bad, match in (({**good, "per_chanel": False}, "no field 'per_chanel'"),
                       ({**good, "config": "int9"}, "unknown config"), ({**good, "version": 99}, "version 99"),
                       ({"per_channel": True}, "'config' key")):
        with pytest.raises(RecipeError, match=match):
            from_dict(bad)


def test_manifest_reads_back_the_exact_recipe(tmp_path):
    plan = Recipe((sdk.Distill(steps=10, lr=0.1), sdk.Int8Static(per_channel=False)))
    x = np.ones((1, 2), np.float32)
    with BundleWriter(tmp_path, "b") as writer:
        (writer.staging / "m.bin").write_bytes(b"0")
        writer.write_manifest(device="d", fmt="onnx", runtime="onnxruntime", model_file="m.bin", inputs=[x],
                              outputs=[x], recipe=plan)
        path = writer.commit()
    art = load_artifact(path)
    assert art.recipe == plan
    assert art.manifest["recipe"] == ["distill:10", "int8"]  # the short form drops lr and per_channel


def test_configs_carry_their_facts():
    assert [(c.quantizes, c.activations, c.peak_key) for c in parse("fp16, int8, int8-dynamic, int4")] == [
        (False, "float", "fp16"), (True, "int8-static", "int8"), (True, "int8-dynamic", "int8"),
        (True, "float", "int8")]
