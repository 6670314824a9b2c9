"""Device-side decoders for LLM bundles: one step function per runtime over a static KV cache (no torch).

A bundle exported with `task="text-generation"` records `manifest["llm"]` (layers, heads, head_dim,
max_seq_len, eos ids, vocab size); `load` opens it with the module for its runtime and returns a `Decoder`
that the generation loop (`sdk.agent.generate`) drives.
"""
from __future__ import annotations

import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from backends.llm.base import Decoder, LlmSpec

__all__ = ["Decoder", "LlmSpec", "load", "runtimes"]

#: runtime name (manifest["runtime"]) -> module with `load(bundle_dir, manifest) -> Decoder`
RUNTIMES = {
    "executorch": "backends.llm.executorch",
    "openvino": "backends.llm.openvino",
    "onnxruntime": "backends.llm.onnx",
    "tensorrt": "backends.llm.onnx",
}


def runtimes() -> list[str]:
    return sorted(RUNTIMES)


def load(bundle_dir: str | Path, manifest: Mapping[str, Any] | None = None) -> Decoder:
    """Open an LLM bundle folder with its runtime; ValueError if it is not one, RuntimeError if it cannot run here."""
    bundle_dir = Path(bundle_dir)
    if manifest is None:
        manifest = json.loads((bundle_dir / "manifest.json").read_text())
    if "llm" not in manifest:
        raise ValueError(f"{bundle_dir} is not an LLM bundle (no 'llm' entry in its manifest): export it with "
                         "task='text-generation'")
    runtime = manifest["runtime"]
    if runtime not in RUNTIMES:
        raise RuntimeError(f"no LLM decoder for runtime {runtime!r} on this machine; LLM runtimes: "
                           f"{', '.join(runtimes())}")
    module = importlib.import_module(RUNTIMES[runtime])
    return module.load(bundle_dir, manifest)
