"""OpenVINO decoder: a stateful IR (the KV cache is model state) with NNCF INT4 weight compression.

The static-cache graph is converted with `ov.convert_model`, its cache input/output pairs turned into states
by OpenVINO's `MakeStateful` transformation (what optimum-intel does for its LLM exports), then
`nncf.compress_weights(INT4_SYM, group_size, ratio=1.0)` with data-aware AWQ and scale estimation on the
calibration prompts (data-free if none were given). NNCF keeps the embedding and the output layer in INT8.
"""
from __future__ import annotations

import numpy as np
import torch

from converters.llm.base import LlmConversion, LlmJob, group_size
from converters.llm.static_cache import StaticCacheDecoder
from sdk.core.errors import ConversionError
from sdk.core.results import QuantAccount

MODEL_FILE = "model.xml"
STATES = {"k_cache": "k_cache_out", "v_cache": "v_cache_out"}


def convert(job: LlmJob) -> LlmConversion:
    import nncf
    import openvino as ov
    from openvino._offline_transformations import apply_make_stateful_transformation

    decoder = StaticCacheDecoder(job.model, job.shape.max_seq_len).eval()
    cache = list(job.shape.cache_shape())
    example = (torch.zeros((1, 4), dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.zeros(cache),
               torch.zeros(cache))
    try:
        with torch.no_grad():
            model = ov.convert_model(decoder, example_input=example, input=[
                ("input_ids", [1, -1], ov.Type.i64), ("pos", [1], ov.Type.i64),
                ("k_cache", cache, ov.Type.f32), ("v_cache", cache, ov.Type.f32)])
    except Exception as exc:  # OpenVINO's frontend raises plain RuntimeErrors and OpConversionFailure
        raise ConversionError(str(exc).splitlines()[0], fmt="openvino", device=job.profile.id) from exc
    for output, name in zip(model.outputs, ("logits", *STATES.values())):
        output.get_tensor().set_names({name})
    apply_make_stateful_transformation(model, STATES)
    group = group_size(job)
    scheme, details = "fp32", {}
    if group is not None:
        data = [{"input_ids": ids.reshape(1, -1).astype(np.int64), "pos": np.zeros(1, np.int64)}
                for ids in job.calibration]
        kwargs = {"mode": nncf.CompressWeightsMode.INT4_SYM, "group_size": group, "ratio": 1.0}
        if data:
            model = nncf.compress_weights(model, dataset=nncf.Dataset(data), awq=True, scale_estimation=True,
                                          subset_size=len(data), **kwargs)
            how = f"data-aware AWQ + scale estimation on {len(data)} calibration prompts"
        else:
            model = nncf.compress_weights(model, **kwargs)
            how = "data-free (no calibration prompts given)"
        scheme = f"int4 symmetric, group {group} (NNCF INT4_SYM, ratio 1.0)"
        details = {"method": how, "embedding_and_output": "int8 asymmetric per channel (NNCF's backup precision)"}
    ov.save_model(model, str(job.workdir / MODEL_FILE), compress_to_fp16=False)
    toolchain = f"openvino {ov.__version__} convert_model + MakeStateful" + (
        f" + NNCF {nncf.__version__} compress_weights" if group is not None else "")
    quant = QuantAccount(scheme=scheme, activations="float32", toolchain=toolchain, details=details)
    return LlmConversion(MODEL_FILE, quant, {"states": list(STATES)})
