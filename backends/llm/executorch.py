"""ExecuTorch decoder: a `.pte` from ExecuTorch's own LLM export (static KV cache in mutable buffers, custom SDPA).

`forward(tokens [1, T], input_pos [1])` returns the last logits; the cache persists inside the loaded method
between calls, and a new sequence simply writes from position 0 again (the causal mask hides older entries).
The pybindings take torch tensors (the official wheel links libtorch), so torch is imported here as the
runtime's tensor type only; no model code runs in torch.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from backends.llm.base import LlmSpec


class ExecuTorchDecoder:
    def __init__(self, method: Any, torch: Any, spec: LlmSpec, ran_on: str):
        self._method, self._torch, self.spec, self.ran_on = method, torch, spec, ran_on

    def reset(self) -> None:
        """Nothing to clear: positions are rewritten from 0 and the mask never reads past `pos`."""

    def step(self, tokens: np.ndarray, pos: int) -> np.ndarray:
        t = self._torch
        out = self._method.execute([t.from_numpy(np.asarray(tokens, np.int64).reshape(1, -1)),
                                    t.tensor([pos], dtype=t.long)])
        return out[0].numpy().reshape(-1, self.spec.vocab_size)[-1]


def load(bundle_dir: Path, manifest: Mapping[str, Any]) -> ExecuTorchDecoder:
    import executorch.kernels.quantized  # noqa: F401  registers the 4-bit embedding kernels
    import torch
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401  registers the custom SDPA kernels
    from executorch.runtime import Runtime
    from executorch.version import __version__

    method = Runtime.get().load_program(Path(bundle_dir / manifest["model_file"])).load_method("forward")
    # The cache buffers start uninitialised (ExecuTorch serialises only their shape), and the first prefill after
    # load was seen to return wrong logits; one throw-away step at position 0 settles them.
    method.execute([torch.zeros((1, 1), dtype=torch.long), torch.zeros(1, dtype=torch.long)])
    return ExecuTorchDecoder(method, torch, LlmSpec.from_manifest(manifest),
                             f"executorch {__version__.split('+')[0]} (XNNPACK delegate, custom SDPA, pybindings)")
