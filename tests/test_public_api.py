"""The public surface is pinned, and the device side imports without torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import sdk

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {
    "__version__", "export", "compress", "load_artifact", "optimize", "Budget", "ExportResult", "Artifact", "Tolerance",
    "Fp32", "Fp16", "Bf16",
    "Int8Static", "Int8Dynamic", "Int4Weight", "Palettize", "Prune", "LowRank", "DepthwiseSeparable", "Distill",
    "Drop", "devices", "recipes", "errors", "agent", "farm",
}


def test_all_is_pinned():
    assert set(sdk.__all__) == EXPECTED
    for name in sdk.__all__:
        assert getattr(sdk, name) is not None, name


def test_errors_share_one_root():
    from sdk import errors

    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, errors.SdkError), name


def _import_without_torch(modules: list[str]) -> subprocess.CompletedProcess:
    code = ("import sys; sys.modules['torch'] = None\n"
            f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
            "assert sys.modules.get('torch') is None\nprint('ok')")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_device_side_imports_without_torch():
    import backends

    modules = ["sdk", "sdk.devices", "sdk.artifact", "sdk.parity", "sdk.metrics", "sdk.errors", "backends"]
    modules += sorted(set(backends.BUILTIN.values()))
    modules += [f"sdk.agent.{p.stem}" for p in (ROOT / "sdk" / "agent").glob("*.py") if p.stem != "__init__"]
    modules += [f"sdk.farm.{p.stem}" for p in (ROOT / "sdk" / "farm").glob("*.py") if p.stem != "__init__"]
    proc = _import_without_torch(modules)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_no_submodule_shadows_a_public_function():
    """`import sdk.<name>` must never replace the function sdk.<name> (doctest collection imports every module)."""
    submodules = {"devices", "recipes", "errors", "agent", "farm"}
    for name in sdk.__all__:
        if name not in submodules:
            assert not (ROOT / "sdk" / f"{name}.py").exists() and not (ROOT / "sdk" / name).is_dir(), name
