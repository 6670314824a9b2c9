"""Delegation coverage: how many graph nodes the delegate took, per ExecuTorch's `get_delegation_info`, and the
reasons XNNPACK's partitioner logs for the nodes it refused.
"""
from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from executorch.devtools.backend_debug import get_delegation_info
from executorch.exir import EdgeProgramManager
from executorch.exir.lowered_backend_module import get_lowered_backend_modules

from sdk.core.results import Coverage

#: XNNPACK's partitioner configs log each node they refuse, with the reason, at DEBUG under this logger
_XNNPACK_LOGGER = "executorch.backends.xnnpack.partition"
_WHY = re.compile(r"WhyNoPartition: Node (\w+) was not partitioned because (.*?)\.?$", re.DOTALL)


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


def _coverage(edge: EdgeProgramManager, reasons: dict[str, str]) -> Coverage:
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
    return Coverage(
        delegate=", ".join(sorted({m.backend_id for m in get_lowered_backend_modules(graph_module)})) or "none",
        unit="nodes", total=total, delegated=delegated, not_delegated=left_out,
        reasons={op: reasons.get(op, "no partitioner config takes this op") for op in left_out},
        details={"delegated_subgraphs": info.num_delegated_subgraphs})
