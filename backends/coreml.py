"""Core ML runtime: run an `.mlpackage` through coremltools' `MLModel.predict` (macOS only).

Core ML itself exists only on Apple platforms, so on Linux this backend reports itself unavailable;
`spec_summary` (from `sdk.core.readers.coreml`) still reads a bundle's model spec there (coremltools imports
and parses specs without torch and without the Core ML framework), which is how a Linux host checks what it
converted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

import backends
from backends.base import Backend, check_inputs
from sdk.core.readers.coreml import feature_specs, runtime_unavailable_reason, spec_summary, weight_storage

__all__ = ["CoreMLBackend", "CoreMLSession", "spec_summary", "weight_storage"]

class CoreMLSession:
    """A loaded Core ML model. Unverified on this project's Linux CI: kept to the documented predict() call."""

    def __init__(self, model: Any, manifest: Mapping[str, Any], compute_units: str, version: str):
        self._model, self._manifest = model, manifest
        declared = {f["name"]: f.get("dtype") for f in feature_specs(model.get_spec().description)["inputs"]}
        # Core ML has no int64 features: the converter declares int32 where torch had int64.
        self._dtypes = [np.dtype(declared[spec["name"]]) for spec in manifest["inputs"]]
        self.ran_on = f"Core ML via coremltools {version}, compute_units={compute_units} (Core ML places each op)"

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        arrays = check_inputs(inputs, self._manifest)
        feed = {spec["name"]: a.astype(dtype, copy=False)
                for spec, a, dtype in zip(self._manifest["inputs"], arrays, self._dtypes)}
        result = self._model.predict(feed)
        return [np.asarray(result[spec["name"]]) for spec in self._manifest["outputs"]]


@backends.register
class CoreMLBackend(Backend):
    """Runs `.mlpackage` bundles with the compute units named in the manifest's runtime_options."""

    runtime = "coreml"

    def unavailable_reason(self) -> str | None:
        return runtime_unavailable_reason()

    def load(self, model_path: Path, manifest: Mapping[str, Any]) -> CoreMLSession:
        import coremltools as ct

        units = manifest.get("runtime_options", {}).get("compute_units", "ALL")
        model = ct.models.MLModel(str(model_path), compute_units=ct.ComputeUnit[units])
        return CoreMLSession(model, manifest, units, ct.__version__)
