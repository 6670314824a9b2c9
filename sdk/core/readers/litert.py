"""Open a .tflite file with the installed LiteRT interpreter and read how much of it the XNNPACK delegate took.

torch-free: the LiteRT converter measures coverage with these on the export host, and the backend runs
bundles with them on the device.
"""
from __future__ import annotations

import importlib
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["delegation", "interpreter_module", "open_interpreter"]

#: Python packages that provide a LiteRT interpreter, in order of preference.
_RUNTIMES = ("ai_edge_litert", "tflite_runtime")


def interpreter_module() -> tuple[ModuleType, str]:
    """The first installed interpreter module and a 'package version' label for it."""
    for name in _RUNTIMES:
        try:
            module = importlib.import_module(f"{name}.interpreter")
        except ImportError:
            continue
        return module, f"{name} {getattr(importlib.import_module(name), '__version__', '?')}"
    raise ImportError("neither ai_edge_litert nor tflite_runtime is installed")


def open_interpreter(model_path: str | Path, num_threads: int) -> tuple[Any, str]:
    """A LiteRT interpreter for `model_path` with default delegates (XNNPACK) applied, and its runtime label."""
    module, label = interpreter_module()
    interpreter = module.Interpreter(model_path=str(model_path), num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter, label


def delegation(interpreter: Any) -> dict[str, Any]:
    """How many of the model's ops a delegate (XNNPACK by default) took, from the interpreter's node list.

    After delegation the node list holds the model's ops followed by one DELEGATE node per partition; a
    partition's ops are those reached walking back from its outputs to its inputs.
    """
    nodes = interpreter._get_ops_details()  # the only Python view of delegation; stable since TF 2.5
    ops = [n for n in nodes if n["op_name"] != "DELEGATE"]
    producer = {int(t): n["index"] for n in ops for t in n["outputs"]}
    delegated: set[int] = set()
    for node in (n for n in nodes if n["op_name"] == "DELEGATE"):
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            index = producer.get(tensor)
            if tensor in boundary or index is None or index in delegated:
                continue
            delegated.add(index)
            stack.extend(int(t) for t in nodes[index]["inputs"] if t >= 0)
    return {
        "ops": len(ops),
        "delegated_ops": len(delegated),
        "op_types": dict(Counter(n["op_name"] for n in ops)),
        "not_delegated": dict(Counter(n["op_name"] for n in ops if n["index"] not in delegated)),
    }
