"""progress=True: the stage, the time so far and an estimate from this machine's earlier runs, on stderr only."""
from __future__ import annotations

import inspect
import json
import logging

import torch

import sdk
from sdk.progress import history_file


def test_progress_shows_stages_then_an_estimate_and_nothing_leaks_to_the_root_logger(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = logging.getLogger()
    noisy = logging.StreamHandler()  # what a library's logging.basicConfig() leaves behind
    root.addHandler(noisy)
    root_level = root.level
    root.setLevel(logging.INFO)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(8, 4)).eval()
        for _ in range(2):
            sdk.export(model, "jetson", (torch.randn(1, 8),), output_dir=tmp_path / "out", progress=True)
    finally:
        root.removeHandler(noisy)
        root.setLevel(root_level)
    err = capsys.readouterr().err.splitlines()
    ours = [line for line in err if line.startswith("edge-sdk: ")]
    assert any("converting for jetson-orin-nano" in line and "no estimate yet" in line for line in ours), err
    assert any("validating" in line and "usually" in line and "1 run)" in line for line in ours), err
    assert not [line for line in err if "converting for" in line and not line.startswith("edge-sdk: ")], err
    runs = json.loads(history_file().read_text())["jetson-orin-nano|default"]
    assert len(runs) == 2 and all(r > 0 for r in runs)
    assert inspect.signature(sdk.export).parameters["progress"].default is False
