"""Write docs/devices.md from the device-profile TOML files (a test checks it is current).

Run: python docs/gen_devices.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdk import devices  # noqa: E402

HOST_CHECK = {
    "executorch": "runs here: ExecuTorch pybindings with XNNPACK on x86 (the phone's arm64 CPU is not verified)",
    "litert": "runs here: LiteRT interpreter with XNNPACK on x86 (the phone's arm64 CPU is not verified)",
    "openvino": "runs here: OpenVINO CPU plugin",
    "openvino-npu": "IR converted for the NPU; run here on the OpenVINO CPU plugin as a stand-in (no NPU on the build host)",
    "onnx": "runs here: ONNX Runtime CPU as a stand-in for TensorRT (no Jetson or TensorRT on the build host)",
    "coreml": "converted and spec-checked here; Core ML runs only on macOS/iOS, so parity is checked by an agent on a Mac",
}


def _host_check(p: devices.DeviceProfile) -> str:
    key = f"{p.format}-npu" if "npu" in p.compute_units else p.format
    return HOST_CHECK.get(key, HOST_CHECK[p.format])


def render() -> str:
    lines = ["# Device profiles", "",
             "Generated from `sdk/devices/*.toml` by `python docs/gen_devices.py`; do not edit by hand.",
             "Add your own profile with a TOML file: `sdk.devices.register('my_board.toml')` or an entry point in the",
             "`edge_sdk.devices` group. Peak figures feed the roofline bound in every report; each one has a source.", "",
             "| id | aliases | format | runtime | default recipe | what is verified where |", "|---|---|---|---|---|---|"]
    for p in devices.list():
        lines.append(f"| `{p.id}` | {', '.join(p.aliases)} | {p.format} | {p.runtime} | {', '.join(p.default_recipe)} "
                     f"| {_host_check(p)} |")
    for p in devices.list():
        peaks = ", ".join(f"{k} {v:g} TOPS" for k, v in p.peak_tops.items())
        lines += ["", f"## {p.id}", "", f"**{p.name}** ({p.vendor}). {p.soc}.", "",
                  f"- format / runtime: {p.format} / {p.runtime}; compute units: {', '.join(p.compute_units)}",
                  f"- precisions: {', '.join(p.precisions)}; default recipe: {', '.join(p.default_recipe)}",
                  f"- static shapes required: {'yes' if p.static_shapes else 'no'}; memory budget: {p.memory_budget_mb:g} MB",
                  f"- peak compute: {peaks}; memory bandwidth: {p.memory_bandwidth_gbps:g} GB/s",
                  f"- power sensors: {', '.join(p.power_sensors)}; agent transport: {p.agent_transport}",
                  f"- converter options: {', '.join(f'{k}={v}' for k, v in p.converter.items()) or 'none'}",
                  f"- budgets: {', '.join(f'{k}={v:g}' for k, v in p.budgets.items()) or 'none'}",
                  *([f"- notes: {p.notes}"] if p.notes else []),
                  "- sources: " + ", ".join(f"<{s}>" for s in p.sources)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "devices.md").write_text(render())
    print("wrote docs/devices.md")
