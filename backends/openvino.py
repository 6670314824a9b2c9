"""OpenVINO runtime: compile an IR on the profile's device, or on CPU when that device is absent (and say so)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import backends
from backends.base import Backend, check_inputs

__all__ = ["OpenVINOBackend", "OpenVINOSession"]


class OpenVINOSession:
    """A compiled IR; inputs and outputs bound by the manifest's names (in_i / out_i)."""

    def __init__(self, compiled: Any, manifest: Mapping[str, Any], ran_on: str):
        self._request = compiled.create_infer_request()
        self._manifest = manifest
        self._inputs = [spec["name"] for spec in manifest["inputs"]]
        self._outputs = [compiled.output(spec["name"]) for spec in manifest["outputs"]]
        self.ran_on = ran_on
        self.stand_in: str | None = None

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = check_inputs(inputs, self._manifest)
        results = self._request.infer(dict(zip(self._inputs, arrays)))
        return [np.array(results[port]) for port in self._outputs]


@backends.register
class OpenVINOBackend(Backend):
    """Runs on runtime_options["device"] when OpenVINO sees it, else on CPU as a stand-in (said in `ran_on`)."""

    runtime = "openvino"

    def unavailable_reason(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError as exc:
            return f"openvino is not installed ({exc}); pip install 'edge-sdk[openvino]'"
        return None

    def load(self, model_path: Path, manifest: Mapping[str, Any]) -> OpenVINOSession:
        import openvino as ov

        core = ov.Core()
        wanted = str(manifest.get("runtime_options", {}).get("device", "CPU")).upper()
        available = core.available_devices
        device = wanted if any(d.split(".")[0] == wanted for d in available) else "CPU"
        config = {}
        if device == "CPU":
            # Without this hint the CPU plugin computes in bf16 on AMX/AVX512-BF16 hosts, which is not the
            # f32 the profile's CPU computes and would hide (or invent) parity problems; the bf16 recipe asks.
            config["INFERENCE_PRECISION_HINT"] = str(manifest.get("runtime_options", {}).get("inference_precision",
                                                                                           "f32"))
        compiled = core.compile_model(core.read_model(str(model_path)), device, config)
        ran_on = f"openvino {ov.get_version().split('-')[0]} {device}"
        if device == "CPU":
            used = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            ran_on += f" {used}" + (f" ({config['INFERENCE_PRECISION_HINT']} asked; this CPU lacks it)"
                                    if used != config["INFERENCE_PRECISION_HINT"] else "")
        if device != wanted:
            ran_on += (f" (stand-in: profile targets {wanted}, not present here (OpenVINO sees "
                       f"{', '.join(available) or 'nothing'}); {wanted} numerics are not emulated)")
        loaded = OpenVINOSession(compiled, manifest, ran_on)
        loaded.stand_in = None if device == wanted else f"OpenVINO {device} ran in place of {wanted}"
        return loaded
