"""The torch -> ONNX exporters (torch.export-based from opset 18, TorchScript for 17), the opset a graph
declares, and writing the file.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch.onnx import symbolic_helper, symbolic_opset11

from converters.base import ConversionJob

DEFAULT_OPSET = 17
#: lowest opset the torch.export-based exporter writes natively
DYNAMO_MIN_OPSET = 18
#: protobuf cannot serialise a message over 2 GiB: larger weights go to one external-data file
INLINE_LIMIT_BYTES = 2**31 - 1


def _export_dynamo(job: ConversionJob, opset: int) -> onnx.ModelProto:
    program = torch.onnx.export(job.model, tuple(job.example_inputs), dynamo=True, opset_version=opset,
                                input_names=list(job.input_names), output_names=list(job.output_names),
                                external_data=False, verbose=False)
    return program.model_proto


def _export_torchscript(job: ConversionJob, opset: int) -> onnx.ModelProto:
    for name, symbolic in (("aten::diff", _diff), ("aten::cumsum", _cumsum)):
        torch.onnx.register_custom_op_symbolic(name, symbolic, DEFAULT_OPSET)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # its deprecation is recorded in the notes instead
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(job.model, tuple(job.example_inputs), buffer, dynamo=False, opset_version=opset,
                          input_names=list(job.input_names), output_names=list(job.output_names),
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


@symbolic_helper.parse_args("v", "i", "i", "v", "v")
def _diff(g: Any, x: Any, n: int, dim: int, prepend: Any, append: Any) -> Any:
    """`torch.diff` for the TorchScript exporter, which has no translation for it: the slices x[1:] - x[:-1]
    along `dim`, `n` times, after concatenating `prepend` / `append`. Hugging Face's causal masks call it when
    no attention_mask is given (`find_packed_sequence_indices`), so GPT-2 called with token ids alone needs it."""
    parts = [t for t in (prepend, x, append) if not t.node().mustBeNone()]
    if len(parts) > 1:
        x = g.op("Concat", *parts, axis_i=dim)

    def const(value: int) -> Any:
        return g.op("Constant", value_t=torch.tensor([value]))

    for _ in range(n):
        x = g.op("Sub", g.op("Slice", x, const(1), const(2**63 - 1), const(dim)),
                 g.op("Slice", x, const(0), const(-1), const(dim)))
    return x


#: torch's cumsum of these returns int64; ONNX's CumSum takes none of them
_CUMSUM_AS_INT64 = {"Bool", "Byte", "Char", "Short"}


@symbolic_helper.parse_args("v", "i", "none")
def _cumsum(g: Any, x: Any, dim: int, dtype: Any = None) -> Any:
    """`torch.cumsum` for the TorchScript exporter, whose own writes CumSum on a bool tensor (invalid ONNX, as
    the same masks' `(position_diff != 1).cumsum(-1)` shows): a bool or small-integer input is cast to int64
    first, as torch computes it, then the exporter's own translation runs."""
    if x.type().scalarType() in _CUMSUM_AS_INT64:
        x = g.op("Cast", x, to_i=onnx.TensorProto.INT64)
    return symbolic_opset11.cumsum(g, x, dim, dtype)


def _save(model: onnx.ModelProto, path: Path) -> None:
    """One self-contained file, unless the weights exceed protobuf's 2 GiB limit."""
    weight_bytes = sum(t.ByteSize() for t in model.graph.initializer)
    if weight_bytes < INLINE_LIMIT_BYTES:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data")


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
