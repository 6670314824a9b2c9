"""Core ML decoder: a stateful ML Program (iOS 18) whose KV cache is two `ct.StateType` states, 4-bit weights.

`BufferCacheDecoder` keeps the cache in buffers written in place by slice assignment; coremltools turns them
into states (`read_state`/`coreml_update_state`). INT4 is `linear_quantize_weights` per block (iOS 18's
`constexpr_blockwise_shift_scale`). Core ML runs only on macOS, so here the package is converted and its spec
checked (`check_spec`); no tokens are generated.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from converters.llm.base import LlmConversion, LlmJob, group_size
from converters.llm.static_cache import BufferCacheDecoder
from sdk.core.errors import ConversionError
from sdk.core.results import QuantAccount

MODEL_FILE = "model.mlpackage"
STATES = ("k_cache", "v_cache")


def convert(job: LlmJob) -> LlmConversion:
    import coremltools as ct

    s = job.shape
    decoder = BufferCacheDecoder(job.model, s.max_seq_len).eval()
    example = (torch.zeros((1, 2), dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    try:
        with torch.no_grad():
            traced = torch.jit.trace(decoder, example)
            model = ct.convert(
                traced,
                inputs=[ct.TensorType(name="input_ids", shape=(1, ct.RangeDim(1, s.max_seq_len)), dtype=np.int32),
                        ct.TensorType(name="pos", shape=(1,), dtype=np.int32)],
                outputs=[ct.TensorType(name="logits", dtype=np.float32)],
                states=[ct.StateType(wrapped_type=ct.TensorType(shape=s.cache_shape(), dtype=np.float16), name=n)
                        for n in STATES],
                minimum_deployment_target=ct.target.iOS18, skip_model_load=True)
    except Exception as exc:  # coremltools raises ValueError/RuntimeError/NotImplementedError per op
        raise ConversionError(str(exc).splitlines()[0], fmt="coreml", device=job.profile.id) from exc
    group = group_size(job)
    scheme, details = "fp16", {}
    if group is not None:
        config = ct.optimize.coreml.OptimizationConfig(global_config=ct.optimize.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=group))
        model = ct.optimize.coreml.linear_quantize_weights(model, config)
        scheme = f"int4 symmetric, block {group} (coremltools linear_quantize_weights)"
        details = {"calibration": "not used (weight-only)"}
    model.save(str(job.workdir / MODEL_FILE))
    check_spec(model.get_spec(), int4=group is not None)
    quant = QuantAccount(scheme=scheme, activations="float16", toolchain=f"coremltools {ct.__version__} (stateful, "
                         "iOS18)", details=details)
    return LlmConversion(MODEL_FILE, quant, {"states": list(STATES), "ran_here": False})


def check_spec(spec: Any, *, int4: bool) -> dict[str, Any]:
    """The package must declare both cache states, target iOS 18 (spec >= 9) and, for INT4, hold 4-bit weights."""
    states = [st.name for st in spec.description.state]
    ops = _op_types(spec)
    problems = []
    if sorted(states) != sorted(STATES):
        problems.append(f"states {states}, expected {list(STATES)}")
    if spec.specificationVersion < 9:
        problems.append(f"specification version {spec.specificationVersion} < 9 (iOS 18)")
    if int4 and "constexpr_blockwise_shift_scale" not in ops:
        problems.append("no constexpr_blockwise_shift_scale op: the weights are not block-quantized")
    if problems:
        raise ConversionError("; ".join(problems), fmt="coreml", device="?")
    return {"states": states, "spec_version": spec.specificationVersion,
            "int4_weight_ops": sum(1 for op in ops if op == "constexpr_blockwise_shift_scale")}


def _op_types(spec: Any) -> list[str]:
    main = spec.mlProgram.functions["main"]
    block = main.block_specializations[main.opset]
    return [op.type for op in block.operations]
