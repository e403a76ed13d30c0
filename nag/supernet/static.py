"""Static children: plain `nn.Module`s with weights sliced and copied out of the supernet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nag.space.arch import Architecture
from nag.space.plan import BlockPlan, ChildPlan, child_plan
from nag.supernet.layers import ElasticBatchNorm, ElasticConv, activation
from nag.supernet.model import ElasticMBConv, Supernet, preprocess


def _bn(channels: int) -> nn.BatchNorm2d:
    # momentum=None: calibration keeps a cumulative average over its batches (AttentiveNAS, BigNAS).
    return nn.BatchNorm2d(channels, momentum=None)


class StaticMBConv(nn.Module):
    def __init__(self, b: BlockPlan):
        super().__init__()
        self.act = b.act
        self.expand = nn.Conv2d(b.c_in, b.mid, 1, bias=False)
        self.expand_bn = _bn(b.mid)
        self.depthwise = nn.Conv2d(b.mid, b.mid, b.kernel, b.stride, b.kernel // 2, groups=b.mid, bias=False)
        self.depthwise_bn = _bn(b.mid)
        self.se_reduce = nn.Conv2d(b.mid, b.se_mid, 1) if b.se_mid else None
        self.se_expand = nn.Conv2d(b.se_mid, b.mid, 1) if b.se_mid else None
        self.project = nn.Conv2d(b.mid, b.c_out, 1, bias=False)
        self.project_bn = _bn(b.c_out)
        self.shortcut = nn.Conv2d(b.c_in, b.c_out, 1, b.stride, bias=False) if b.shortcut_conv else None
        self.shortcut_bn = _bn(b.c_out) if b.shortcut_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = activation(self.expand_bn(self.expand(x)), self.act)
        y = activation(self.depthwise_bn(self.depthwise(y)), self.act)
        if self.se_reduce is not None and self.se_expand is not None:
            s = F.relu(self.se_reduce(F.adaptive_avg_pool2d(y, 1)))
            y = y * F.hardsigmoid(self.se_expand(s))
        y = self.project_bn(self.project(y))
        if self.shortcut is not None and self.shortcut_bn is not None:
            return y + self.shortcut_bn(self.shortcut(x))
        return y + x


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


def _copy_block(dst: StaticMBConv, src: ElasticMBConv, b: BlockPlan) -> None:
    _copy_conv(dst.expand, src.expand)
    _copy_bn(dst.expand_bn, src.expand_bn)
    dst.depthwise.weight.copy_(src.depthwise.active_weight(b.mid, b.kernel))
    _copy_bn(dst.depthwise_bn, src.depthwise_bn)
    if dst.se_reduce is not None and src.se_reduce is not None:
        _copy_conv(dst.se_reduce, src.se_reduce)
    if dst.se_expand is not None and src.se_expand is not None:
        _copy_conv(dst.se_expand, src.se_expand)
    _copy_conv(dst.project, src.project)
    _copy_bn(dst.project_bn, src.project_bn)
    if dst.shortcut is not None and src.shortcut is not None and dst.shortcut_bn is not None \
            and src.shortcut_bn is not None:
        _copy_conv(dst.shortcut, src.shortcut)
        _copy_bn(dst.shortcut_bn, src.shortcut_bn)


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
        _copy_block(next(blocks), supernet.stages[b.stage][b.index], b)
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
