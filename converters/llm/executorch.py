"""ExecuTorch decoder through ExecuTorch's own LLM export (`export_llama`, the `export_llm` recipe).

The Hugging Face weights are renamed to the Meta Llama layout that ExecuTorch's `llama_transformer` loads
(`use_hf_rope` keeps HF's rotate-half RoPE, so no weight permutation), then `export_llama` builds it with a
static KV cache in mutable buffers, the custom SDPA-with-cache op, dynamic prompt length, torchao 8da4w
(8-bit dynamic activations, 4-bit group weights) and 4-bit embeddings, and lowers to XNNPACK.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging

import torch

from converters.llm.base import LlmConversion, LlmJob, group_size
from sdk.core.errors import ConversionError
from sdk.core.results import QuantAccount

MODEL_FILE = "model.pte"
_TOP = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight"}
_LAYER = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
          "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
          "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
          "post_attention_layernorm": "ffn_norm"}


def meta_checkpoint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """HF LlamaForCausalLM state dict -> the key names ExecuTorch's llama_transformer expects."""
    out = {}
    for key, value in model.model.state_dict().items():
        key = f"model.{key}"
        if key in _TOP:
            out[_TOP[key]] = value
        elif key.startswith("model.layers."):
            _, _, index, *rest, leaf = key.split(".")
            out[f"layers.{index}.{_LAYER['.'.join(rest)]}.{leaf}"] = value
    out["output.weight"] = model.lm_head.weight  # tied or not, the output layer has its own name there
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def convert(job: LlmJob) -> LlmConversion:
    from executorch.examples.models.llama.export_llama_lib import export_llama
    from executorch.extension.llm.export.config.llm_config import LlmConfig
    from executorch.version import __version__

    s, cfg = job.shape, job.model.config
    torch.save(meta_checkpoint(job.model), job.scratch / "checkpoint.pth")
    params = {"dim": s.hidden_size, "n_layers": s.n_layers, "n_heads": s.n_heads, "n_kv_heads": s.n_kv_heads,
              "head_dim": s.head_dim, "vocab_size": s.vocab_size, "hidden_dim": cfg.intermediate_size,
              "norm_eps": cfg.rms_norm_eps, "rope_theta": float(cfg.rope_parameters["rope_theta"]),
              "use_hf_rope": True}
    (job.scratch / "params.json").write_text(json.dumps(params))
    config = LlmConfig()
    config.base.checkpoint = str(job.scratch / "checkpoint.pth")
    config.base.params = str(job.scratch / "params.json")
    config.base.metadata = json.dumps({"get_bos_id": s.bos_id if s.bos_id is not None else 0,
                                       "get_eos_ids": list(s.eos_ids)})
    config.model.use_kv_cache = True
    config.model.use_sdpa_with_kv_cache = True
    config.model.enable_dynamic_shape = True
    config.export.max_seq_length = s.max_seq_len
    config.export.max_context_length = s.max_seq_len
    config.export.output_dir = str(job.scratch)
    config.export.output_name = str(job.scratch / MODEL_FILE)  # a name ending in .pte is used as the path
    config.backend.xnnpack.enabled = True
    group = group_size(job)
    if group is not None:
        config.quantization.qmode = "8da4w"
        config.quantization.group_size = group
        config.quantization.embedding_quantize = f"4,{group}"
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet("executorch", "root", "torchao"):
            export_llama(config)
    except Exception as exc:  # export_llama raises whatever torch.export / lowering raise
        raise ConversionError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, fmt="executorch",
                              device=job.profile.id, hint="try recipe=['fp32'] or a smaller max_seq_len") from exc
    (job.scratch / MODEL_FILE).replace(job.workdir / MODEL_FILE)
    toolchain = (f"executorch {__version__.split('+')[0]} export_llama (static KV cache, custom SDPA, XNNPACK"
                 + (", torchao 8da4w)" if group else ")"))
    if group is None:
        quant = QuantAccount(scheme="fp32", activations="float32", toolchain=toolchain)
    else:
        quant = QuantAccount(scheme=f"int4 symmetric, group {group} (torchao 8da4w)", activations="int8-dynamic",
                             toolchain=toolchain, details={
                                 "activations": "int8 dynamic per token", "embedding": f"int4, group {group}",
                                 "calibration": "not used (8da4w is weight-only scale search)"})
    return LlmConversion(MODEL_FILE, quant, {"partitioner": "xnnpack", "custom_sdpa": True})


@contextlib.contextmanager
def _quiet(*names: str):
    """export_llama logs every pass at INFO on the root logger; keep the user's console readable."""
    loggers = [logging.getLogger(n if n != "root" else None) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
