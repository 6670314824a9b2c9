"""XNNPACKQuantizer that takes conv / linear -> hardtanh (ReLU6) as one fused pattern, as it takes conv -> relu.

The upstream defect (executorch 1.5.1, `backends/xnnpack/quantizer/xnnpack_quantizer_utils.py`, unchanged on
main): the fused-activation annotators (`conv_relu`, `linear_relu`, `conv_bn_relu`) match `is_relu_node` only
(aten.relu / relu_), although XNNPACK itself fuses hardtanh into the preceding conv or linear exactly like relu
(`GEMMConfig.fused_acts = ["relu.default", "hardtanh.default"]` in the partitioner, `FuseActivationPass` writes its
bounds as the node's output min/max). So a conv -> hardtanh(0, 6) gets its output observer on the conv, before
the clamp, and `propagate_annotation` makes the hardtanh share it: the ReLU6 output is quantized on the conv's
pre-activation range (on EfficientNet-Lite0 a median span of 24, so about a quarter of the 256 levels land in
[0, 6]).

Here the conv or linear gets its input, weight and bias annotations and the hardtanh gets the one output observer,
after the clamp, as upstream's relu patterns do; XNNPACK then lowers the group as one integer op with the clamp
fused, so the graph stays delegated. A BatchNorm between them is already folded by `prepare_pt2e`
(`_fuse_conv_bn_`, `_fuse_linear_bn_`) before annotation. Any hardtanh bounds fuse (XNNPACK clamps to them in
the integer domain).

Measured on EfficientNet-Lite0 for android-arm64 (300 calibration crops; 320 labeled photos as in
benchmarks/labeled_accuracy.py): logits cosine to fp32 0.937 -> 0.991 (0.866 -> 0.987 on the bench's 128 crops),
top-1 86.3% -> 86.6% (fp32 86.6%), every node delegated to XNNPACK before and after.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import _is_annotated, _mark_nodes_as_annotated
from torch.fx import Node
from torchao.quantization.pt2e.quantizer import (
    QuantizationAnnotation,
    QuantizationConfig,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
)
from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY
from torchao.quantization.pt2e.utils import _is_conv_node

#: nn.ReLU6 and F.hardtanh export as aten.hardtanh, F.relu6 as aten.relu6 (decomposed to hardtanh(0, 6) in the edge
#: dialect, where XNNPACK fuses it)
_HARDTANH = frozenset({torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default, torch.ops.aten.relu6.default,
                       torch.ops.aten.relu6_.default})


def annotate_gemm_hardtanh(graph: torch.fx.GraphModule, config: QuantizationConfig,
                           filter_fn: Callable[[Node], bool] | None = None) -> list[list[Node]]:
    """Annotate every conv / linear whose only user is a hardtanh as one pattern, observed after the clamp."""
    partitions = []
    for clamp in graph.graph.nodes:
        if clamp.op != "call_function" or clamp.target not in _HARDTANH:
            continue
        gemm = clamp.args[0]
        if not isinstance(gemm, Node) or len(gemm.users) != 1 or not (
                _is_conv_node(gemm) or gemm.target == torch.ops.aten.linear.default):
            continue
        weight, bias = gemm.args[1], gemm.args[2] if len(gemm.args) > 2 else None
        partition = [clamp, gemm, weight] + ([bias] if isinstance(bias, Node) else [])
        if _is_annotated(partition) or (filter_fn is not None and not all(filter_fn(n) for n in partition)):
            continue
        inputs = {gemm.args[0]: get_input_act_qspec(config), weight: get_weight_qspec(config)}
        if isinstance(bias, Node):
            inputs[bias] = get_bias_qspec(config)
        gemm.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=inputs, _annotated=True)
        clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=get_output_act_qspec(config),
                                                              _annotated=True)
        _mark_nodes_as_annotated(partition)
        partitions.append(partition)
    return partitions


class ReLU6XNNPACKQuantizer(XNNPACKQuantizer):
    """XNNPACKQuantizer whose static config also fuses conv / linear -> hardtanh (see the module docstring); the
    upstream patterns run after it and leave the groups it annotated alone."""

    def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
        config = self.global_config
        if config is not None and not config.input_activation.is_dynamic:
            annotate_gemm_hardtanh(model, config, self.filter_fn)
        return super().annotate(model)
