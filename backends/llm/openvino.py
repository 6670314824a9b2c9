"""OpenVINO decoder: a stateful model (the KV cache is the model's state), run with the plain runtime.

openvino-genai would run the same IR with its own loop, but its wheel pins an exact OpenVINO release, so it
is not installed next to the SDK's OpenVINO; this loop calls `InferRequest.infer` and `reset_state` itself.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from backends.llm.base import LlmSpec


class OpenVinoDecoder:
    def __init__(self, request: Any, spec: LlmSpec, ran_on: str):
        self._request, self.spec, self.ran_on = request, spec, ran_on

    def reset(self) -> None:
        self._request.reset_state()

    def step(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        out = self._request.infer({"input_ids": np.asarray(tokens, np.int64).reshape(1, -1),
                                   "pos": np.array([pos], np.int64)})
        return np.array(out["logits"][0])


def load(bundle_dir: Path, manifest: Mapping[str, Any]) -> OpenVinoDecoder:
    import openvino as ov

    compiled = ov.Core().compile_model(str(bundle_dir / manifest["model_file"]), "CPU")
    request = compiled.create_infer_request()
    request.reset_state()
    return OpenVinoDecoder(request, LlmSpec.from_manifest(manifest), f"openvino {ov.__version__} CPU (stateful)")
