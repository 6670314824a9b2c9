"""The capture coremltools reads (torch.export, with the TorchScript frontend as the fallback), and the dtypes of
the program's inputs and outputs.

coremltools' torch.export frontend is beta (its docs: about 70% of torch ops translated), its TorchScript frontend
the mature one. The capture is torch.export first, which refuses data-dependent control flow; ops the frontend
has no translation for are decomposed into core ATen ops it has (the attention masks of `transformers` use
`new_ones` and `__and__`, recurrent layers `aten.gru` / `aten.lstm`). A float program that the torch.export
frontend still cannot convert (a translation that fails, e.g. `max_pool2d` without an explicit stride) goes
through the TorchScript frontend: the model is traced (a copy: a trace may change the module), and a branch on
the data is refused as on every format (`driver.refuse_traced_branches`). Quantized recipes stay on
torch.export, whose debug handles map each weight to its torch layer.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from converters import driver
from converters.base import ConversionJob
from sdk.core.errors import first_line

CONVERT_STAGE = "coremltools.convert"
#: ops that return their input's values unchanged (views that only alias it), which torch has no decomposition
#: for and the frontend no translation of (`transformers`' `slice_logits_to_keep` leaves an `aten.alias` in GPT-2):
#: decomposed into that input
_IDENTITIES: dict[torch._ops.OpOverload, Callable[[torch.Tensor], torch.Tensor]] = {
    torch.ops.aten.alias.default: lambda x: x}


def _export(job: ConversionJob) -> torch.export.ExportedProgram:
    """Capture the model as ATen ops, the graph coremltools' torch.export frontend reads, with the ops it cannot
    translate decomposed (where torch has a decomposition for them, or `_IDENTITIES` removes them)."""
    with driver.stage("torch.export"):
        exported = torch.export.export(job.model, tuple(job.example_inputs)).run_decompositions({})
        table = torch.export.default_decompositions()
        table.update(_IDENTITIES)
        untranslated = {op: table[op] for op in _untranslated(exported) if op in table}
        if untranslated:
            exported = exported.run_decompositions(untranslated)
    for handle, node in enumerate(exported.graph.nodes):  # coremltools copies it onto each op it makes
        node.meta["debug_handle"] = handle
    return exported


def _untranslated(exported: torch.export.ExportedProgram) -> set[torch._ops.OpOverload]:
    """The graph's ATen ops that coremltools' torch frontend has no translation for."""
    # the registry's lookup (get_func) is what the frontend itself calls; coremltools exposes no public query
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    ops = {node.target for node in exported.graph.nodes if isinstance(node.target, torch._ops.OpOverload)}
    return {op for op in ops if _TORCH_OPS_REGISTRY.get_func(op.name()) is None}


def _convert(job: ConversionJob, exported: torch.export.ExportedProgram, **options: Any) -> tuple[Any, list[str]]:
    """The ML program from the exported graph, else (float recipes) from the traced model; and a note saying which.

    When both frontends fail, the torch.export frontend's error is raised (the TorchScript one is its context)."""
    import coremltools as ct

    with driver.stage(CONVERT_STAGE):
        try:
            return ct.convert(exported, **options), []
        except Exception as exc:
            if job.precision.quantizes:
                raise
            try:
                with driver.refuse_traced_branches(job) as traced_job:
                    traced = torch.jit.trace(traced_job.model, tuple(traced_job.example_inputs))
                mlmodel = ct.convert(traced, **options)
            except Exception:
                raise exc  # the TorchScript frontend's failure stays attached as its __context__
            return mlmodel, [f"converted through coremltools' TorchScript frontend: its torch.export frontend "
                             f"failed with {type(exc).__name__}: {first_line(exc)}"]


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
