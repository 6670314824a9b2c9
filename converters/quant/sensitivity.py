"""Per-layer quantization sensitivity, simulated in torch with fake-quant of the target's scheme.

For each quantizable layer alone: quantize its weights (and, for activation schemes, its input) the
way the recipe will, then measure the SQNR of that layer's output and of the model's outputs on
held-out inputs. Layers are ranked worst first; the fallback keeps them in float in that order.
"""
from __future__ import annotations

import math
import sys
from typing import Iterable, Sequence

import torch
from torch import nn

from sdk.core.recipes import Config, Fp16, Int4Weight, Int8Dynamic, Int8Static, Palettize

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def hf_conv1d() -> type[nn.Module] | None:
    """Hugging Face's `Conv1D` (GPT-2's weight layers: a linear whose weight is stored (in, out)), where
    transformers is loaded; no model can hold one otherwise, so transformers is never imported for it."""
    return getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the layers a weight quantizer acts on: conv, linear and Hugging Face Conv1D."""
    conv1d = hf_conv1d()
    kinds = QUANTIZABLE + ((conv1d,) if conv1d is not None else ())
    return [name for name, m in model.named_modules() if isinstance(m, kinds)]


def _weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as (out, in, ...), the layout the simulated schemes quantize per output channel."""
    conv1d = hf_conv1d()
    return module.weight.t() if conv1d is not None and isinstance(module, conv1d) else module.weight


def _sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    noise = float(((ref.double() - got.double()) ** 2).sum())
    signal = float((ref.double() ** 2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _int_weight_per_channel(w: torch.Tensor, bits: int) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / qmax
    return (w / scale).round().clamp(-qmax - 1, qmax) * scale


def _int_weight_grouped(w: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    flat = w.reshape(w.shape[0], -1)
    cols = flat.shape[1]
    if cols % group:  # the toolchains leave such weights in float; so does the simulation
        return w
    g = flat.reshape(flat.shape[0], cols // group, group)
    qmax = 2 ** (bits - 1) - 1
    scale = g.abs().amax(dim=2, keepdim=True).clamp_min(1e-12) / qmax
    return ((g / scale).round().clamp(-qmax - 1, qmax) * scale).reshape(w.shape)


def _palettize(w: torch.Tensor, nbits: int, iters: int = 15) -> torch.Tensor:
    """1-D k-means (Lloyd, quantile init) over the tensor's values: 2**nbits shared values."""
    flat = w.reshape(-1).float()
    k = min(2 ** nbits, flat.numel())
    centers = torch.quantile(flat, torch.linspace(0, 1, k))
    for _ in range(iters):
        assign = (flat[:, None] - centers[None, :]).abs().argmin(dim=1)
        sums = torch.zeros(k).index_add_(0, assign, flat)
        counts = torch.bincount(assign, minlength=k).float()
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
    return centers[assign].reshape(w.shape).to(w.dtype)


def _fake_quant_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Per-tensor affine uint8 over [lo, hi] (range always includes 0, as the quantizers do)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zero = round(-lo / scale)
    return ((x / scale).round() + zero).clamp(0, 255).sub(zero).mul(scale)


def _weight_fn(config: Config):
    if isinstance(config, (Int8Static, Int8Dynamic)):
        return lambda w: _int_weight_per_channel(w, 8)
    if isinstance(config, Int4Weight):
        return lambda w: _int_weight_grouped(w, 4, config.group_size)
    if isinstance(config, Palettize):
        return lambda w: _palettize(w, config.nbits)
    if isinstance(config, Fp16):
        return lambda w: w.half().float()
    raise ValueError(f"no sensitivity simulation for {config}")


def _input_ranges(model: nn.Module, layers: Sequence[str], samples: Iterable[tuple]) -> dict[str, tuple[float, float]]:
    """Min/max of each layer's input over the calibration samples (what a static observer records)."""
    ranges: dict[str, list[float]] = {}
    modules = dict(model.named_modules())
    hooks = []
    for name in layers:
        def hook(_m, args, name=name):
            lo, hi = float(args[0].min()), float(args[0].max())
            r = ranges.setdefault(name, [lo, hi])
            r[0], r[1] = min(r[0], lo), max(r[1], hi)
        hooks.append(modules[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for inputs in samples:
                model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return {k: (v[0], v[1]) for k, v in ranges.items()}


class _Simulator:
    """Fake-quantizes chosen layers of a model in place of their forward, per the recipe's scheme."""

    def __init__(self, model: nn.Module, config: Config, calibration: Sequence[tuple], layers: Sequence[str],
                 weight_only: bool = False):
        self.modules = dict(model.named_modules())
        activations = not weight_only
        self.static = activations and isinstance(config, Int8Static)
        self.dynamic = activations and isinstance(config, Int8Dynamic)
        self.ranges = _input_ranges(model, layers, calibration) if self.static else {}
        weight_q = _weight_fn(config)
        self.qweights = {name: weight_q(_weight(self.modules[name]).detach()) for name in layers}

    def forward(self, name: str, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.static:
            x = _fake_quant_activation(x, *self.ranges[name])
        elif self.dynamic:
            x = _fake_quant_activation(x, float(x.min()), float(x.max()))
        w = self.qweights[name]
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return m._conv_forward(x, w, m.bias)
        return nn.functional.linear(x, w, m.bias)

    def hook(self, name: str, record: list | None = None):
        """A forward hook replacing the layer's output by its quantized one (recording both if asked)."""
        def hook(m, args, output):
            quantized = self.forward(name, m, args[0])
            if record is not None:
                record.append((output.detach(), quantized.detach()))
            return quantized
        return self.modules[name].register_forward_hook(hook)


def _run(model: nn.Module, inputs: Sequence[tuple]) -> list[list[torch.Tensor]]:
    with torch.no_grad():
        return [[t.float() for t in _as_list(model(*x))] for x in inputs]


def _model_sqnr(reference: list[list[torch.Tensor]], outputs: list[list[torch.Tensor]]) -> float:
    """Worst SQNR over the model's outputs, each pooled over all samples."""
    return min(_sqnr_db(torch.cat([r[i].flatten() for r in reference]), torch.cat([o[i].flatten() for o in outputs]))
               for i in range(len(reference[0])))


def layer_sensitivity(model: nn.Module, config: Config, calibration: Sequence[tuple], eval_inputs: Sequence[tuple],
                      layers: Sequence[str] | None = None, weight_only: bool = False) -> list[dict]:
    """SQNR (dB) of each layer's own output and of the model outputs with only that layer quantized.

    Sorted worst first by the model-output SQNR, the figure the fallback has to raise. `weight_only`
    leaves activations in float, for artifacts whose toolchain quantized weights only.
    """
    model = model.eval()
    layers = list(layers) if layers is not None else quantizable_layers(model)
    sim = _Simulator(model, config, calibration, layers, weight_only)
    reference = _run(model, eval_inputs)
    results = []
    for name in layers:
        record: list = []
        handle = sim.hook(name, record)
        try:
            outputs = _run(model, eval_inputs)
        finally:
            handle.remove()
        layer_sqnr = _sqnr_db(torch.cat([r.flatten() for r, _ in record]), torch.cat([q.flatten() for _, q in record]))
        results.append({"layer": name, "type": type(sim.modules[name]).__name__, "layer_sqnr_db": _round(layer_sqnr),
                        "model_sqnr_db": _round(_model_sqnr(reference, outputs))})
    results.sort(key=lambda r: math.inf if r["model_sqnr_db"] is None else r["model_sqnr_db"])
    return results


def simulate(model: nn.Module, config: Config, calibration: Sequence[tuple], eval_inputs: Sequence[tuple],
             keep_float: Iterable[str] = (), weight_only: bool = False) -> list[list[torch.Tensor]]:
    """Model outputs with every quantizable layer fake-quantized except `keep_float`: the fallback's
    estimate for targets that cannot run on this host, always labelled as simulated in the report."""
    model = model.eval()
    skip = set(keep_float)
    layers = [n for n in quantizable_layers(model) if n not in skip]
    sim = _Simulator(model, config, calibration, layers, weight_only)
    handles = [sim.hook(name) for name in layers]
    try:
        return _run(model, eval_inputs)
    finally:
        for h in handles:
            h.remove()


def _round(v: float) -> float | None:
    return None if math.isinf(v) else round(v, 2)


def _as_list(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _as_list(o)]

