"""The machine a benchmark ran on, read at run time (a table is meaningless without it)."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

#: instruction-set flags that decide which kernels the runtimes pick (int8 dot products, bf16, AMX)
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
         "amx_tile", "amx_int8", "amx_bf16", "asimddp", "i8mm", "sve")
PACKAGES = ("torch", "openvino", "onnxruntime", "executorch", "ai-edge-litert", "litert-torch", "nncf", "torchao")


def _cpuinfo() -> dict[str, str]:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return {}
    info: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def _memory_gb() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, Any]:
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    hypervisor = "hypervisor" in flags
    return {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "virtualised": hypervisor,
        "memory_gb": round(_memory_gb() or 0, 1) or None,
        "flags": {f: f in flags for f in FLAGS if flags},
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in PACKAGES},
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def where(m: dict[str, Any] | None = None) -> str:
    """'<cpu> (<arch>, N usable logical CPUs, virtualised)': the machine part of a generated table's caption."""
    m = m or describe()
    return (f"{m['cpu']} ({m['machine']}, {m['usable_cpus']} usable logical CPUs"
            f"{', virtualised' if m['virtualised'] else ''})")


def replace_block(page: str, start: str, end: str, body: str, name: str) -> str:
    """`page` with the text between the `start` and `end` markers replaced by `body` (a generated table's home)."""
    if start not in page or end not in page:
        raise ValueError(f"{name} has lost its {start} ... {end} markers: put them back around the generated block")
    head, rest = page.split(start, 1)
    return f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}"
