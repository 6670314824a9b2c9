"""ONNX decoder (Jetson's TensorRT stand-in: ONNX Runtime on the CPU): the KV cache is an input and an output.

The graph takes input_ids [1, T], pos [1], k_cache, v_cache and returns the last logits plus the updated caches,
which this loop keeps and feeds back (on a device, TensorRT/ORT I/O binding keeps them in device memory).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from backends.llm.base import LlmSpec


class OnnxDecoder:
    def __init__(self, session: Any, spec: LlmSpec, ran_on: str):
        self._session, self.spec, self.ran_on = session, spec, ran_on
        self.reset()

    def reset(self) -> None:
        self._k = np.zeros(self.spec.cache_shape(), np.float32)
        self._v = np.zeros(self.spec.cache_shape(), np.float32)

    def step(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        feeds = {"input_ids": np.asarray(tokens, np.int64).reshape(1, -1), "pos": np.array([pos], np.int64),
                 "k_cache": self._k, "v_cache": self._v}
        logits, self._k, self._v = self._session.run(None, feeds)
        return logits[0]


def load(bundle_dir: Path, manifest: Mapping[str, Any]) -> OnnxDecoder:
    import onnxruntime as ort

    options = ort.SessionOptions()
    session = ort.InferenceSession(str(bundle_dir / manifest["model_file"]), options,
                                   providers=["CPUExecutionProvider"])
    return OnnxDecoder(session, LlmSpec.from_manifest(manifest),
                       f"onnxruntime {ort.__version__} CPUExecutionProvider (stand-in for TensorRT)")
