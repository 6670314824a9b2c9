"""LiteRT: not supported for LLM export, and why.

litert-torch's generative path (`litert_torch.generative`) does not convert a Hugging Face module: it rebuilds
each supported family from its own layer library (`litert_torch.generative.examples.*`, built from a
`ModelConfig`) and loads the checkpoint through a per-family tensor-name mapping, then exports prefill/decode
signatures with an external KV cache. Mapping an arbitrary config-defined decoder onto it is not done here, and
the plain litert-torch conversion of the static-cache graph would lose the generative signatures' cache
handling, so the SDK refuses instead of writing a bundle that the LiteRT LLM runtime could not drive.
"""
from __future__ import annotations

from converters.llm.base import LlmConversion, LlmJob
from sdk.errors import UnsupportedError


def convert(job: LlmJob) -> LlmConversion:
    raise UnsupportedError(
        f"text-generation export for {job.profile.id!r} (LiteRT) is not supported: litert-torch's generative API "
        "rebuilds models from its own per-family layer definitions and checkpoint mappings, not from a Hugging "
        "Face module. Use device='android' (ExecuTorch + XNNPACK, int4 via 8da4w) for an on-device LLM on Android.")
