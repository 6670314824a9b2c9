"""The torch -> ONNX exporters (torch.export-based from opset 18, TorchScript for 17), the opset a graph
declares, and writing the file.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import onnx
import torch

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
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # its deprecation is recorded in the notes instead
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(job.model, tuple(job.example_inputs), buffer, dynamo=False, opset_version=opset,
                          input_names=list(job.input_names), output_names=list(job.output_names),
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())


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
