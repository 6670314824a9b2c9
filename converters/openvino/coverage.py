"""Op coverage (which compute ops the target device's plugin accepts) and the op OpenVINO's errors name."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import openvino as ov

from sdk.core.results import Coverage, Unavailable

_NOT_COMPUTE = {"Parameter", "Constant", "Result"}


def _coverage(path: Path, device: str) -> Coverage | Unavailable:
    """Which compute ops the target device's plugin accepts (`Core.query_model`), if that device is here."""
    core = ov.Core()
    available = core.available_devices
    if not any(d.split(".")[0] == device for d in available):
        return Unavailable(f"no {device} on this host (OpenVINO sees: {', '.join(available) or 'nothing'}); "
                           f"op coverage needs the {device} plugin and its device, so it is measured on the target")
    model = core.read_model(str(path))
    placed = core.query_model(model, device)
    ops = _compute_ops(model)
    unsupported = [op for op in ops if placed.get(op.get_friendly_name(), "").split(".")[0] != device]
    return Coverage(delegate=f"OpenVINO {device} plugin", unit="ops", total=len(ops),
                    delegated=len(ops) - len(unsupported),
                    not_delegated=dict(Counter(op.get_type_name() for op in unsupported)),
                    reasons={op.get_type_name(): f"Core.query_model places it on no {device} kernel"
                             for op in unsupported},
                    details={"unsupported_ops": [op.get_friendly_name() for op in unsupported]})


def _compute_ops(model: ov.Model) -> list[ov.Node]:
    """Ops that compute on inputs; weight storage (fp16/int8/int4 decompression: ops on constants only) is not."""
    constant: set[str] = set()
    ops = []
    for op in model.get_ordered_ops():
        sources = [op.input_value(i).get_node().get_name() for i in range(op.get_input_size())]
        if op.get_type_name() == "Constant" or (sources and all(s in constant for s in sources)):
            constant.add(op.get_name())
        elif op.get_type_name() not in _NOT_COMPUTE:
            ops.append(op)
    return ops


#: OpenVINO's shape inference refusing an op's arguments: the node (its name carries the aten op when the
#: frontend's normalize step validates it), then the reason on the next line
_VALIDATION = re.compile(r"While validating node '([^\n]*)' with friendly_name '[^']*':\n([^\n]+)")


def _failed_op(message: str) -> tuple[str | None, str]:
    """The op named by OpenVINO's 'Model wasn't fully converted' summary (or by the node its shape inference
    refused), and why, if it names one."""
    validation = _VALIDATION.search(message)
    rejected = (f"OpenVINO's shape inference refused its arguments: {validation.group(2).strip().rstrip('.')}"
                if validation else None)
    for pattern, why in ((r"No conversion rule found for operations: ([^\n]+)",
                          "OpenVINO's PyTorch frontend has no conversion rule for it"),
                         (r"Conversion is failed for: ([^\n]+)", "OpenVINO's PyTorch frontend failed to convert it")):
        found = re.search(pattern, message)
        if found:
            return found.group(1).strip(), rejected or why
    if validation:
        aten = re.search(r"(aten\.\w+\.\w+)", validation.group(1))
        return (aten.group(1) if aten else None), rejected
    return None, _summary(message)


def _summary(message: str) -> str:
    """The useful line of an OpenVINO/torch.export error (the first lines are C++ check locations)."""
    lines = [ln.strip(" -|") for ln in message.splitlines() if ln.strip(" -|")]
    useful = [ln for ln in lines if not ln.startswith(("Check '", "FrontEnd API failed"))]
    return (useful or lines or ["unknown error"])[0].rstrip(".")
