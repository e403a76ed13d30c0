"""The elastic supernet: MBConv stages whose kernel, expansion, width and depth are chosen per call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from nag.space.arch import Architecture, biggest
from nag.space.block import BlockOps, Conv, ConvBN, Norm, block_ops
from nag.space.plan import child_plan
from nag.space.space import SearchSpace
from nag.supernet.block import MBConv
from nag.supernet.layers import (
    ElasticBatchNorm,
    ElasticConv,
    ElasticDepthwiseConv,
    activation,
    is_kernel_transform,
    is_size_transform,
)


def preprocess(x: torch.Tensor, resolution: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Native images in [0, 1] -> resized (bilinear, half-pixel) and normalised, channels_last."""
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=False)
    x = (x - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


def _smaller_map_sizes(space: SearchSpace) -> dict[tuple[int, int], tuple[int, ...]]:
    """Per layer (stage, index): the input map sizes of its depthwise conv at the resolutions below the
    largest, leaving out the size it sees at the largest."""
    full = biggest(space)
    largest = {(b.stage, b.index): b.h_in for b in child_plan(full, space).blocks}
    sizes: dict[tuple[int, int], set[int]] = {layer: set() for layer in largest}
    for resolution in space.resolutions:
        for b in child_plan(replace(full, resolution=resolution), space).blocks:
            sizes[b.stage, b.index].add(b.h_in)
    return {layer: tuple(sorted(found - {largest[layer]})) for layer, found in sizes.items()}


class ElasticMBConv(MBConv):
    """The MBConv block of `nag.space.block` with the weights of its biggest form `ops`; a call runs the
    ops of a child's block (prefix channels, cropped kernel)."""

    def __init__(self, ops: BlockOps, kernels: tuple[int, ...], map_sizes: tuple[int, ...] = ()):
        super().__init__()
        self.kernels = kernels
        self.map_sizes = map_sizes
        self._add_layers(ops)
        # BigNAS: zero-init the last BN of each residual block so every block starts as its shortcut.
        last = ops.main[-1]
        if isinstance(last, ConvBN):
            nn.init.zeros_(self.layer(last.bn.name).weight)

    def _make(self, layer: Conv | Norm) -> nn.Module:
        if isinstance(layer, Norm):
            return ElasticBatchNorm(layer.channels)
        if layer.depthwise:
            return ElasticDepthwiseConv(layer.c_out, self.kernels, layer.stride, self.map_sizes)
        return ElasticConv(layer.c_in, layer.c_out, layer.kernel, layer.stride, layer.bias)

    def _conv(self, x: torch.Tensor, conv: Conv) -> torch.Tensor:
        return self.layer(conv.name)(x, conv.kernel if conv.depthwise else conv.c_out)

    def forward(self, x: torch.Tensor, ops: BlockOps) -> torch.Tensor:
        return self.run(x, ops)


class Supernet(nn.Module):
    """Weights of the biggest child; `forward(x, arch)` runs any child of the space on native images."""

    def __init__(self, space: SearchSpace, size_transforms: bool = False):
        """`size_transforms`: give each depthwise layer a kernel matrix per input map size below the
        largest resolution's (the `size_transform` recipe); a supernet saved with them loads with them."""
        super().__init__()
        self.space = space
        inp = space.input
        self.register_buffer("mean", torch.tensor(inp.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(inp.std).view(1, -1, 1, 1), persistent=False)
        self.stem = ElasticConv(inp.channels, space.stem.max_width, space.stem.kernel, space.stem.stride)
        self.stem_bn = ElasticBatchNorm(space.stem.max_width)
        full = child_plan(biggest(space), space)
        smaller_sizes = _smaller_map_sizes(space) if size_transforms else {}
        stages: list[list[ElasticMBConv]] = [[] for _ in space.stages]
        for b in full.blocks:
            stages[b.stage].append(ElasticMBConv(block_ops(b), space.stages[b.stage].kernels,
                                                 smaller_sizes.get((b.stage, b.index), ())))
        self.stages = nn.ModuleList(nn.ModuleList(layers) for layers in stages)
        self.head = ElasticConv(full.head_in, space.head.width)
        self.head_bn = ElasticBatchNorm(space.head.width)
        self.classifier = nn.Linear(space.head.width, space.num_classes)
        nn.init.normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, arch: Architecture, dropout: bool = False) -> torch.Tensor:
        """Logits of child `arch` for native images `x` ([N, C, size, size], values in [0, 1])."""
        x = preprocess(x, arch.resolution, self.mean, self.std)
        x = activation(self.stem_bn(self.stem(x, arch.stem_width)), self.space.stem.act)
        for b in child_plan(arch, self.space).blocks:
            x = self.stages[b.stage][b.index](x, block_ops(b))
        x = activation(self.head_bn(self.head(x, self.space.head.width)), self.space.head.act)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        if dropout and self.space.dropout > 0:
            x = F.dropout(x, self.space.dropout, training=True)
        return self.classifier(x)

    def kernel_transforms(self) -> list[nn.Parameter]:
        """The elastic-kernel matrices of every depthwise layer (identity: plain centre crops)."""
        return [p for name, p in self.named_parameters() if is_kernel_transform(name)]

    def size_transforms(self) -> list[nn.Parameter]:
        """The per-map-size kernel matrices of every depthwise layer (identity: the shared kernels)."""
        return [p for name, p in self.named_parameters() if is_size_transform(name)]

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
