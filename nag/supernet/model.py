"""The elastic supernet: MBConv stages whose kernel, expansion, width and depth are chosen per call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from nag.space.arch import Architecture
from nag.space.plan import se_width
from nag.space.space import SearchSpace
from nag.supernet.layers import ElasticBatchNorm, ElasticConv, ElasticDepthwiseConv, activation


def preprocess(x: torch.Tensor, resolution: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Native images in [0, 1] -> resized (bilinear, half-pixel) and normalised, channels_last."""
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


class ElasticMBConv(nn.Module):
    """Inverted residual block: expand 1x1, depthwise kxk, optional SE, project 1x1, plus shortcut."""

    def __init__(self, max_in: int, max_out: int, max_expansion: int, kernels: tuple[int, ...], stride: int,
                 se: bool, act: str, shortcut_conv: bool):
        super().__init__()
        max_mid = max_in * max_expansion
        self.act = act
        self.stride = stride
        self.expand = ElasticConv(max_in, max_mid)
        self.expand_bn = ElasticBatchNorm(max_mid)
        self.depthwise = ElasticDepthwiseConv(max_mid, kernels, stride)
        self.depthwise_bn = ElasticBatchNorm(max_mid)
        self.se_reduce = ElasticConv(max_mid, se_width(max_mid), bias=True) if se else None
        self.se_expand = ElasticConv(se_width(max_mid), max_mid, bias=True) if se else None
        self.project = ElasticConv(max_mid, max_out)
        self.project_bn = ElasticBatchNorm(max_out)
        # BigNAS: zero-init the last BN of each residual block so every block starts as its shortcut.
        nn.init.zeros_(self.project_bn.weight)
        self.shortcut = ElasticConv(max_in, max_out, stride=stride) if shortcut_conv else None
        self.shortcut_bn = ElasticBatchNorm(max_out) if shortcut_conv else None

    def forward(self, x: torch.Tensor, out_channels: int, expansion: int, kernel: int) -> torch.Tensor:
        mid = x.shape[1] * expansion
        y = activation(self.expand_bn(self.expand(x, mid)), self.act)
        y = activation(self.depthwise_bn(self.depthwise(y, kernel)), self.act)
        if self.se_reduce is not None and self.se_expand is not None:
            s = F.adaptive_avg_pool2d(y, 1)
            s = F.relu(self.se_reduce(s, se_width(mid)))
            y = y * F.hardsigmoid(self.se_expand(s, mid))
        y = self.project_bn(self.project(y, out_channels))
        if self.shortcut is not None and self.shortcut_bn is not None:
            return y + self.shortcut_bn(self.shortcut(x, out_channels))
        return y + x


class Supernet(nn.Module):
    """Weights of the biggest child; `forward(x, arch)` runs any child of the space on native images."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        inp = space.input
        self.register_buffer("mean", torch.tensor(inp.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(inp.std).view(1, -1, 1, 1), persistent=False)
        self.stem = ElasticConv(inp.channels, space.stem.max_width, space.stem.kernel, space.stem.stride)
        self.stem_bn = ElasticBatchNorm(space.stem.max_width)
        stages = []
        c_in = space.stem.max_width
        for spec in space.stages:
            layers = []
            for j in range(spec.max_depth):
                layers.append(
                    ElasticMBConv(
                        max_in=c_in,
                        max_out=spec.max_width,
                        max_expansion=spec.max_expansion,
                        kernels=spec.kernels,
                        stride=spec.stride if j == 0 else 1,
                        se=spec.se,
                        act=spec.act,
                        shortcut_conv=j == 0,
                    )
                )
                c_in = spec.max_width
            stages.append(nn.ModuleList(layers))
        self.stages = nn.ModuleList(stages)
        self.head = ElasticConv(c_in, space.head.width)
        self.head_bn = ElasticBatchNorm(space.head.width)
        self.classifier = nn.Linear(space.head.width, space.num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, arch: Architecture, dropout: bool = False) -> torch.Tensor:
        """Logits of child `arch` for native images `x` ([N, C, size, size], values in [0, 1])."""
        x = preprocess(x, arch.resolution, self.mean, self.std)
        x = activation(self.stem_bn(self.stem(x, arch.stem_width)), self.space.stem.act)
        for stage_arch, layers in zip(arch.stages, self.stages, strict=True):
            for j in range(stage_arch.depth):
                x = layers[j](x, stage_arch.width, stage_arch.expansions[j], stage_arch.kernels[j])
        x = activation(self.head_bn(self.head(x, self.space.head.width)), self.space.head.act)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if dropout and self.space.dropout > 0:
            x = F.dropout(x, self.space.dropout, training=True)
        return self.classifier(x)

    def kernel_transforms(self) -> list[nn.Parameter]:
        """The elastic-kernel matrices of every depthwise layer (identity: plain centre crops)."""
        return [p for name, p in self.named_parameters() if ".kernel_transforms." in name]

    def batchnorms(self) -> Iterator[ElasticBatchNorm]:
        return (m for m in self.modules() if isinstance(m, ElasticBatchNorm))

    @contextmanager
    def calibration_mode(self) -> Iterator[None]:
        """Reset BN statistics and accumulate cumulative averages while inside; eval mode after."""
        was_training = self.training
        for bn in self.batchnorms():
            bn.reset_running_stats()
            bn.accumulate = True
        self.train()
        try:
            yield
        finally:
            for bn in self.batchnorms():
                bn.accumulate = False
            self.train(was_training)

    @torch.no_grad()
    def calibrate(self, arch: Architecture, images: torch.Tensor, batch_size: int = 250) -> None:
        """Re-calibrate the BN statistics of child `arch` on `images` (cumulative average)."""
        with self.calibration_mode():
            for start in range(0, len(images), batch_size):
                self(images[start : start + batch_size], arch)
