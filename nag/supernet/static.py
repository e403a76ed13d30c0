"""Static children: plain `nn.Module`s with weights sliced and copied out of the supernet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nag.space.arch import Architecture
from nag.space.block import Conv, Norm, block_ops
from nag.space.plan import BlockPlan, ChildPlan, child_plan
from nag.supernet.block import MBConv
from nag.supernet.layers import ElasticBatchNorm, ElasticConv, activation
from nag.supernet.model import ElasticMBConv, Supernet, preprocess


def _bn(channels: int) -> nn.BatchNorm2d:
    # momentum=None: calibration keeps a cumulative average over its batches (AttentiveNAS, BigNAS).
    return nn.BatchNorm2d(channels, momentum=None)


class StaticMBConv(MBConv):
    """The MBConv block of `nag.space.block` with plain layers of a child's sizes."""

    def __init__(self, b: BlockPlan):
        super().__init__()
        self.ops = block_ops(b)
        self._add_layers(self.ops)

    def _make(self, layer: Conv | Norm) -> nn.Module:
        if isinstance(layer, Norm):
            return _bn(layer.channels)
        return nn.Conv2d(layer.c_in, layer.c_out, layer.kernel, layer.stride, layer.kernel // 2, groups=layer.groups,
                         bias=layer.bias)

    def _conv(self, x: torch.Tensor, conv: Conv) -> torch.Tensor:
        return self.layer(conv.name)(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, self.ops)


class StaticChild(nn.Module):
    """A deployable child: takes native images in [0, 1], resizes and normalises inside."""

    def __init__(self, arch: Architecture, plan: ChildPlan, mean: tuple[float, ...], std: tuple[float, ...],
                 stem_act: str, native_size: int):
        super().__init__()
        self.arch = arch
        self.native_size = native_size
        self.plan = plan
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.stem_act = stem_act
        self.stem = nn.Conv2d(plan.in_channels, plan.stem_width, plan.stem_kernel, plan.stem_stride,
                              plan.stem_kernel // 2, bias=False)
        self.stem_bn = _bn(plan.stem_width)
        self.blocks = nn.ModuleList(StaticMBConv(b) for b in plan.blocks)
        self.head = nn.Conv2d(plan.head_in, plan.head_width, 1, bias=False)
        self.head_bn = _bn(plan.head_width)
        self.classifier = nn.Linear(plan.head_width, plan.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = preprocess(x, self.plan.resolution, self.mean, self.std)
        x = activation(self.stem_bn(self.stem(x)), self.stem_act)
        for block in self.blocks:
            x = block(x)
        x = activation(self.head_bn(self.head(x)), self.plan.head_act)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _copy_conv(dst: nn.Conv2d, src: ElasticConv) -> None:
    out_c, in_c = dst.weight.shape[:2]
    dst.weight.copy_(src.weight[:out_c, :in_c])
    if dst.bias is not None and src.bias is not None:
        dst.bias.copy_(src.bias[:out_c])


def _copy_bn(dst: nn.BatchNorm2d, src: ElasticBatchNorm) -> None:
    c = dst.num_features
    dst.weight.copy_(src.weight[:c])
    dst.bias.copy_(src.bias[:c])
    dst.running_mean.copy_(src.running_mean[:c])
    dst.running_var.copy_(src.running_var[:c])


def _copy_block(dst: StaticMBConv, src: ElasticMBConv, map_size: int) -> None:
    for layer in dst.ops.layers():
        out, elastic = dst.layer(layer.name), src.layer(layer.name)
        if isinstance(layer, Norm):
            _copy_bn(out, elastic)
        elif layer.depthwise:
            out.weight.copy_(elastic.active_weight(layer.c_out, layer.kernel, map_size))
        else:
            _copy_conv(out, elastic)


@torch.no_grad()
def extract_child(supernet: Supernet, arch: Architecture) -> StaticChild:
    """Slice `arch` out of the supernet: copied weights and the supernet's current BN statistics."""
    space = supernet.space
    plan = child_plan(arch, space)
    child = StaticChild(arch, plan, space.input.mean, space.input.std, space.stem.act, space.input.size)
    _copy_conv(child.stem, supernet.stem)
    _copy_bn(child.stem_bn, supernet.stem_bn)
    blocks = iter(child.blocks)
    for b in plan.blocks:
        _copy_block(next(blocks), supernet.stages[b.stage][b.index], b.h_in)
    _copy_conv(child.head, supernet.head)
    _copy_bn(child.head_bn, supernet.head_bn)
    child.classifier.load_state_dict(supernet.classifier.state_dict())
    child.to(memory_format=torch.channels_last)
    return child.eval()


@torch.no_grad()
def calibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 250) -> nn.Module:
    """Reset every BatchNorm and re-estimate its statistics as a cumulative average over `images`."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for start in range(0, len(images), batch_size):
        model(images[start : start + batch_size])
    return model.eval()


def child(supernet: Supernet, arch: Architecture, calibration_images: torch.Tensor | None,
          batch_size: int = 250) -> StaticChild:
    """The deployable child of `arch`: sliced, copied and (given images) BN re-calibrated on them."""
    static = extract_child(supernet, arch)
    if calibration_images is not None:
        calibrate_bn(static, calibration_images, batch_size)
    return static
