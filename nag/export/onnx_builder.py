"""Build the ONNX graph of a static child directly from its plan and weights.

`torch.onnx.export` takes 0.1-0.2 s (TorchScript, deprecated) to several seconds (dynamo) per child;
the server needs milliseconds. The child's structure is fully known from its plan, so we emit the
nodes ourselves with BatchNorm folded into the convolutions (in float64, then cast).
`tests/test_export.py` proves the result equal to the PyTorch child in ONNX Runtime.

Three graph forms compute the same function (`GraphForm`):

* `standard`: the plain ONNX ops (HardSigmoid gate, HardSwish, Resize with `axes`, Flatten), dynamic batch.
* `portable`: runs right in OpenCV DNN 4.x and 5.x as well as in ONNX Runtime. OpenCV's importer rewrites
  the squeeze-excitation gate `Mul(y, HardSigmoid(s))` into `HardSwish(y)` and classifies wrongly
  without an error, and cannot import a `Resize` with `axes`. Here the gate is
  `Clip(Conv(s) + 3, 0, 6)` (ReLU6, the +3 folded into the SE conv's bias, the 1/6 into the project
  conv's weights) and the bilinear resize is a constant convolution over the rows (carrying the input
  normalisation too) and a MatMul over the columns. ONNX Runtime fuses Conv+Clip as it fuses
  Conv+HardSigmoid, and the resize costs what Resize+Sub+Div cost.
* `mobile`: the portable graph with a static batch of 1, HardSwish written as `x * Clip(x + 3, 0, 6)`
  (its 1/6 folded into the convolution or classifier that consumes it) and Reshape for Flatten, so that
  NNAPI and CoreML (NeuralNetwork and MLProgram) take every node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from nag.graph_form import GraphForm
from nag.space.block import ConvBN, Op, SqueezeExcite
from nag.supernet.static import StaticChild, StaticMBConv

OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
_ACT_OPS = {"relu": "Relu", "hswish": "HardSwish"}
_HINTS = {"depthwise": "dw"}  # node-name hints of the block's layers, where shorter than the layer's name


def _hint(name: str) -> str:
    return _HINTS.get(name, name)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[np.ndarray, np.ndarray]:
    w = conv.weight.detach().double()
    scale = bn.weight.detach().double() / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    bias = bn.bias.detach().double() - bn.running_mean.detach().double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.detach().double() * scale
    w = w * scale.view(-1, 1, 1, 1)
    return w.numpy(), bias.numpy()


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] float64: bilinear, half-pixel, no antialiasing (`F.interpolate(align_corners=False)`)."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        x = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        x0 = min(int(x), n_in - 1)
        x1 = min(x0 + 1, n_in - 1)
        a[i, x0] += 1.0 - (x - x0)
        a[i, x1] += x - x0
    return a


class _GraphBuilder:
    def __init__(self, form: GraphForm) -> None:
        self.form = form
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._scalars: dict[float, str] = {}

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def scalar(self, value: float) -> str:
        """A float32 scalar initializer, one per value."""
        if value not in self._scalars:
            self._scalars[value] = self.const("scalar", np.array(value, np.float32))
        return self._scalars[value]

    def op(self, op_type: str, inputs: list[str], hint: str, **attrs: object) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, weight: np.ndarray, bias: np.ndarray | None, stride: int, hint: str,
             groups: int = 1, pads: list[int] | None = None) -> str:
        kh, kw = weight.shape[-2:]
        inputs = [x, self.const(f"{hint}_w", weight.astype(np.float32))]
        if bias is not None:
            inputs.append(self.const(f"{hint}_b", bias.astype(np.float32)))
        return self.op("Conv", inputs, hint, kernel_shape=[kh, kw], strides=[stride, stride],
                       pads=[kh // 2, kw // 2] * 2 if pads is None else pads, group=groups)

    def conv_bn(self, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d, hint: str, in_scale: float = 1.0) -> str:
        """Conv+BN folded; `in_scale` is a factor the input still owes (folded into the weights)."""
        w, b = _fold(conv, bn)
        return self.conv(x, w * in_scale, b, conv.stride[0], hint, conv.groups)

    def act(self, x: str, name: str) -> tuple[str, float]:
        """The activation of `x` as (tensor, factor): the true activation is tensor * factor."""
        if name == "hswish" and self.form is GraphForm.MOBILE:
            # hswish(x) = x * relu6(x + 3) / 6; the / 6 goes to the consumer's weights.
            r6 = self.relu6(self.op("Add", [x, self.scalar(3.0)], "hswish_add"), "hswish_relu6")
            return self.op("Mul", [x, r6], "hswish"), 1.0 / 6.0
        return self.op(_ACT_OPS[name], [x], name), 1.0

    def relu6(self, x: str, hint: str) -> str:
        return self.op("Clip", [x, self.scalar(0.0), self.scalar(6.0)], hint)

    def settle(self, x: str, factor: float, hint: str) -> str:
        if factor == 1.0:
            return x
        return self.op("Mul", [x, self.scalar(factor)], hint)

    def block(self, x: str, blk: StaticMBConv, i: int, x_factor: float) -> str:
        ops = blk.ops
        if ops.shortcut is None:  # the identity shortcut needs x itself
            x, x_factor = self.settle(x, x_factor, f"b{i}_settle"), 1.0
        y, f = x, x_factor
        for op in ops.main:
            y, f = self.block_op(y, f, op, blk, i)
        y = self.settle(y, f, f"b{i}_settle")
        shortcut = x
        if ops.shortcut is not None:
            shortcut, f = self.block_op(x, x_factor, ops.shortcut, blk, i)
            shortcut = self.settle(shortcut, f, f"b{i}_settle")
        return self.op("Add", [y, shortcut], f"b{i}_add")

    def block_op(self, x: str, f: float, op: Op, blk: StaticMBConv, i: int) -> tuple[str, float]:
        """One op of a block on (tensor, factor): the true input is x * f, the true output tensor * factor."""
        if isinstance(op, ConvBN):
            y = self.conv_bn(x, blk.layer(op.conv.name), blk.layer(op.bn.name), f"b{i}_{_hint(op.conv.name)}", f)
            return (y, 1.0) if op.act is None else self.act(y, op.act)
        if isinstance(op, SqueezeExcite):
            return self.squeeze_excite(x, f, blk.layer(op.reduce.name), blk.layer(op.expand.name), f"b{i}")
        raise TypeError(f"unknown op {op!r}")

    def squeeze_excite(self, y: str, f: float, reduce: nn.Module, expand: nn.Module, hint: str) -> tuple[str, float]:
        s = self.op("GlobalAveragePool", [y], f"{hint}_se_pool")
        s = self.op("Relu", [self.conv(s, _np64(reduce.weight) * f, _np64(reduce.bias), 1, f"{hint}_se_r")],
                    f"{hint}_se_relu")
        w_e, b_e = _np64(expand.weight), _np64(expand.bias)
        if self.form is GraphForm.STANDARD:
            s = self.op("HardSigmoid", [self.conv(s, w_e, b_e, 1, f"{hint}_se_e")], f"{hint}_se_gate",
                        alpha=1.0 / 6.0, beta=0.5)
        else:
            # hardsigmoid(z) = relu6(z + 3) / 6: the +3 joins the bias, the / 6 the consumer's weights.
            s = self.relu6(self.conv(s, w_e, b_e + 3.0, 1, f"{hint}_se_e"), f"{hint}_se_gate")
            f /= 6.0
        return self.op("Mul", [y, s], f"{hint}_se_mul"), f

    def preprocess(self, x: str, child: StaticChild) -> str:
        """Resize (bilinear, half-pixel) to the child's resolution and normalise."""
        size, res, c = int(child.native_size), child.plan.resolution, child.plan.in_channels
        mean = child.mean.double().view(-1).numpy()
        std = child.std.double().view(-1).numpy()
        if res != size and self.form is GraphForm.STANDARD:
            sizes = self.const("resize_sizes", np.array([res, res], dtype=np.int64))
            # Half-pixel bilinear without antialiasing is what F.interpolate(align_corners=False) computes.
            x = self.op("Resize", [x, "", "", sizes], "resize", mode="linear", axes=[2, 3],
                        coordinate_transformation_mode="half_pixel")
        if res == size or self.form is GraphForm.STANDARD:
            x = self.op("Sub", [x, self.const("mean", child.mean.numpy().astype(np.float32))], "normalise_sub")
            return self.op("Div", [x, self.const("std", child.std.numpy().astype(np.float32))], "normalise_div")
        # The resize is linear, X -> A X A^T: a convolution over the rows, one output channel per channel
        # and output row ([N, C*res, 1, size]), with the normalisation folded in (every row of A sums to 1),
        # then a MatMul over the columns. In ONNX Runtime this costs what Resize+Sub+Div cost.
        a = resize_matrix(size, res)
        w_rows = (a[None] / std[:, None, None]).reshape(c * res, 1, size, 1)
        b_rows = np.repeat(-mean / std, res)
        x = self.conv(x, w_rows, b_rows, 1, "resize_rows", groups=c, pads=[0, 0, 0, 0])
        shape = [1 if self.form is GraphForm.MOBILE else -1, c, res, size]
        x = self.op("Reshape", [x, self.const("resize_shape", np.array(shape, np.int64))], "resize_reshape")
        return self.op("MatMul", [x, self.const("resize_cols", a.T.astype(np.float32))], "resize_cols")


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().float().numpy()


def _np64(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().double().numpy()


def build_onnx(child: StaticChild, metadata: Mapping[str, str] | None = None,
               form: GraphForm | str = GraphForm.STANDARD) -> onnx.ModelProto:
    """The ONNX model of `child`: `images [N, C, H, W]` in [0, 1] -> `logits [N, classes]` (N = 1 in the
    mobile form)."""
    form = GraphForm(form)
    plan = child.plan
    g = _GraphBuilder(form)
    size = int(child.native_size)
    batch: str | int = 1 if form is GraphForm.MOBILE else "batch"
    x = g.preprocess(INPUT_NAME, child)
    x, f = g.act(g.conv_bn(x, child.stem, child.stem_bn, "stem"), child.stem_act)
    for i, blk in enumerate(child.blocks):
        x, f = g.block(x, blk, i, f), 1.0
    x, f = g.act(g.conv_bn(x, child.head, child.head_bn, "head"), plan.head_act)
    x = g.op("GlobalAveragePool", [x], "pool")
    if form is GraphForm.MOBILE:
        x = g.op("Reshape", [x, g.const("flat_shape", np.array([1, plan.head_width], np.int64))], "flatten")
    else:
        x = g.op("Flatten", [x], "flatten", axis=1)
    weight = g.const("classifier_w", (_np64(child.classifier.weight) * f).astype(np.float32))  # type: ignore[operator]
    bias = g.const("classifier_b", _np(child.classifier.bias))  # type: ignore[arg-type]
    g.nodes.append(helper.make_node("Gemm", [x, weight, bias], [OUTPUT_NAME], name="classifier", transB=1))
    graph = helper.make_graph(
        g.nodes,
        "nag_child",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, plan.in_channels, size, size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, plan.num_classes])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nag")
    model.ir_version = 8
    meta = {
        "nag.arch_json": child.arch.to_json(),
        "nag.arch_id": child.arch.arch_id,
        "nag.input": json.dumps({"name": INPUT_NAME, "shape": [1 if batch == 1 else "N", plan.in_channels, size,
                                                                size], "range": [0.0, 1.0], "dtype": "float32"}),
        **(metadata or {}),
        "nag.graph_form": form.value,  # a fact of the graph: not the caller's to change
    }
    helper.set_model_props(model, dict(meta))
    return model


def export_onnx(child: StaticChild, metadata: Mapping[str, str] | None = None, check: bool = True,
                form: GraphForm | str = GraphForm.STANDARD) -> bytes:
    """Serialised ONNX model of `child`, optionally checked with `onnx.checker` (full check)."""
    model = build_onnx(child, metadata, form)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
