"""Cheap checks come first: every input check that needs no torch fails before torch or the model loads.

The CLI cases run in a fresh interpreter (no torch imported yet); each call is timed in the child around the call
itself, with a generous 1 s bound, and the child asserts torch is still not imported when the error comes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sdk
from sdk import preflight
from sdk.errors import InvalidInputsError, OutputDirError, RecipeError, UnknownDeviceError, UserInputError

ROOT = Path(__file__).resolve().parents[1]

#: (argv after `edge-sdk export`, error class name, words the message must hold)
CLI_CASES = [
    (["samples.mobilenet_v2:build", "--device", "jetsn"], "UnknownDeviceError", ["Did you mean 'jetson'"]),
    (["samples.mobilenet_v2:build", "--device", "jetson", "--recipe", "int9"], "RecipeError", ["--recipe", "int9"]),
    (["samples.mobilenet_v2:build", "--device", "intel-cpu", "--recipe", "int8"], "InvalidInputsError",
     ["--calibration", "int8-dynamic"]),
    (["samples.mobilenet_v2:build", "--device", "jetson", "--recipe", "distill,fp16"], "InvalidInputsError",
     ["--calibration", "distill"]),
    (["samples.mobilenet_v2:build", "--device", "jetson", "--out", "a_file.txt"], "OutputDirError",
     ["--out", "is a file", "output folder"]),
    (["samples.mobilenet_v2:build", "--device", "jetson", "--out", "a_file.txt/sub"], "OutputDirError", ["--out"]),
    (["missing.py:build", "--device", "jetson"], "UserInputError", ["missing.py does not exist"]),
    (["samples.mobilenet_v2", "--device", "jetson"], "UserInputError", ["package.module:name"]),
    (["samples.mobilenet_v2:build", "--device", "jetson", "--calibration", "nope.py:loader"], "UserInputError",
     ["--calibration", "nope.py"]),
    (["samples.mobilenet_v2:build", "--device", "jetson", "--min-cosine", "nan"], "UserInputError", ["--min-cosine"]),
    (["samples.mobilenet_v2:build", "--device", "jetson", "--recipe", "palettize"], "UnsupportedRecipeError",
     ["palettize", "jetson-orin-nano supports"]),
    (["samples.mobilenet_v2:build", "--device", "jetson", "--agent", "jetson.local:8765"], "UserInputError",
     ["--agent", "http://"]),
]

CHILD = """
import json, sys, time
from sdk.cli import app
from sdk.errors import SdkError
results = []
for argv in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        app(["export", *argv], standalone_mode=False)
        results.append({"error": None})
    except SdkError as exc:
        results.append({"error": type(exc).__name__, "message": str(exc), "seconds": time.perf_counter() - start,
                        "torch_loaded": "torch" in sys.modules})
print(json.dumps(results))
"""


def test_cli_input_checks_fail_in_under_a_second_without_torch(tmp_path):
    (tmp_path / "a_file.txt").write_text("not a folder")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps([argv for argv, _, _ in CLI_CASES])], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    for (argv, error, words), got in zip(CLI_CASES, results, strict=True):
        assert got["error"] == error, (argv, got)
        assert all(w in got["message"] for w in words), (argv, got["message"])
        assert not got["torch_loaded"], (argv, "torch was imported before the check failed")
        assert got["seconds"] < 1.0, (argv, got["seconds"])
    assert not (tmp_path / "out").exists()


class _MustNotRun(torch.nn.Module):
    """Fails the test if the export touches the model before its cheap checks."""

    def forward(self, x):
        raise AssertionError("the model ran before the input checks")

    def __deepcopy__(self, memo):
        raise AssertionError("the model was copied before the input checks")


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"device": "jetsn"}, UnknownDeviceError, ["Did you mean"]),
    ({"device": "jetson", "recipe": "int9"}, RecipeError, ["recipe=", "int9"]),
    ({"device": "intel-cpu", "recipe": "int8"}, InvalidInputsError, ["calibration="]),
    ({"device": "jetson", "output_dir": "FILE"}, OutputDirError, ["output_dir=", "is a file"]),
    ({"device": "jetson", "tolerance": 0.99}, UserInputError, ["sdk.Tolerance"]),
    ({"device": "jetson", "validate": "yes"}, UserInputError, ["agent URL"]),
])
def test_api_checks_come_before_the_model_is_touched(kwargs, error, words, tmp_path):
    (tmp_path / "file").write_text("x")
    kwargs = {"output_dir": tmp_path / "out", **kwargs}
    if kwargs["output_dir"] == "FILE":
        kwargs["output_dir"] = tmp_path / "file"
    device = kwargs.pop("device")
    with pytest.raises(error) as info:
        sdk.export(_MustNotRun(), device, (torch.randn(1, 4),), **kwargs)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_a_multi_device_run_checks_the_recipe_per_device():
    """With several devices, one that lacks the precision is that device's failure; a typo is everyone's."""
    ids = preflight.check_cli_export("m.mod:build", ["jetson", "apple-ane"], recipe="palettize", calibration=None,
                                     out=Path("out"), min_cosine=None, agent=None)
    assert ids == ["jetson-orin-nano", "apple-ane"]
    with pytest.raises(RecipeError):
        preflight.check_cli_export("m.mod:build", ["jetson", "apple-ane"], recipe="int9", calibration=None,
                                   out=Path("out"), min_cosine=None, agent=None)
