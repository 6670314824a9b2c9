"""What an LLM converter gets and gives back: one module per format implements `convert(job) -> LlmConversion`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from converters.llm.static_cache import DecoderShape
from sdk.devices import DeviceProfile
from sdk.core.errors import UnsupportedError
from sdk.core.recipes import Config, Int4Weight
from sdk.core.results import QuantAccount

__all__ = ["LlmConversion", "LlmJob", "group_size", "require_llama"]


@dataclass
class LlmJob:
    """A decoder to convert: the fp32 Hugging Face causal LM, its cache shape, the precision config, and token-id
    calibration prompts (1-D int64 arrays) for the toolchains that use data."""

    model: nn.Module
    shape: DecoderShape
    precision: Config
    calibration: list[np.ndarray]
    profile: DeviceProfile
    workdir: Path  # the bundle's staging folder: write the model file(s) here and nothing else
    scratch: Path  # a temporary folder for intermediates (checkpoints, un-quantized graphs)


@dataclass
class LlmConversion:
    """The staged model file and what it stores: `quantization` is the same typed account the other converters
    give (`scheme` the weights' form, `activations` how they run, `details` the toolchain's own method)."""

    model_file: str
    quantization: QuantAccount
    runtime_options: dict[str, Any] = field(default_factory=dict)

    @property
    def toolchain(self) -> str:
        return self.quantization.toolchain


def group_size(job: LlmJob) -> int | None:
    """The INT4 group size, or None for fp32."""
    return job.precision.group_size if isinstance(job.precision, Int4Weight) else None


def require_llama(job: LlmJob, fmt: str) -> None:
    """Refuse Hugging Face configs whose math the static-cache rewrite does not reproduce."""
    cfg = job.model.config
    problems = []
    if getattr(cfg, "model_type", None) not in ("llama",):
        problems.append(f"model_type {getattr(cfg, 'model_type', None)!r} (only 'llama' is supported)")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        problems.append("attention or MLP biases")
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope != "default":
        problems.append(f"rope_type {rope!r} (only the default RoPE is exported)")
    if problems:
        raise UnsupportedError(f"{fmt} LLM export for device {job.profile.id!r} cannot take this model: "
                               f"{'; '.join(problems)}. Export a Llama-architecture decoder (LlamaForCausalLM).")
