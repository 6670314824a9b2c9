"""A pip user's first run: the built wheel, installed into a fresh venv with no checkout on sys.path, runs the
README's first example and `edge-sdk export` on a sample that ships in the wheel.

Installing torch and the toolchains into a new venv would take minutes, so the fresh venv gets the wheel alone
(`--no-deps`) plus one .pth line pointing at the site-packages of the interpreter running the tests, where the
dependencies already are. A .pth line adds a folder to sys.path without processing the .pth files inside it, so the
checkout's editable install there stays inactive; each run asserts `sdk` was imported from the fresh venv.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes build/ and *.egg-info into the source tree, and an egg-info in the
    # checkout would make the checkout look like an installed edge-sdk to every interpreter that has it on sys.path
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "out", "build", "dist", "site",
                                                                  "__pycache__", "*.egg-info", ".pytest_cache"))
    pip, env = [sys.executable, "-m", "pip"], _clean_env()
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300, env=env)
    wheel = next((tmp / "dist").glob("edge_sdk-*.whl"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300, env=env)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "host_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _clean_env() -> dict[str, str]:
    """The environment without the checkout on PYTHONPATH (the test runner puts it there)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(venv: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, check=False, cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(argv[:3])}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_the_wheel_ships_the_samples_and_imports_from_the_venv(fresh_venv, tmp_path):
    code = ("import sdk, samples.mobilenet_v2 as m, sys; print(sdk.__file__); print(m.__file__); "
            f"print(any(p.rstrip('/') == {str(ROOT)!r} for p in sys.path))")
    proc = _run(fresh_venv, [str(fresh_venv / "bin" / "python"), "-c", code], tmp_path)
    sdk_file, sample_file, checkout_on_path = proc.stdout.split()
    assert Path(sdk_file).is_relative_to(fresh_venv) and Path(sample_file).is_relative_to(fresh_venv)
    assert checkout_on_path == "False"


def test_readme_first_example_runs_from_a_pip_install(fresh_venv, tmp_path):
    first = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL).group(1)
    code = first + "\nprint('SDK_FILE', sdk.__file__)\nassert res.report['parity']['passed']\n"
    proc = _run(fresh_venv, [str(fresh_venv / "bin" / "python"), "-c", code], tmp_path)
    assert Path(proc.stdout.split("SDK_FILE ")[1].split()[0]).is_relative_to(fresh_venv)
    assert (tmp_path / "out" / "jetson-orin-nano" / "manifest.json").is_file()


def test_cli_exports_a_shipped_sample(fresh_venv, tmp_path):
    _run(fresh_venv, [str(fresh_venv / "bin" / "edge-sdk"), "export", "samples.mobilenet_v2:build", "--device",
                      "jetson", "--shape", "1x3x64x64", "--out", "out"], tmp_path)
    assert (tmp_path / "out" / "jetson-orin-nano" / "manifest.json").is_file()
