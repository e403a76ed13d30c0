"""The MBConv block in PyTorch: its modules, named after the ops of `nag.space.block`, and one
interpreter of the op sequence shared by the supernet's elastic block and the static child's block."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nag.space.block import BlockOps, Conv, ConvBN, Norm, Op, SqueezeExcite
from nag.supernet.layers import activation


class MBConv(nn.Module):
    """Holds one module per layer of an op sequence; subclasses say how a layer is made and a conv run."""

    def _add_layers(self, ops: BlockOps) -> None:
        for layer in ops.layers():
            self.add_module(layer.name, self._make(layer))

    def _make(self, layer: Conv | Norm) -> nn.Module:
        raise NotImplementedError

    def _conv(self, x: torch.Tensor, conv: Conv) -> torch.Tensor:
        raise NotImplementedError

    def layer(self, name: str) -> nn.Module:
        return self._modules[name]  # type: ignore[return-value]

    def _op(self, x: torch.Tensor, op: Op) -> torch.Tensor:
        if isinstance(op, ConvBN):
            y = self.layer(op.bn.name)(self._conv(x, op.conv))
            return y if op.act is None else activation(y, op.act)
        if isinstance(op, SqueezeExcite):
            s = F.relu(self._conv(F.adaptive_avg_pool2d(x, 1), op.reduce))
            return x * F.hardsigmoid(self._conv(s, op.expand))
        raise TypeError(f"unknown op {op!r}")

    def run(self, x: torch.Tensor, ops: BlockOps) -> torch.Tensor:
        y = x
        for op in ops.main:
            y = self._op(y, op)
        return y + (x if ops.shortcut is None else self._op(x, ops.shortcut))
