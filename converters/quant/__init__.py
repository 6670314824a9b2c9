"""Quantization diagnostics shared by every format: calibration split and per-layer sensitivity.

The quantizers themselves are the formats' own (PT2E, NNCF, coremltools.optimize, ORT, LiteRT);
this package only measures, in torch, how much each layer suffers from a scheme.
"""
from converters.quant.sensitivity import layer_sensitivity, quantizable_layers

__all__ = ["layer_sensitivity", "quantizable_layers"]
