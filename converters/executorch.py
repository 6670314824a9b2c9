"""ExecuTorch converter: torch -> `.pte` program whose supported subgraphs are lowered to the XNNPACK delegate.

The flow is two steps so that a quantizer slots in between: `_export_program` (torch.export, ExportedProgram out)
then `_lower` (`to_edge_transform_and_lower` with the profile's partitioner). A PT2E quantize step takes and
returns an ExportedProgram, so it goes between them without touching either.

fp16: XNNPACK has no "run in fp16" switch; it computes in float16 when the graph's tensors are float16. So the
model is cast with `.half()` and wrapped to cast its float inputs to fp16 and its fp16 outputs back to fp32: the
program's I/O stays float32 (the bundle's contract) and the two boundary casts run as ExecuTorch portable kernels
(XNNPACK does not take dtype conversions). BatchNorm after a conv or linear is folded into it by XNNPACK's
FuseBatchNormPass during lowering, in fp32 and fp16 alike.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.utils._pytree as pytree
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.devtools.backend_debug import get_delegation_info
from executorch.exir import EdgeProgramManager, to_edge_transform_and_lower
from executorch.exir.lowered_backend_module import get_lowered_backend_modules
from executorch.version import __version__ as EXECUTORCH_VERSION
from torch.export import ExportedProgram
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from converters import register
from converters.base import ConversionJob, ConversionResult, Converter
from sdk.errors import ConversionError, ProfileError, UnsupportedRecipeError

MODEL_FILE = "model.pte"
PARTITIONERS: dict[str, Callable[[], Any]] = {"xnnpack": XnnpackPartitioner}
#: where the toolchain names the op it failed on: edge verifier ("Operator aten.x.default is not in Core ATen",
#: "<EdgeOpOverload: aten.x.default>"), an fx pass ("While executing %n : ... target=...aten.x.default"),
#: to_executorch ("Missing out variants: {'aten::x'}")
_OP_PATTERNS = (
    re.compile(r"Operator (?:torch\._ops\.)?(\w+\.\w+\.\w+) is not in Core ATen"),
    re.compile(r"<EdgeOpOverload: (\w+\.\w+\.\w+)>"),
    re.compile(r"While executing %\S+ : .*?target=\S*?(aten\.\w+\.\w+)"),
    re.compile(r"Missing out variants: \{'([\w:.]+)'"),
)
#: XNNPACK's partitioner configs log each node they refuse, with the reason, at DEBUG under this logger
_XNNPACK_LOGGER = "executorch.backends.xnnpack.partition"
_WHY = re.compile(r"WhyNoPartition: Node (\w+) was not partitioned because (.*?)\.?$", re.DOTALL)
_OTHER_TARGETS = ("or export for a device whose toolchain handles it, e.g. 'android-litert' (LiteRT) "
                  "or 'intel-cpu' (OpenVINO)")


_FP16 = {
    "method": "model cast to float16 (torch .half()) before export; XNNPACK runs its fp16 kernels",
    "weights": "float16",
    "activations": "float16 inside XNNPACK; float32 inputs and outputs, cast at the program boundary",
}


class _Fp16Program(torch.nn.Module):
    """A float16 copy of `model` between float32 inputs and float32 outputs (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half().eval()

    def forward(self, *inputs: torch.Tensor) -> Any:
        halves = [x.half() if x.is_floating_point() else x for x in inputs]
        return pytree.tree_map_only(torch.Tensor, _to_fp32, self.model(*halves))


def _to_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype == torch.float16 else t


def _failed_op(message: str) -> str | None:
    for pattern in _OP_PATTERNS:
        found = pattern.search(message)
        if found:
            return found.group(1)
    return None


def _conversion_error(stage: str, exc: Exception, job: ConversionJob) -> ConversionError:
    """The toolchain's exception as a ConversionError naming the op (when it says which) and what to try."""
    text = str(exc)
    op = _failed_op(text)
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")[:300].rstrip(' ."')
    if isinstance(exc, GuardOnDataDependentSymNode):
        hint = ("the model branches in Python on a tensor's value, which torch.export cannot trace: use torch.where "
                "or torch.cond instead, or move the branch out of the model")
    elif "not in Core ATen" in text:
        hint = f"ExecuTorch has no kernel for {op}: rewrite it with core ATen ops, {_OTHER_TARGETS}"
    else:
        hint = f"rewrite {op or 'the failing code'} with common tensor ops, {_OTHER_TARGETS}"
    return ConversionError(f"{stage} failed with {type(exc).__name__}: {first}", fmt="executorch",
                           device=job.profile.id, op=op, hint=hint)


class _RefusalLog(logging.Handler):
    """Collects the partitioner's "why this node was not partitioned" messages, first reason per op type."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        found = _WHY.match(record.getMessage())
        if found:
            self.reasons.setdefault(_op_type(found.group(1)), found.group(2))


def _op_type(node_name: str) -> str:
    """`aten_mean_dim_1` -> `aten_mean_dim`, as `get_delegation_info` names op types."""
    return re.sub(r"_\d+$", "", node_name)


@contextlib.contextmanager
def _refusals() -> Iterator[_RefusalLog]:
    """Capture XNNPACK's refusal reasons during lowering without printing its debug log."""
    logger = logging.getLogger(_XNNPACK_LOGGER)
    handler, saved = _RefusalLog(), (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _coverage(edge: EdgeProgramManager, reasons: dict[str, str]) -> dict[str, Any]:
    """How many graph nodes the delegate took, per ExecuTorch's own `get_delegation_info`, and why not the rest.

    `getitem` nodes are left out: they unpack tuples (a delegate's outputs, a multi-output op) and run no kernel,
    as in ExecuTorch's `get_non_lowered_nodes`. Delegated counts are the ops as partitioned, before XNNPACK fuses
    them (a folded BatchNorm counts as one delegated node). Call it before `to_executorch`, which rewrites the
    graph in place (out-variant ops, `alloc` nodes).
    """
    graph_module = edge.exported_program().graph_module
    info = get_delegation_info(graph_module)
    ops = {op: b for op, b in info.delegation_by_operator.items() if op != "getitem"}
    delegated = sum(b.delegated for b in ops.values())
    total = delegated + sum(b.non_delegated for b in ops.values())
    left_out = {op: b.non_delegated for op, b in sorted(ops.items()) if b.non_delegated}
    return {
        "delegated_nodes": delegated,
        "non_delegated_nodes": total - delegated,
        "delegated_fraction": round(delegated / total, 4) if total else 1.0,
        "non_delegated_ops": left_out,
        "non_delegated_reasons": {op: reasons.get(op, "no partitioner config takes this op") for op in left_out},
        "delegates": sorted({m.backend_id for m in get_lowered_backend_modules(graph_module)}),
        "delegated_subgraphs": info.num_delegated_subgraphs,
    }


@register
class ExecuTorchConverter(Converter):
    """torch.export -> XNNPACK-lowered edge program -> `.pte`, run by the ExecuTorch runtime on the device."""

    format = "executorch"
    supported = frozenset({"fp32", "fp16"})
    options: ClassVar[dict[str, str]] = {
        "partitioner": f"the delegate supported subgraphs are lowered to: {', '.join(PARTITIONERS)} (default xnnpack)",
    }

    def convert(self, job: ConversionJob) -> ConversionResult:
        if job.precision.name not in self.supported:
            raise UnsupportedRecipeError(job.precision.to_string(), self.format, job.profile.id, sorted(self.supported))
        exported = self._export_program(job)
        edge, reasons = self._lower(job, exported)
        coverage = _coverage(edge, reasons)
        try:
            program = edge.to_executorch()
        except Exception as exc:
            raise _conversion_error("to_executorch", exc, job) from exc
        (Path(job.workdir) / MODEL_FILE).write_bytes(program.buffer)
        note = (f"exported with executorch {EXECUTORCH_VERSION}; the program's inputs and outputs keep the model's "
                "dtypes (float32 for a float model, in fp16 too)")
        quantization = _FP16 if job.precision.name == "fp16" else None
        return ConversionResult(MODEL_FILE, coverage=coverage, quantization=quantization, notes=[note])

    def _export_program(self, job: ConversionJob) -> ExportedProgram:
        """torch.export of the model at this job's float precision (fp32 as is, fp16 via `_Fp16Program`)."""
        model = _Fp16Program(job.model) if job.precision.name == "fp16" else job.model
        try:
            with torch.no_grad():
                return torch.export.export(model, tuple(job.example_inputs))
        except Exception as exc:
            raise _conversion_error("torch.export", exc, job) from exc

    def _lower(self, job: ConversionJob, exported: ExportedProgram) -> tuple[EdgeProgramManager, dict[str, str]]:
        """Edge dialect, with the subgraphs the profile's partitioner supports lowered to its delegate, and the
        partitioner's reasons for the op types it refused."""
        name = job.profile.converter.get("partitioner", "xnnpack")
        if name not in PARTITIONERS:
            raise ProfileError(f"device profile {job.profile.id!r}: [converter] partitioner = {name!r} is not one of "
                               f"{', '.join(PARTITIONERS)}")
        try:
            with _refusals() as log:
                edge = to_edge_transform_and_lower(exported, partitioner=[PARTITIONERS[name]()])
            return edge, log.reasons
        except Exception as exc:
            raise _conversion_error("lowering to the edge dialect", exc, job) from exc
