"""`sdk.export(..., task="text-generation")`: a causal LM in, an LLM bundle with a static KV cache out.

Flow: check the model and recipe -> tokenize calibration/held-out text -> the format's converter writes the model
into the bundle's staging folder -> manifest (with `llm`: the numbers the device loop needs) and a reference
(a prompt and the fp32 model's greedy continuation) -> where the runtime runs here, quality (agreement and
perplexity vs fp32) and a generation benchmark through the device-side loop -> report.json -> commit.
"""
from __future__ import annotations

import importlib
import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.llm.base import LlmConversion, LlmJob
from sdk.llm.quality import measure_quality
from converters.llm.static_cache import DecoderShape, decoder_shape
from sdk import recipes
from sdk.core.bundle import Artifact, BundleWriter, load_artifact
from sdk.core.results import to_dict
from sdk.devices import DeviceProfile
from sdk.core.errors import (
    ConversionError,
    InvalidInputsError,
    ParityError,
    RuntimeUnavailableError,
    SdkError,
    UnsupportedRecipeError,
    UserInputError,
)
from sdk.version import __version__

__all__ = ["BENCH_NEW_TOKENS", "FORMATS", "export_llm"]

log = logging.getLogger("sdk")
#: format -> module with `convert(LlmJob) -> LlmConversion`
FORMATS = {"executorch": "converters.llm.executorch", "openvino": "converters.llm.openvino",
           "onnx": "converters.llm.onnx", "coreml": "converters.llm.coreml", "litert": "converters.llm.litert"}
PRECISIONS = ("fp32", "int4")
BENCH_NEW_TOKENS = 32
MAX_TEXTS = 64


def export_llm(model: torch.nn.Module, profile: DeviceProfile, *, recipe: Any, calibration: Iterable[Any] | None,
               eval_data: Iterable[Any] | None, max_seq_len: int, output_dir: str | Path, validate: bool,
               tokenizer: Any = None) -> tuple[Artifact, dict[str, Any]]:
    started = time.perf_counter()
    _check_model(model, max_seq_len)
    if recipe is None:  # profiles' default recipes are for single-call graphs (e.g. fp16 on TensorRT)
        recipe = next((p for p in PRECISIONS if p in profile.precisions), "fp32")
    plan = recipes.resolve(profile, recipe)
    if plan.passes or plan.precision.name not in PRECISIONS or profile.format not in FORMATS:
        bad = plan.passes[0] if plan.passes else plan.precision
        raise UnsupportedRecipeError(bad.to_string(), f"{profile.format} text-generation", profile.id,
                                     [p for p in PRECISIONS if p in profile.precisions])
    if not isinstance(validate, bool):
        raise UserInputError("text-generation exports validate on this machine (validate=True) or not at all "
                             "(False); to measure on a device, run agent.generate / `edge-sdk bench` on the bundle")
    model = model.eval().float()
    shape = decoder_shape(model, max_seq_len)
    texts = _token_texts(calibration, tokenizer, shape, "calibration")
    heldout = _token_texts(eval_data, tokenizer, shape, "eval_data") if eval_data is not None else None
    if heldout is None and len(texts) >= 2:
        split = max(1, len(texts) // 5)
        texts, heldout = texts[:-split], texts[-split:]
    with BundleWriter(output_dir, profile.id) as writer, tempfile.TemporaryDirectory(prefix="edge-sdk-llm-") as tmp:
        job = LlmJob(model=model, shape=shape, precision=plan.precision, calibration=texts, profile=profile,
                     workdir=writer.staging, scratch=Path(tmp))
        log.info("exporting a %d-layer decoder for %s (%s, %s)", shape.n_layers, profile.id, profile.format,
                 plan.precision)
        t0 = time.perf_counter()
        conversion = _convert(job)
        convert_s = time.perf_counter() - t0
        prompt = (heldout or texts or [np.array([shape.bos_id or 0], np.int64)])[0]
        prompt = prompt[: max(1, min(prompt.size // 2, max_seq_len // 2))]
        greedy = _fp32_greedy(model, prompt, min(BENCH_NEW_TOKENS, max_seq_len - prompt.size))
        writer.write_reference([prompt.reshape(1, -1)], [greedy.reshape(1, -1)])
        manifest = writer.write_manifest(
            device=profile.id, fmt=profile.format, runtime=profile.runtime, model_file=conversion.model_file,
            inputs=[prompt.reshape(1, -1)], outputs=[greedy.reshape(1, -1)], recipe=plan.to_strings(),
            runtime_options=conversion.runtime_options,
            extra={"task": "text-generation", "llm": _llm_meta(shape)})
        t0 = time.perf_counter()
        llm = _measure(writer.staging, model, heldout, validate, max_seq_len)
        params = sum(p.numel() for p in model.parameters())
        artifact = load_artifact(writer.staging)
        report = {
            "sdk_version": __version__, "task": "text-generation", "device": profile.id, "device_name": profile.name,
            "format": profile.format, "runtime": profile.runtime, "recipe": plan.to_strings(),
            "toolchain": conversion.toolchain, "quantization": to_dict(conversion.quantization),
            "model": {"params": params, "n_layers": shape.n_layers, "hidden_size": shape.hidden_size,
                      "vocab_size": shape.vocab_size, "max_seq_len": max_seq_len},
            "artifact": {"model_file": manifest["model_file"], "size_bytes": artifact.size_bytes,
                         "size_vs_fp32_params": round(artifact.size_bytes / (params * 4), 4)},
            "llm": llm,
            "timings_s": {"convert_s": round(convert_s, 3), "validate_s": round(time.perf_counter() - t0, 3),
                          "total_s": round(time.perf_counter() - started, 3)},
        }
        writer.write_report(report)
        final = writer.commit()
    return load_artifact(final), report


def _check_model(model: Any, max_seq_len: Any) -> None:
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "config") or not hasattr(model, "lm_head"):
        raise InvalidInputsError(f"task='text-generation' takes a Hugging Face causal LM (e.g. LlamaForCausalLM), "
                                 f"got {type(model).__name__}")
    if not isinstance(max_seq_len, int) or isinstance(max_seq_len, bool) or max_seq_len < 8:
        raise InvalidInputsError(f"max_seq_len (the KV cache length) must be an int >= 8, got {max_seq_len!r}")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and max_seq_len > limit:
        raise InvalidInputsError(f"max_seq_len={max_seq_len} exceeds the model's max_position_embeddings={limit}")


def _token_texts(items: Iterable[Any] | None, tokenizer: Any, shape: DecoderShape, what: str) -> list[np.ndarray]:
    """Strings (with `tokenizer`) or token-id sequences -> 1-D int64 arrays, cut to the cache length."""
    if items is None:
        return []
    if isinstance(items, str) or (isinstance(items, (torch.Tensor, np.ndarray)) and np.ndim(items) == 1):
        items = [items]
    out = []
    for i, item in enumerate(items):
        if len(out) >= MAX_TEXTS:
            break
        if isinstance(item, str):
            if tokenizer is None:
                raise InvalidInputsError(f"{what} item {i} is text: pass tokenizer=... (a Hugging Face tokenizer) or "
                                         "give token-id lists")
            item = tokenizer(item)["input_ids"]
        ids = np.asarray(item.detach().cpu() if isinstance(item, torch.Tensor) else item).reshape(-1)
        if ids.size < 2 or not np.issubdtype(ids.dtype, np.integer):
            raise InvalidInputsError(f"{what} item {i} must be 2+ integer token ids, got {ids.size} of {ids.dtype}")
        if ids.min() < 0 or ids.max() >= shape.vocab_size:
            raise InvalidInputsError(f"{what} item {i} has token ids outside [0, {shape.vocab_size})")
        out.append(ids[: shape.max_seq_len].astype(np.int64))
    return out


def _convert(job: LlmJob) -> LlmConversion:
    module = importlib.import_module(FORMATS[job.profile.format])
    try:
        return module.convert(job)
    except SdkError:
        raise
    except Exception as exc:  # a toolchain failure the converter did not classify
        raise ConversionError(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                              fmt=job.profile.format, device=job.profile.id) from exc


def _fp32_greedy(model: torch.nn.Module, prompt: np.ndarray, n: int) -> np.ndarray:
    ids = torch.from_numpy(prompt).reshape(1, -1)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, prompt.size:].numpy().astype(np.int64)


def _llm_meta(shape: DecoderShape) -> dict[str, Any]:
    return {"n_layers": shape.n_layers, "n_heads": shape.n_heads, "n_kv_heads": shape.n_kv_heads,
            "head_dim": shape.head_dim, "vocab_size": shape.vocab_size, "max_seq_len": shape.max_seq_len,
            "eos_ids": list(shape.eos_ids), "bos_id": shape.bos_id}


def _measure(bundle: Path, model: torch.nn.Module, heldout: Sequence[np.ndarray] | None, validate: bool,
             max_seq_len: int) -> dict[str, Any]:
    """Quality and a generation benchmark through the device-side loop, where the runtime runs here."""
    if not validate:
        return {"ran": False, "reason": "validate=False: not run"}
    from sdk.agent import generate as gen

    manifest = load_artifact(bundle).manifest
    try:
        decoder, _ = gen.open_decoder(bundle)
    except RuntimeUnavailableError as exc:
        return {"ran": False, "reason": f"{exc} ({manifest['format']} is checked at conversion only)"}
    result: dict[str, Any] = {"ran": True, "ran_on": decoder.ran_on}
    if heldout:
        quality = measure_quality(model, decoder, heldout)
        if not all(np.isfinite([quality.perplexity_artifact, quality.perplexity_fp32])):
            raise ParityError(f"{manifest['device']}: the artifact's perplexity is {quality.perplexity_artifact} "
                              f"(fp32: {quality.perplexity_fp32}) on held-out tokens: it produces NaN/Inf. No bundle "
                              "was written. Try recipe=['fp32'].", quality.to_dict())
        result["quality"] = quality.to_dict()
    else:
        result["quality"] = None
        result["quality_reason"] = "no held-out tokens: pass eval_data= or 2+ calibration texts"
    prompt_len = max(1, min(64, max_seq_len - BENCH_NEW_TOKENS) // 2)
    del decoder
    bench = gen.benchmark(bundle, prompt_lens=(prompt_len, 2 * prompt_len), new_tokens=BENCH_NEW_TOKENS)
    result.update(bench.to_dict())
    return result
