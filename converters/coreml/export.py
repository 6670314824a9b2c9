"""The torch.export capture coremltools reads, and the dtypes of the program's inputs and outputs."""
from __future__ import annotations

import numpy as np
import torch

from converters import driver
from converters.base import ConversionJob


def _export(job: ConversionJob) -> torch.export.ExportedProgram:
    """Capture the model as core ATen ops, the graph coremltools' torch.export frontend reads."""
    with driver.stage("torch.export"):
        exported = torch.export.export(job.model, tuple(job.example_inputs)).run_decompositions({})
    for handle, node in enumerate(exported.graph.nodes):  # coremltools copies it onto each op it makes
        node.meta["debug_handle"] = handle
    return exported


def _output_dtypes(exported: torch.export.ExportedProgram) -> list[torch.dtype]:
    """Dtypes of the model's own outputs (buffer mutations, if any, come first in the graph's output node)."""
    from torch.export.graph_signature import OutputKind

    nodes = exported.graph.output_node().args[0]
    return [node.meta["val"].dtype for node, spec in zip(nodes, exported.graph_signature.output_specs)
            if spec.kind == OutputKind.USER_OUTPUT]


def _io_dtype(dtype: torch.dtype) -> type | None:
    """Core ML feature dtype for a torch I/O tensor: floats keep their width, ints become int32 (no int64 features)."""
    if dtype.is_floating_point:
        return {torch.float32: np.float32, torch.float16: np.float16}.get(dtype)  # None: coremltools decides
    return None if dtype.is_complex or dtype == torch.bool else np.int32
