"""The docs site builds with `mkdocs build --strict` (what `make docs` runs): every nav page exists and every
relative link and anchor resolves."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MKDOCS = Path(sys.executable).with_name("mkdocs")


@pytest.mark.skipif(not MKDOCS.exists() and shutil.which("mkdocs") is None, reason="mkdocs is not installed (dev extra)")
def test_mkdocs_build_strict(tmp_path):
    exe = str(MKDOCS) if MKDOCS.exists() else shutil.which("mkdocs")
    proc = subprocess.run([exe, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "benchmarks" / "index.html").exists()
