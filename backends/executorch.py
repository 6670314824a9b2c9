"""ExecuTorch runtime: runs a `.pte` bundle through ExecuTorch's C++ runtime and its XNNPACK delegate.

Two Python bindings of the same runtime, in order of preference:
- `executorch.runtime` (the official pip wheel's pybindings): the exporter's own version, but its extension links
  libtorch, so importing it imports torch, and it takes and returns torch tensors;
- `executorch_numpy_runtime` (PyPI `executorch-numpy-runtime`, Python >= 3.12): a torch-free build on numpy arrays,
  for devices without torch. It pins its own ExecuTorch (1.3.1 in its 1.4.0 release), which runs the programs the
  1.5.1 exporter writes for fp32 and fp16.
Both are imported inside `load`, so importing this module costs nothing.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backends import register
from backends.base import Backend, check_inputs
from sdk.core.errors import BundleError, UnsupportedError

#: ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) that a program's I/O may use
_SCALAR_TYPES = {0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16, 6: np.float32,
                 7: np.float64, 11: np.bool_}
Spec = tuple[list[int], np.dtype]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def _binding() -> str | None:
    """'pybindings' or 'numpy': the first binding installed with what it needs, or None."""
    if _installed("executorch.extension.pybindings.portable_lib") and _installed("torch"):
        return "pybindings"
    if _installed("executorch_numpy_runtime"):
        return "numpy"
    return None


def _dtype(scalar_type: int) -> np.dtype:
    if scalar_type not in _SCALAR_TYPES:
        raise UnsupportedError(f"model.pte has an input of ExecuTorch ScalarType {scalar_type}, "
                               "which has no numpy dtype")
    return np.dtype(_SCALAR_TYPES[scalar_type])


def _describe(specs: list[Spec]) -> str:
    return ", ".join(f"{dtype}{shape}" for shape, dtype in specs) or "nothing"


def _delegate_label(manifest: Mapping[str, Any]) -> str:
    """The delegate the converter lowered to; ExecuTorch refuses to load a program whose delegate it lacks."""
    partitioner = manifest.get("runtime_options", {}).get("partitioner")
    return f"{partitioner.upper()} delegate" if partitioner else "portable kernels"


def _load_error(model_path: Path, exc: Exception, delegates: list[str]) -> RuntimeError:
    return RuntimeError(f"ExecuTorch could not load {model_path} ({exc}): the file is truncated or corrupt, was "
                        "exported by an ExecuTorch version this runtime cannot read, or needs a delegate or kernel "
                        f"this runtime build lacks (its delegates: {', '.join(delegates) or 'none'})")


class ExecuTorchSession:
    """A loaded `forward` method taking and returning arrays in the manifest's order (in_i..., out_i...)."""

    def __init__(self, call: Callable[[list[np.ndarray]], list[np.ndarray]], program_inputs: list[Spec],
                 manifest: Mapping[str, Any], ran_on: str):
        declared = [(list(s["shape"]), np.dtype(s["dtype"])) for s in manifest["inputs"]]
        if declared != program_inputs:
            raise BundleError(f"model.pte takes inputs {_describe(program_inputs)}, the manifest declares "
                             f"{_describe(declared)}: the bundle's model and manifest do not belong together; "
                             "export it again")
        self.ran_on = ran_on
        self._call = call
        self._manifest = manifest

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._call(check_inputs(inputs, self._manifest))


def _load_pybindings(model_path: Path, manifest: Mapping[str, Any]) -> ExecuTorchSession:
    import torch  # the pybindings' tensor type; executorch.runtime imports it anyway
    from executorch.runtime import Runtime
    from executorch.version import __version__

    runtime = Runtime.get()
    try:
        method = runtime.load_program(Path(model_path)).load_method("forward")
    except RuntimeError as exc:
        raise _load_error(model_path, exc, runtime.backend_registry.registered_backend_names) from exc
    meta = method.metadata
    program_inputs = [(list(meta.input_tensor_meta(i).sizes()), _dtype(meta.input_tensor_meta(i).dtype()))
                      for i in range(meta.num_inputs())]

    def call(arrays: list[np.ndarray]) -> list[np.ndarray]:
        outputs = method.execute([torch.from_numpy(a) for a in arrays])  # copies, not views of runtime memory
        return [o.numpy() for o in outputs]

    ran_on = f"executorch {__version__.split('+')[0]} ({_delegate_label(manifest)}, pybindings)"
    return ExecuTorchSession(call, program_inputs, manifest, ran_on)


def _load_numpy_runtime(model_path: Path, manifest: Mapping[str, Any]) -> ExecuTorchSession:
    import executorch_numpy_runtime as etnp

    try:
        method = etnp.Runtime.get().load_program(str(model_path)).load_method("forward")
    except etnp.ExecuTorchError as exc:
        raise _load_error(model_path, exc, etnp.runtime_info()["backends"]) from exc
    program_inputs = [(list(t["shape"]), _dtype(t["scalar_type"])) for t in method.metadata["inputs"]]
    ran_on = (f"executorch {etnp.__et_version__} ({_delegate_label(manifest)}, "
              f"executorch-numpy-runtime {etnp.__version__}, no torch)")
    return ExecuTorchSession(method, program_inputs, manifest, ran_on)


@register
class ExecuTorchBackend(Backend):
    """ExecuTorch on the CPU with the delegates its build links (XNNPACK in both bindings), as Android apps run it."""

    runtime = "executorch"

    def unavailable_reason(self) -> str | None:
        if _binding() is not None:
            return None
        torch_free = "or, without torch (Python >= 3.12), pip install executorch-numpy-runtime"
        if _installed("executorch"):
            return f"executorch is installed but its pybindings need torch, which is not: install torch, {torch_free}"
        return f"no ExecuTorch Python runtime: pip install executorch (with torch), {torch_free}"

    def load(self, model_path: Path, manifest: Mapping[str, Any]) -> ExecuTorchSession:
        binding = _binding()
        if binding == "pybindings":
            return _load_pybindings(model_path, manifest)
        if binding == "numpy":
            return _load_numpy_runtime(model_path, manifest)
        raise RuntimeError(self.unavailable_reason())
