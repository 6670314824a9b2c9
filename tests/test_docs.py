"""Docs stay true to the code: generated pages are current and every python block runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def test_device_pages_are_generated_from_profiles():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_devices
    finally:
        sys.path.pop(0)
    pages = gen_devices.render()
    on_disk = {f.name: f.read_text() for f in (ROOT / "docs" / "devices").glob("*.md")}
    assert on_disk == pages, "run: python docs/gen_devices.py"


@pytest.mark.parametrize("page", [p for p in DOCS if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_python_blocks_run(page, tmp_path):
    """Each page's python blocks run in order, in one fresh interpreter, from a scratch folder."""
    code = "\n".join(BLOCK.findall(page.read_text()))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, f"{page.name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
