"""Artifact bundles: a folder with manifest.json, model file(s), reference.npz and report.json.

torch-free: devices and the agent read bundles with this module. Bundles are written into a
hidden temporary folder beside the destination and moved into place only when complete, so a
failed export never leaves something that looks like a good bundle.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sdk.errors import BundleError, OutputDirError
from sdk.version import SCHEMA_VERSION, __version__

__all__ = ["Artifact", "load_artifact", "BundleWriter", "sha256_file", "REQUIRED_KEYS"]

MANIFEST = "manifest.json"
REFERENCE = "reference.npz"
REPORT = "report.json"
REQUIRED_KEYS = ("schema_version", "sdk_version", "device", "format", "runtime", "model_file", "files",
                 "inputs", "outputs", "recipe", "created")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tensor_specs(prefix: str, arrays: Sequence[np.ndarray]) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}_{i}", "shape": list(a.shape), "dtype": str(a.dtype)} for i, a in enumerate(arrays)]


@dataclass
class Artifact:
    """A bundle on disk. `manifest` and `report` are plain dicts (report.json may be absent).

    >>> import sdk, torch
    >>> res = sdk.export(torch.nn.Linear(4, 2).eval(), "intel-cpu", (torch.randn(1, 4),), output_dir=tmp)
    >>> art = sdk.load_artifact(res.artifact.path)
    >>> art.format, art.manifest["inputs"][0]["shape"]
    ('openvino', [1, 4])
    >>> art.verify()
    """

    path: Path
    manifest: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"Artifact(device={self.device!r}, format={self.format!r}, path='{self.path}', size={self.size_bytes} B)"

    def _repr_html_(self) -> str:
        from sdk.report_html import card

        return card(self.report or self.manifest, self.path)

    @property
    def device(self) -> str:
        return self.manifest["device"]

    @property
    def format(self) -> str:
        return self.manifest["format"]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"]

    @property
    def size_bytes(self) -> int:
        """Bytes of the model file(s): what ships in an app (not the reference inputs or the report)."""
        reference = self.manifest.get("reference", REFERENCE)
        return sum(f["bytes"] for f in self.manifest["files"] if f["path"] != reference)

    def reference(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The sample inputs and the fp32 outputs they gave, in manifest order."""
        with np.load(self.path / self.manifest.get("reference", REFERENCE), allow_pickle=False) as data:
            inputs = [data[spec["name"]] for spec in self.manifest["inputs"]]
            outputs = [data[spec["name"]] for spec in self.manifest["outputs"]]
        return inputs, outputs

    def verify(self) -> None:
        """Check every file listed in the manifest exists with its size and sha256; raise BundleError if not."""
        for entry in self.manifest["files"]:
            target = self.path / entry["path"]
            if not target.is_file():
                raise BundleError(f"bundle {self.path}: file {entry['path']} listed in the manifest is missing")
            if target.stat().st_size != entry["bytes"] or sha256_file(target) != entry["sha256"]:
                raise BundleError(f"bundle {self.path}: {entry['path']} does not match its sha256 in the manifest "
                                  "(corrupted or edited after export)")

    def zip(self, dest: str | Path | None = None) -> Path:
        """Zip the bundle (for upload to an agent or an app build); returns the zip's path."""
        dest = Path(dest) if dest else Path(tempfile.mkdtemp(prefix="edge-sdk-")) / f"{self.path.name}.zip"
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for item in sorted(self.path.rglob("*")):
                if item.is_file():
                    zf.write(item, item.relative_to(self.path).as_posix())
        return dest


def load_artifact(path: str | Path) -> Artifact:
    """Open a bundle folder, checking the manifest has every required key.

    >>> import sdk
    >>> sdk.load_artifact("/nonexistent")
    Traceback (most recent call last):
    ...
    sdk.errors.BundleError: /nonexistent is not an artifact bundle: no manifest.json (export one with sdk.export or `edge-sdk export`)
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path} is not an artifact bundle: no {MANIFEST} (export one with sdk.export or `edge-sdk export`)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path} is not valid JSON: {exc}") from None
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise BundleError(f"{manifest_path} lacks required key(s): {', '.join(missing)}")
    report_path = path / REPORT
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    return Artifact(path=path, manifest=manifest, report=report)


class BundleWriter:
    """Stage a bundle in `<output_dir>/.<name>.partial-<pid>-*` and move it to `<output_dir>/<name>` on `commit`.

    Used as a context manager: leaving the block without `commit` (an error) deletes the staging folder.
    """

    def __init__(self, output_dir: str | Path, name: str):
        self.output_dir = Path(output_dir)
        self.final = self.output_dir / name
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=self.output_dir))
        except OSError as exc:
            raise OutputDirError(f"cannot write to output folder {self.output_dir}: {exc.strerror or exc}. "
                                 "Pick a writable folder with output_dir=... (CLI: --out).") from None
        self.committed = False

    def __enter__(self) -> "BundleWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            shutil.rmtree(self.staging, ignore_errors=True)

    def write_reference(self, inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> None:
        arrays = {f"in_{i}": a for i, a in enumerate(inputs)} | {f"out_{i}": a for i, a in enumerate(outputs)}
        np.savez(self.staging / REFERENCE, **arrays)

    def write_manifest(self, *, device: str, fmt: str, runtime: str, model_file: str,
                       inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], recipe: list[str],
                       runtime_options: Mapping[str, Any] | None = None, extra: Mapping[str, Any] | None = None) -> dict:
        """Write manifest.json listing every file staged so far (call after the model and reference)."""
        if not (self.staging / model_file).exists():
            raise BundleError(f"converter reported model file {model_file!r} but did not write it")
        files = [{"path": p.relative_to(self.staging).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
                 for p in sorted(self.staging.rglob("*")) if p.is_file() and p.name not in (MANIFEST, REPORT)]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "sdk_version": __version__,
            "device": device,
            "format": fmt,
            "runtime": runtime,
            "runtime_options": dict(runtime_options or {}),
            "model_file": model_file,
            "files": files,
            "inputs": _tensor_specs("in", inputs),
            "outputs": _tensor_specs("out", outputs),
            "recipe": list(recipe),
            "reference": REFERENCE,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **dict(extra or {}),
        }
        (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        return manifest

    def write_report(self, report: Mapping[str, Any]) -> None:
        (self.staging / REPORT).write_text(json.dumps(report, indent=2, default=str) + "\n")

    def commit(self) -> Path:
        """Replace any previous bundle at the destination with the staged one."""
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            os.replace(self.final, old)
        os.replace(self.staging, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.committed = True
        return self.final
