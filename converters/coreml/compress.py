"""Weight compression with coremltools.optimize.coreml: the quantized recipes in its terms, and applied.

INT8 per-channel and INT4 per-block weights (`linear_quantize_weights`), k-means palettization
(`palettize_weights`), and, for static INT8 where Core ML can run the model to calibrate (macOS), INT8
activations (`linear_quantize_activations`). Layers kept in float are excluded by name through the toolchain's
own `op_name_configs={const: None}`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from converters import driver
from converters.base import ConversionJob
from converters.coreml.export import _io_dtype
from converters.coreml.weights import _Weight
from sdk.core.errors import UnsupportedRecipeError
from sdk.core.readers.coreml import runtime_unavailable_reason

_COMPRESS_STAGE = "coremltools.optimize.coreml"
#: coremltools' OpPalettizerConfig accepts these LUT widths (2**nbits entries)
_LUT_BITS = (1, 2, 3, 4, 6, 8)


@dataclass(frozen=True)
class _Scheme:
    """A quantization recipe in coremltools' terms, and how to describe it."""

    function: str  #: the coremltools.optimize.coreml function that applies it
    options: dict[str, Any]  #: its OpLinearQuantizerConfig / OpPalettizerConfig arguments
    activations: bool  #: also quantize activations (static INT8 where Core ML can run to calibrate)
    scheme: str
    notes: tuple[str, ...]

    @property
    def op_config(self) -> Any:
        import coremltools.optimize.coreml as cto

        kind = cto.OpPalettizerConfig if self.function == "palettize_weights" else cto.OpLinearQuantizerConfig
        return kind(**self.options)

    @property
    def toolchain(self) -> str:
        import coremltools as ct

        config = self.op_config
        args = ", ".join(f"{k}={v!r}" for k, v in {**self.options, "weight_threshold": config.weight_threshold}.items())
        calls = (["linear_quantize_activations(OpLinearQuantizerConfig(mode='linear_symmetric'))"]
                 if self.activations else []) + [f"{self.function}({type(config).__name__}({args}))"]
        return f"coremltools {ct.__version__}: coremltools.optimize.coreml." + " then ".join(calls)


def _scheme(job: ConversionJob, target: Any) -> _Scheme:
    """The recipe as a coremltools config; a combination the deployment target cannot load is refused."""
    import coremltools as ct

    config, speed = job.precision, _SPEED_NOTE
    if config.name in ("int8", "int8-dynamic"):
        options = {"mode": "linear_symmetric", "dtype": "int8", "granularity": "per_channel"}
        weights = "weights int8 per output channel, symmetric, with an fp16 scale per channel"
        unavailable = runtime_unavailable_reason()  # calibrating activations runs Core ML predictions
        if config.name == "int8" and unavailable is None and target.value >= ct.target.iOS17.value:
            samples = len(job.calibration or [job.example_inputs])
            return _Scheme("linear_quantize_weights", options, True,
                           f"{weights}; activations int8 symmetric per tensor, calibrated on {samples} sample(s) "
                           "by running the model in Core ML (W8A8)", (speed,))
        if config.name == "int8-dynamic":
            why = "Core ML has no run-time (dynamic) activation quantization, so 'int8-dynamic' is weight-only INT8"
        elif unavailable:
            why = ("activation quantization (W8A8, coremltools.optimize.coreml.linear_quantize_activations) "
                   f"calibrates by running Core ML predictions, which only macOS can do ({unavailable}); convert on "
                   "a Mac for W8A8")
        else:
            why = "activation quantization needs minimum_deployment_target iOS17/macOS14 or later"
        return _Scheme("linear_quantize_weights", options, False,
                       f"{weights}; activations stay float16 (W8A16): {why}",
                       (speed, _SIMULATION_NOTE) if unavailable else (speed,))
    if config.name == "int4":
        if target.value < ct.target.iOS18.value:
            raise _unsupported(job, target, f"INT4 per-block weights (constexpr_blockwise_shift_scale) need Core ML 8, "
                                            f"i.e. minimum_deployment_target iOS18/macOS15 or later, and "
                                            f"{job.profile.id} targets {target.name}. 'palettize:4' stores 4-bit "
                                            "weights on iOS16+ too.")
        options = {"mode": "linear_symmetric", "dtype": "int4", "granularity": "per_block",
                   "block_size": config.group_size}
        return _Scheme("linear_quantize_weights", options, False,
                       f"weights int4 symmetric in blocks of {config.group_size} along the input channels, an fp16 "
                       "scale per block; activations stay float16", (speed,))
    if config.nbits not in _LUT_BITS:
        raise _unsupported(job, target, f"coremltools' k-means palettization takes {', '.join(map(str, _LUT_BITS))} "
                                        "bits (e.g. 'palettize:4').")
    options = {"mode": "kmeans", "nbits": config.nbits, "granularity": "per_tensor"}
    return _Scheme("palettize_weights", options, False,
                   f"weights palettized by k-means: each tensor's values replaced by {2 ** config.nbits} fp16 "
                   f"centroids (a lookup table per tensor) and stored as {config.nbits}-bit indices; activations stay "
                   "float16", (speed,))


_SPEED_NOTE = ("speed not promised: compressed weights mainly cut size and memory traffic (Core ML decompresses "
               "them for fp16 compute); Apple documents int8-int8 compute gains on the Neural Engine only for W8A8 "
               "on A17 Pro/M4 and later")
_SIMULATION_NOTE = ("held-out parity off macOS is the SDK's torch simulation of the recipe, which fake-quantizes "
                    "activations too; this artifact keeps activations float16, so that estimate includes activation "
                    "error the artifact does not have")


def _unsupported(job: ConversionJob, target: Any, why: str) -> UnsupportedRecipeError:
    import coremltools as ct

    from converters.coreml import CoreMLConverter  # the package's plug-in, loaded by the time this runs

    here = [p for p in job.profile.precisions if p in CoreMLConverter.supported
            and not (p == "int4" and target.value < ct.target.iOS18.value)]
    error = UnsupportedRecipeError(job.precision.to_string(), CoreMLConverter.format, job.profile.id, here)
    error.args = (f"{error.args[0]} {why}",)
    return error


def _compress(mlmodel: Any, scheme: _Scheme, weights: dict[tuple[str, str], _Weight], job: ConversionJob) -> Any:
    """Apply the scheme with coremltools, every weight of a kept layer excluded by its const's name."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    kept = {key: w for key, w in weights.items() if driver.kept_by(w.layer, job.keep_float)}
    with driver.stage(_COMPRESS_STAGE):
        if scheme.activations:  # Apple's order: activations first, on a loaded (runnable) float model
            runnable = ct.models.MLModel(mlmodel.get_spec(), weights_dir=mlmodel.weights_dir,
                                         compute_units=ct.ComputeUnit.CPU_ONLY)
            samples = [{name: t.numpy().astype(_io_dtype(t.dtype) or np.float32)
                        for name, t in zip(job.input_names, sample)}
                       for sample in job.calibration or [job.example_inputs]]
            activations = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric"),
                                                 op_name_configs={op: None for op, _ in kept})
            mlmodel = cto.linear_quantize_activations(runnable, activations, samples)
        config = cto.OptimizationConfig(global_config=scheme.op_config,
                                        op_name_configs={w.const: None for w in kept.values()})
        return getattr(cto, scheme.function)(mlmodel, config)
