"""Checks on an uploaded bundle zip before the agent runs anything from it.

The agent runs models sent over the network, so it accepts only formats that cannot execute code: no
pickle (torch.save, TorchScript, joblib), no native code, no nested archives other than numpy's .npz of
plain arrays. The content of every entry is inspected, not just its name. Entries may not escape the job
folder (absolute paths, `..`, symlinks), sizes are capped, every file must be listed in the manifest with
its sha256, and the manifest's inputs/outputs must match reference.npz. Each refusal is an IntakeError with
an HTTP status and a message that says which entry and what to do.
"""
from __future__ import annotations

import io
import json
import pickletools
import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

import backends
from sdk.artifact import MANIFEST, REPORT, load_artifact
from sdk.errors import BundleError

__all__ = ["IntakeError", "check_bundle", "check_manifest", "content_problem", "unpack"]

MAX_ENTRIES = 10_000
#: suffixes of formats that execute code when loaded, refused whatever their content
CODE_SUFFIXES = {".pkl", ".pickle", ".pt", ".pth", ".ptl", ".ckpt", ".joblib", ".py", ".pyc",
                 ".so", ".dylib", ".dll", ".exe", ".sh", ".bat"}
NATIVE_MAGIC = {b"\x7fELF": "an ELF executable/shared library", b"MZ": "a Windows executable",
                b"\xcf\xfa\xed\xfe": "a Mach-O binary", b"\xce\xfa\xed\xfe": "a Mach-O binary",
                b"\xca\xfe\xba\xbe": "a Mach-O universal binary", b"#!": "a script"}
PICKLE_WINDOW = 1 << 20
#: longest path component and whole entry name accepted (most filesystems stop at 255 bytes per component)
MAX_COMPONENT_BYTES = 255
MAX_NAME_BYTES = 1024
#: what reading a damaged zip entry can raise: a bad CRC, a bit-flipped deflate stream, a truncated file...
ZIP_READ_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, RuntimeError, EOFError, NotImplementedError, ValueError)


class IntakeError(Exception):
    """An upload the agent refuses; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


def _safe_name(name: str) -> PurePosixPath:
    """The entry's relative path, or IntakeError if it could land outside the job folder."""
    if "\\" in name or "\x00" in name:
        raise IntakeError(400, f"zip entry {name!r} has a backslash or NUL in its name; refusing it (zip-slip guard)")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        raise IntakeError(400, f"zip entry {name!r} is an absolute path; bundle entries must be relative (zip-slip guard)")
    if ".." in path.parts:
        raise IntakeError(400, f"zip entry {name!r} contains '..' and would escape the job folder (zip-slip guard)")
    if len(name.encode()) > MAX_NAME_BYTES or any(len(p.encode()) > MAX_COMPONENT_BYTES for p in path.parts):
        raise IntakeError(400, f"zip entry {name[:80]!r}... has a name longer than {MAX_NAME_BYTES} bytes or a folder "
                               f"or file name longer than {MAX_COMPONENT_BYTES} bytes; shorten it")
    return path


def _looks_like_pickle(head: bytes) -> bool:
    """True when the bytes parse as a pickle stream up to STOP (or through the whole inspected window).

    genops only decodes opcodes; nothing is executed. Model formats (protobuf, flatbuffers, XML, raw
    weights) fail on their first bytes, which are not pickle opcodes.
    """
    count = 0
    try:
        for opcode, _, _ in pickletools.genops(io.BytesIO(head)):
            count += 1
            if opcode.name == "STOP":
                return True
    except Exception:  # genops raises ValueError or others on the first invalid opcode
        return False
    return len(head) == PICKLE_WINDOW and count > 1


def _npz_problem(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as inner:
            odd = [n for n in inner.namelist() if not n.endswith(".npy")]
    except ZIP_READ_ERRORS:
        return "a corrupt .npz archive"
    if odd:
        return f"an archive holding {odd[0]!r} (torch.save and TorchScript files are zip archives of pickles)"
    try:
        with np.load(path, allow_pickle=False) as arrays:
            for key in arrays.files:
                arrays[key]
    except ValueError as exc:
        return f"an .npz with object arrays or a damaged array, which this agent cannot read safely ({exc})"
    except ZIP_READ_ERRORS as exc:
        return f"a corrupt .npz archive ({type(exc).__name__})"
    return None


def _npy_holds_objects(head: bytes) -> bool:
    """True when a .npy header declares a dtype with Python objects ('|O', or a structured dtype with one)."""
    fh = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        _, _, dtype = read(fh, max_header_size=1 << 16)
    except (ValueError, SyntaxError, TypeError, EOFError):  # unreadable without pickle either: refuse it
        return True
    return dtype.hasobject


def content_problem(name: str, head: bytes, path: Path | None = None) -> str | None:
    """Why a file is refused (None if it is plain data): `head` is its first bytes (up to 1 MiB), `path` the
    written file (needed to look inside an .npz)."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in CODE_SUFFIXES:
        return f"{suffix} files can execute code when loaded"
    for magic, what in NATIVE_MAGIC.items():
        if head.startswith(magic):
            return f"it is {what}"
    if head.startswith(b"PK\x03\x04"):
        if suffix == ".npz" and path is not None:
            return _npz_problem(path)
        return "it is a nested zip archive (TorchScript and torch.save files are zips of pickles)"
    if head[:6] == b"\x93NUMPY" and _npy_holds_objects(head):
        return "it is a .npy of Python objects, which needs pickle"
    if _looks_like_pickle(head[:PICKLE_WINDOW]):
        return "its content is a Python pickle, which can execute code when loaded"
    return None


def unpack(zip_path: Path, dest: Path, max_unpacked_bytes: int) -> None:
    """Extract a bundle zip into `dest` after checking every entry's name, type, size and content."""
    if not zipfile.is_zipfile(zip_path):
        raise IntakeError(400, "the upload is not a zip file; send a bundle zipped with Artifact.zip() or Client.submit()")
    try:
        zf = zipfile.ZipFile(zip_path)
    except ZIP_READ_ERRORS as exc:
        raise IntakeError(400, f"the upload is not a readable zip: {type(exc).__name__}: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise IntakeError(413, f"the zip has {len(infos)} entries; at most {MAX_ENTRIES} are accepted")
        seen: set[PurePosixPath] = set()
        files: set[PurePosixPath] = set()
        total = 0
        for info in infos:
            rel = _safe_name(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise IntakeError(400, f"zip entry {info.filename!r} is a symbolic link; links could point outside "
                                       "the job folder, so bundles may not contain them")
            if rel in seen:
                raise IntakeError(400, f"zip entry {info.filename!r} appears twice")
            seen.add(rel)
            if not info.is_dir():
                files.add(rel)
            total += info.file_size
            if total > max_unpacked_bytes:
                raise IntakeError(413, f"the bundle unpacks to more than {max_unpacked_bytes >> 20} MiB; "
                                       "raise the agent's --max-upload-mb if this model really is that large")
        clash = next((rel for rel in seen for parent in rel.parents if parent in files), None)
        if clash is not None:
            raise IntakeError(400, f"zip entry {clash.as_posix()!r} lies inside {next(p for p in clash.parents if p in files).as_posix()!r}, "
                                   "which is also a file entry; a path cannot be both a file and a folder")
        dest.mkdir(parents=True, exist_ok=True)
        root = dest.resolve()
        for info in infos:
            rel = _safe_name(info.filename)
            target = (root / rel).resolve()
            if root not in target.parents and target != root:
                raise IntakeError(400, f"zip entry {info.filename!r} resolves outside the job folder (zip-slip guard)")
            try:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                _extract(zf, info, target)
            except ZIP_READ_ERRORS as exc:  # CRC error, bit-flipped deflate data, encrypted entry...
                raise IntakeError(400, f"zip entry {info.filename!r} cannot be read: {type(exc).__name__}: "
                                       f"{str(exc).replace(str(root), 'bundle')}") from None
            with open(target, "rb") as fh:
                head = fh.read(PICKLE_WINDOW)
            problem = content_problem(info.filename, head, target)
            if problem:
                raise IntakeError(415, f"refusing {info.filename!r}: {problem}. The agent only runs formats that "
                                       "cannot execute code (.onnx, OpenVINO .xml/.bin, .pte, .tflite, .mlpackage, .npz)")


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    """Stream one entry to disk (zipfile stops at the header's size and checks the CRC)."""
    with zf.open(info) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


class _FileEntry(BaseModel):
    path: StrictStr
    bytes: StrictInt = Field(ge=0)
    sha256: StrictStr = Field(pattern=r"^[0-9a-f]{64}$")


class _TensorSpec(BaseModel):
    name: StrictStr
    shape: list[StrictInt]
    dtype: StrictStr


class _Tolerance(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer SDK's extra checks are not this agent's to refuse
    min_cosine: float | None = None
    max_abs_err: float | None = None
    min_top1_agreement: float | None = None
    min_sqnr_db: float | None = None


class _Manifest(BaseModel):
    """The manifest fields the agent reads, with their types (other keys are kept, unchecked)."""

    model_config = ConfigDict(extra="allow")
    schema_version: StrictInt | StrictStr
    sdk_version: StrictStr
    device: StrictStr
    format: StrictStr
    runtime: StrictStr
    model_file: StrictStr
    files: list[_FileEntry]
    inputs: list[_TensorSpec]
    outputs: list[_TensorSpec]
    reference: StrictStr = "reference.npz"
    tolerance: _Tolerance | None = None


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise IntakeError(422, f"{path.name} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise IntakeError(422, f"{path.name} is not valid JSON ({exc if isinstance(exc, ValueError) else 'nested too deep'})") from None


def check_manifest(bundle_dir: Path) -> dict[str, Any]:
    """manifest.json (and report.json, when present) parse and have the types the agent relies on."""
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise IntakeError(422, f"the bundle has no {MANIFEST} at its top level (export one with sdk.export or `edge-sdk export`)")
    manifest = _json_file(path)
    if not isinstance(manifest, dict):
        raise IntakeError(422, f"{MANIFEST} must be a JSON object, got {type(manifest).__name__}")
    try:
        _Manifest.model_validate(manifest)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors()[:5])
        raise IntakeError(422, f"{MANIFEST} is malformed: {problems} (re-export the bundle)") from None
    if (bundle_dir / REPORT).is_file() and not isinstance(_json_file(bundle_dir / REPORT), dict):
        raise IntakeError(422, f"{REPORT} must be a JSON object")
    return manifest


def check_bundle(bundle_dir: Path, *, need_runtime: bool = True) -> dict[str, Any]:
    """Manifest checks on an unpacked bundle; returns a short description of it for the job record."""
    check_manifest(bundle_dir)
    try:
        artifact = load_artifact(bundle_dir)
    except BundleError as exc:
        raise IntakeError(422, str(exc).replace(str(bundle_dir), "bundle")) from None
    manifest = artifact.manifest
    for key in ("model_file", "reference"):
        if key in manifest:
            _safe_name(str(manifest[key]))
    listed = set()
    for entry in manifest["files"]:
        _safe_name(entry["path"])
        listed.add(entry["path"])
    present = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    extra = sorted(present - listed - {"manifest.json", "report.json", "report.html"})
    if extra:
        raise IntakeError(422, f"bundle files not listed in manifest.json: {', '.join(extra[:5])}; every file must be "
                               "listed with its sha256 (re-export the bundle)")
    try:
        artifact.verify()
    except BundleError as exc:
        raise IntakeError(422, str(exc).replace(str(bundle_dir), "bundle")) from None
    if manifest["model_file"] not in listed and not any(p.startswith(manifest["model_file"].rstrip("/") + "/") for p in listed):
        raise IntakeError(422, f"manifest model_file {manifest['model_file']!r} is not among its files")
    _check_reference(bundle_dir, manifest)
    runtime = manifest["runtime"]
    if runtime not in backends.runtimes():
        raise IntakeError(422, f"bundle runtime {runtime!r} has no backend on this agent (known: {', '.join(backends.runtimes())})")
    if need_runtime:
        reason = backends.get(runtime).unavailable_reason()
        if reason:
            raise IntakeError(422, f"runtime {runtime!r} cannot run on this agent: {reason}")
    model = next((f for f in manifest["files"] if f["path"] == manifest["model_file"]), None)
    return {"device": manifest["device"], "format": manifest["format"], "runtime": runtime,
            "model_file": manifest["model_file"], "model_sha256": model and model["sha256"],
            "size_bytes": artifact.size_bytes}


def _check_reference(bundle_dir: Path, manifest: dict[str, Any]) -> None:
    """The manifest's inputs/outputs must be the arrays in reference.npz (name, shape, dtype)."""
    ref = bundle_dir / manifest.get("reference", "reference.npz")
    if not ref.is_file():
        raise IntakeError(422, f"bundle has no {ref.name}: parity cannot be checked without the reference")
    try:
        with np.load(ref, allow_pickle=False) as data:
            arrays = {k: (list(data[k].shape), str(data[k].dtype)) for k in data.files}
    except ZIP_READ_ERRORS as exc:
        raise IntakeError(422, f"{ref.name} is not a readable npz of plain arrays: {exc}") from None
    for side in ("inputs", "outputs"):
        for spec in manifest[side]:
            name = spec.get("name")
            if name not in arrays:
                raise IntakeError(422, f"manifest {side} names {name!r} but {ref.name} has no such array "
                                       f"(it has {', '.join(sorted(arrays))})")
            shape, dtype = arrays[name]
            try:
                same = [int(d) for d in spec["shape"]] == shape and np.dtype(spec["dtype"]) == np.dtype(dtype)
            except (TypeError, ValueError):
                raise IntakeError(422, f"manifest entry for {name} has an invalid shape or dtype: {spec}") from None
            if not same:
                raise IntakeError(422, f"manifest says {name} is {list(spec['shape'])} {spec['dtype']}, but {ref.name} "
                                       f"holds {shape} {dtype}: the manifest and reference disagree (re-export the bundle)")

