"""Write docs/devices/ (an index and one page per profile) from the device-profile TOML files; a test checks
the pages are current.

Run: python docs/gen_devices.py
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdk import devices  # noqa: E402

OUT = ROOT / "docs" / "devices"

#: per runtime (NPU and TensorRT told apart): what was checked on this build host (x86 Xeon VM, Linux),
#: what on the real hardware, and what not yet
VERIFIED: dict[str, dict[str, str]] = {
    "executorch": {
        "host": "export, XNNPACK delegation report, INT8/INT4 quantization, parity, latency and memory through the "
                "ExecuTorch pybindings with XNNPACK on x86; the agent's adb driver against a fake adb that replays "
                "real command output",
        "hardware": "none yet: no Android phone has run these bundles",
        "not_yet": "arm64 kernels and their timings; the battery power probe on a phone (tested on a faithful "
                   "fixture of `dumpsys battery` / sysfs output only)"},
    "litert": {
        "host": "export with litert-torch, quantization with ai-edge-quantizer, parity, latency and memory on the "
                "LiteRT interpreter with XNNPACK on x86",
        "hardware": "none yet: no Android phone has run these bundles",
        "not_yet": "arm64 kernels and their timings; GPU/NNAPI delegates; the battery power probe on a phone"},
    "openvino": {
        "host": "conversion, NNCF quantization, parity, latency and memory on the OpenVINO CPU plugin of this "
                "host (an Intel Xeon with AVX-512 VNNI; the agent's latency agrees with `benchmark_app`, see "
                "[benchmarks](../benchmarks.md))",
        "hardware": "an Intel CPU, this host, which is not the profile's laptop part",
        "not_yet": "the laptop CPU itself; RAPL energy (not exposed in this VM)"},
    "openvino-npu": {
        "host": "IR conversion and quantization for the NPU (symmetric INT8); runs use the OpenVINO CPU plugin as a "
                "stand-in, and reports say so in `ran_on`",
        "hardware": "none: no NPU on the build host",
        "not_yet": "the NPU plugin's compilation and timings"},
    "tensorrt": {
        "host": "ONNX export (opset 17, INT8 QDQ, INT4 blocked QDQ at opset 21), parity and latency on ONNX Runtime "
                "CPU as a stand-in for TensorRT, said so in `ran_on`",
        "hardware": "the NVML power probe on a real NVIDIA H100 (idle and matmul energy); no Jetson",
        "not_yet": "TensorRT engine builds and timings; the Jetson's INA3221 rails (tested on a fixture of the "
                   "real sysfs layout only)"},
    "coreml": {
        "host": "conversion with coremltools and a check of the `.mlpackage` spec (inputs, outputs, weight dtypes); "
                "Core ML cannot run off macOS, so parity and latency are reported as not run, with the reason",
        "hardware": "none yet: no Mac has run these bundles",
        "not_yet": "Core ML runs on a Mac or iPhone; the `powermetrics` power probe (tested on a fixture of its "
                   "real output only); INT8 activation quantization, which needs macOS"},
}


def _verified(p: devices.DeviceProfile) -> dict[str, str]:
    key = "openvino-npu" if p.runtime == "openvino" and "npu" in p.compute_units else p.runtime
    return VERIFIED[key]


def index() -> str:
    lines = ["# Device profiles", "",
             "Generated from `sdk/devices/*.toml` by `python docs/gen_devices.py`; do not edit by hand.",
             "Add your own profile with a TOML file: `sdk.devices.register('my_board.toml')` or an entry point in the",
             "`edge_sdk.devices` group. Peak figures feed the roofline bound in every report; each one has a source.", "",
             "| id | aliases | format | runtime | default recipe | on real hardware |", "|---|---|---|---|---|---|"]
    for p in devices.list():
        lines.append(f"| [`{p.id}`]({p.id}.md) | {', '.join(p.aliases)} | {p.format} | {p.runtime} | "
                     f"{', '.join(p.default_recipe)} | {_verified(p)['hardware']} |")
    return "\n".join(lines) + "\n"


def page(p: devices.DeviceProfile) -> str:
    peaks = ", ".join(f"{k} {v:g} TOPS" for k, v in p.peak_tops.items())
    verified = _verified(p)
    lines = [f"# {p.id}", "", "Generated from the profile's TOML by `python docs/gen_devices.py`.", "",
             f"**{p.name}** ({p.vendor}). {p.soc}.", "",
             "## What is verified where", "",
             f"- **On this build host:** {verified['host']}.",
             f"- **On real hardware:** {verified['hardware']}.",
             f"- **Not verified yet:** {verified['not_yet']}.", "",
             "## Profile", "",
             f"- aliases: {', '.join(f'`{a}`' for a in p.aliases) or 'none'}",
             f"- format / runtime: {p.format} / {p.runtime}; compute units: {', '.join(p.compute_units)}",
             f"- precisions: {', '.join(p.precisions)}; default recipe: {', '.join(p.default_recipe)}",
             f"- static shapes required: {'yes' if p.static_shapes else 'no'}; memory budget: {p.memory_budget_mb:g} MB",
             f"- peak compute: {peaks}; memory bandwidth: {p.memory_bandwidth_gbps:g} GB/s",
             f"- power sensors: {', '.join(p.power_sensors)}; agent transport: {p.agent_transport}",
             f"- converter options: {', '.join(f'{k}={v}' for k, v in p.converter.items()) or 'none'}",
             f"- budgets: {', '.join(f'{k}={v:g}' for k, v in p.budgets.items()) or 'none'}",
             *([f"- notes: {p.notes}"] if p.notes else []),
             "", "## Sources", "", *(f"- <{s}>" for s in p.sources), "",
             "## Export to it", "", "```console", f"edge-sdk export samples/mobilenet_v2.py:build --device {p.id} --out out/",
             "```"]
    return "\n".join(lines) + "\n"


def render() -> dict[str, str]:
    """File name under docs/devices/ -> its text."""
    return {"index.md": index(), **{f"{p.id}.md": page(p) for p in devices.list()}}


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    for stale in set(f.name for f in OUT.glob("*.md")) - set(render()):
        (OUT / stale).unlink()
    for name, text in render().items():
        (OUT / name).write_text(text)
    print(f"wrote {len(render())} pages to docs/devices/")
