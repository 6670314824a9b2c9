"""Bundles on disk: Ctrl-C writes nothing, a killed export's leftovers go at the next export, modes follow umask."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import sdk

ROOT = Path(__file__).resolve().parents[1]
#: a model whose capture for export (TorchScript tracing or torch.export, whichever the exporter uses) takes 60 s
#: and says when it starts, so the test's Ctrl-C lands while the bundle is being staged however busy the machine is
SLOW_TO_CAPTURE = '''
import pathlib, time, torch
class Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
    def forward(self, x):
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            pathlib.Path("capturing").touch()
            time.sleep(60)
        return self.fc(x)
def build():
    return Slow().eval()
def example_inputs():
    return (torch.randn(1, 4),)
'''


def _export(out: Path) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()
    return sdk.export(model, "jetson", (torch.randn(1, 4),), output_dir=out).artifact.path


def test_ctrl_c_says_nothing_was_written_and_leaves_nothing(tmp_path):
    (tmp_path / "slow.py").write_text(SLOW_TO_CAPTURE)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-m", "sdk.cli", "export", "slow.py:build", "-d", "jetson", "--out", "out"]
    # As a shell starts a foreground command: SIGINT at its default. A test worker may run with SIGINT ignored (set
    # by an earlier test's library), and an ignored signal stays ignored across exec, so Ctrl-C would never land.
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "capturing").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        assert list((tmp_path / "out").glob(".jetson-orin-nano.partial-*"))  # the capture runs while staging
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "aborted, nothing written" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_a_killed_exports_leftovers_are_removed_by_the_next_export(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    stale = out / f".jetson-orin-nano.partial-{dead}-abc123"
    live = out / f".jetson-orin-nano.partial-{os.getpid()}-def456"  # a running export's (this process)
    other = out / f".intel-cpu.partial-{dead}-ghi789"  # another device's: not this export's business
    for folder in (stale, live, other):
        folder.mkdir()
    _export(out)
    assert not stale.exists() and live.exists() and other.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_bundle_folder_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        bundle = _export(tmp_path / f"out-{umask:o}")
    finally:
        os.umask(old)
    assert bundle.stat().st_mode & 0o777 == 0o777 & ~umask
