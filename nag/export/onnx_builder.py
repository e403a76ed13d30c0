"""Build the ONNX graph of a static child directly from its plan and weights.

`torch.onnx.export` takes 0.1-0.2 s (TorchScript, deprecated) to several seconds (dynamo) per child;
the server needs milliseconds. The child's structure is fully known from its plan, so we emit the
nodes ourselves with BatchNorm folded into the convolutions (in float64, then cast).
`tests/test_export.py` proves the result equal to the PyTorch child in ONNX Runtime.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nag.supernet.static import StaticChild, StaticMBConv

OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
_ACT_OPS = {"relu": "Relu", "hswish": "HardSwish"}


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    bias = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    w = w * scale.view(-1, 1, 1, 1)
    return w.float().numpy(), bias.float().numpy()


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: object) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, weight: np.ndarray, bias: np.ndarray | None, stride: int, hint: str,
             groups: int = 1) -> str:
        k = weight.shape[-1]
        inputs = [x, self.const(f"{hint}_w", weight)]
        if bias is not None:
            inputs.append(self.const(f"{hint}_b", bias))
        return self.op("Conv", inputs, hint, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[k // 2] * 4, group=groups)

    def conv_bn(self, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, hint: str) -> str:
        w, b = _fold(conv, bn)
        return self.conv(x, w, b, conv.stride[0], hint, conv.groups)

    def act(self, x: str, name: str) -> str:
        return self.op(_ACT_OPS[name], [x], name)

    def block(self, x: str, blk: StaticMBConv, i: int) -> str:
        y = self.act(self.conv_bn(x, blk.expand, blk.expand_bn, f"b{i}_expand"), blk.act)
        y = self.act(self.conv_bn(y, blk.depthwise, blk.depthwise_bn, f"b{i}_dw"), blk.act)
        if blk.se_reduce is not None and blk.se_expand is not None:
            s = self.op("GlobalAveragePool", [y], f"b{i}_se_pool")
            s = self.op("Relu", [self.conv(s, _np(blk.se_reduce.weight), _np(blk.se_reduce.bias), 1, f"b{i}_se_r")],
                        f"b{i}_se_relu")
            s = self.conv(s, _np(blk.se_expand.weight), _np(blk.se_expand.bias), 1, f"b{i}_se_e")
            s = self.op("HardSigmoid", [s], f"b{i}_se_gate", alpha=1.0 / 6.0, beta=0.5)
            y = self.op("Mul", [y, s], f"b{i}_se_mul")
        y = self.conv_bn(y, blk.project, blk.project_bn, f"b{i}_project")
        shortcut = x
        if blk.shortcut is not None and blk.shortcut_bn is not None:
            shortcut = self.conv_bn(x, blk.shortcut, blk.shortcut_bn, f"b{i}_shortcut")
        return self.op("Add", [y, shortcut], f"b{i}_add")


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().numpy()


def build_onnx(child: StaticChild, metadata: Mapping[str, str] | None = None) -> onnx.ModelProto:
    """The ONNX model of `child`: `images [N, C, H, W]` in [0, 1] -> `logits [N, classes]`."""
    plan = child.plan
    g = _GraphBuilder()
    size = int(child.native_size)
    x = INPUT_NAME
    if plan.resolution != size:
        sizes = g.const("resize_sizes", np.array([plan.resolution, plan.resolution], dtype=np.int64))
        # Half-pixel bilinear without antialiasing is what F.interpolate(align_corners=False) computes.
        x = g.op("Resize", [x, "", "", sizes], "resize", mode="linear", axes=[2, 3],
                 coordinate_transformation_mode="half_pixel")
    x = g.op("Sub", [x, g.const("mean", child.mean.numpy().astype(np.float32))], "normalise_sub")
    x = g.op("Div", [x, g.const("std", child.std.numpy().astype(np.float32))], "normalise_div")
    x = g.act(g.conv_bn(x, child.stem, child.stem_bn, "stem"), child.stem_act)
    for i, blk in enumerate(child.blocks):
        x = g.block(x, blk, i)
    x = g.act(g.conv_bn(x, child.head, child.head_bn, "head"), plan.head_act)
    x = g.op("GlobalAveragePool", [x], "pool")
    x = g.op("Flatten", [x], "flatten", axis=1)
    weight = g.const("classifier_w", _np(child.classifier.weight))  # type: ignore[arg-type]
    bias = g.const("classifier_b", _np(child.classifier.bias))  # type: ignore[arg-type]
    g.nodes.append(helper.make_node("Gemm", [x, weight, bias], [OUTPUT_NAME], name="classifier", transB=1))
    graph = helper.make_graph(
        g.nodes,
        "nag_child",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", plan.in_channels, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", plan.num_classes])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nag")
    model.ir_version = 8
    meta = {
        "nag.arch_json": child.arch.to_json(),
        "nag.arch_id": child.arch.arch_id,
        "nag.input": json.dumps({"name": INPUT_NAME, "shape": ["N", plan.in_channels, size, size],
                                 "range": [0.0, 1.0], "dtype": "float32"}),
        **(metadata or {}),
    }
    helper.set_model_props(model, dict(meta))
    return model


def export_onnx(child: StaticChild, metadata: Mapping[str, str] | None = None, check: bool = True) -> bytes:
    """Serialised ONNX model of `child`, optionally checked with `onnx.checker` (full check)."""
    model = build_onnx(child, metadata)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
