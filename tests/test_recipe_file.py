"""`edge-sdk export --config recipe.toml`: the file's keys are the flags; a flag on the command line wins."""
from __future__ import annotations

import json

import pytest

from sdk import recipe_file
from sdk.cli import app
from sdk.errors import UserInputError

MODEL = ("import torch\ndef build():\n    torch.manual_seed(0)\n"
         "    return torch.nn.Sequential(torch.nn.Linear(6, 3)).eval()\n"
         "def example_inputs():\n    return (torch.randn(1, 6),)\n")


def test_export_from_a_toml_recipe_with_flags_over_it_prints_80_columns(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.py").write_text(MODEL)
    (tmp_path / "recipe.toml").write_text('model = "net.py:build"\ndevice = "intel-cpu"\nrecipe = ["fp32"]\n'
                                          'out = "from-file"\n')
    app(["export", "--config", "recipe.toml", "-d", "jetson", "-d", "jetson-agx-orin"], standalone_mode=False)
    out = tmp_path / "from-file"
    for device in ("jetson-orin-nano", "jetson-agx-orin"):
        assert json.loads((out / device / "manifest.json").read_text())["recipe"] == ["fp32"]
    assert not (out / "intel-cpu").exists()
    printed = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in printed), printed
    assert [line.split()[1] for line in printed if line.startswith("ok ")] == ["jetson-orin-nano", "jetson-agx-orin"]
    assert sum("stand-in for TensorRT" in line for line in printed) == 1  # the shared reason, printed once
    summary = json.loads((out / "summary.json").read_text())
    assert [d["device"] for d in summary["devices"]] == ["jetson-orin-nano", "jetson-agx-orin"]
    assert (out / "summary.html").is_file()


@pytest.mark.parametrize(("text", "words"), [
    ('devce = "jetson"\n', "did you mean 'device'"),
    ("min_cosine = 'high'\n", "wrong type"),
    ("device = [1, 2]\n", "list of strings"),
    ("model = \n", "not valid TOML"),
])
def test_bad_recipe_files_name_the_file_and_key(tmp_path, text, words):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(UserInputError, match=words) as info:
        recipe_file.merge(path, model="m:build", device=["jetson"])
    assert str(path) in str(info.value)


def test_model_and_device_must_come_from_somewhere():
    with pytest.raises(UserInputError, match="give MODEL and --device"):
        recipe_file.merge(None)
