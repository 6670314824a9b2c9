"""ONNX decoder for TensorRT devices (run here on the ONNX Runtime stand-in): the KV cache as inputs and outputs.

The static-cache graph (`StaticCacheDecoder`) is exported with `torch.export` at a dynamic prompt length; INT4
uses ONNX Runtime's `MatMulNBitsQuantizer` (block-wise symmetric weights in `com.microsoft.MatMulNBits`, the
op ORT's CPU/CUDA kernels run). TensorRT itself would take the QDQ form of the same quantizer; that path is
not exercised here because no TensorRT runs on this machine.
"""
from __future__ import annotations

import logging

import torch

from converters.llm.base import LlmConversion, LlmJob, group_size
from converters.llm.static_cache import StaticCacheDecoder
from sdk.core.errors import ConversionError
from sdk.core.results import QuantAccount

MODEL_FILE = "model.onnx"
OPSET = 21


def convert(job: LlmJob) -> LlmConversion:
    import onnx
    import onnxruntime

    decoder = StaticCacheDecoder(job.model, job.shape.max_seq_len).eval()
    cache = torch.zeros(job.shape.cache_shape())
    example = (torch.zeros((1, 4), dtype=torch.int64), torch.zeros(1, dtype=torch.int64), cache, cache.clone())
    steps = torch.export.Dim("T", min=1, max=job.shape.max_seq_len)
    fp32_path = job.scratch / MODEL_FILE
    try:
        with torch.no_grad():
            torch.onnx.export(decoder, example, str(fp32_path), input_names=["input_ids", "pos", "k_cache", "v_cache"],
                              output_names=["logits", "k_cache_out", "v_cache_out"], opset_version=OPSET,
                              dynamic_shapes={"input_ids": {1: steps}, "pos": None, "k_cache": None, "v_cache": None},
                              dynamo=True, external_data=False)
    except Exception as exc:  # the exporter raises many types; keep the cause
        raise ConversionError(str(exc).splitlines()[0], fmt="onnx", device=job.profile.id,
                              hint="check the model runs in fp32 with torch.export") from exc
    out = job.workdir / MODEL_FILE
    group = group_size(job)
    if group is None:
        fp32_path.replace(out)
        return LlmConversion(MODEL_FILE, QuantAccount(scheme="fp32", activations="float32",
                                                      toolchain=f"torch.onnx.export (dynamo, opset {OPSET})"))
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)  # a line a node
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), bits=4, block_size=group, is_symmetric=True,
                                     accuracy_level=4)  # 4: int8 activations in the CPU kernel's dot products
    quantizer.process()
    model = quantizer.model.model
    quantized = [node.name for node in model.graph.node if node.op_type == "MatMulNBits"]
    left = sum(node.op_type == "MatMul" for node in model.graph.node)
    if not quantized:
        raise ConversionError("MatMulNBitsQuantizer quantized no MatMul", fmt="onnx", device=job.profile.id,
                              hint="use recipe=['fp32']")
    onnx.save(model, str(out))
    # accuracy_level 4: the CPU kernel quantizes each activation block to int8 at run time for its dot products
    quant = QuantAccount(
        scheme=f"int4 symmetric, block {group} (MatMulNBits, RTN)", activations="int8-dynamic",
        toolchain=f"torch.onnx.export (dynamo) + onnxruntime {onnxruntime.__version__} MatMulNBitsQuantizer",
        quantized_layers=quantized, details={
            "matmuls_float_activation_x_activation": left,
            "activations": "int8 per block at run time in the CPU kernel (accuracy_level 4)",
            "embedding": "fp32", "calibration": "not used (round-to-nearest weights)"})
    return LlmConversion(MODEL_FILE, quant)
