"""The concrete layer plan of a child, and the analytic MACs and parameter counts derived from it.

The plan is the single description that the supernet, the static child, the ONNX builder and the cost
model all read, so that they cannot disagree about shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

from nag.space.arch import Architecture, StageArch
from nag.space.dimensions import Dimension, Scope, space_dimensions
from nag.space.space import SearchSpace


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of `divisor`, never below it and never more than 10% down."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def se_width(mid: int) -> int:
    """Width of the squeeze-and-excitation bottleneck for `mid` channels."""
    return make_divisible(mid / 4)


def conv_out(size: int, stride: int) -> int:
    """Output size of a 'same'-padded convolution with an odd kernel."""
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class BlockPlan:
    stage: int
    index: int
    c_in: int
    c_out: int
    mid: int
    kernel: int
    stride: int
    se_mid: int  # 0 when the stage has no squeeze-and-excitation
    act: str
    shortcut_conv: bool  # projection shortcut (1x1 conv + BN) instead of identity
    h_in: int
    h_out: int


@dataclass(frozen=True)
class ChildPlan:
    resolution: int
    in_channels: int
    stem_width: int
    stem_kernel: int
    stem_stride: int
    stem_act: str
    stem_out: int
    blocks: tuple[BlockPlan, ...]
    head_in: int
    head_width: int
    head_act: str
    head_size: int
    num_classes: int


def _with_effects(b: BlockPlan, registered: tuple[Dimension, ...], arch: Architecture, stage: StageArch
                  ) -> BlockPlan:
    """`b` changed by the registered dimensions' values at its layer (in registration order). An effect may
    not change where the block sits or the shapes it passes on: the next block and the head are planned
    from the built-in dimensions alone."""
    fixed = (b.stage, b.index, b.c_in, b.c_out, b.stride, b.h_in, b.h_out)
    for d in registered:
        assert d.effect is not None
        value = (arch if d.scope is Scope.GLOBAL else stage).value(d)
        b = d.effect(b, value[b.index] if d.scope is Scope.LAYER else value)
        if (b.stage, b.index, b.c_in, b.c_out, b.stride, b.h_in, b.h_out) != fixed:
            raise ValueError(f"dimension {d.name!r} changed a block's position, channels or map size")
    return b


def child_plan(arch: Architecture, space: SearchSpace) -> ChildPlan:
    registered = tuple(d for d in space_dimensions(space) if not d.builtin)
    size = conv_out(arch.resolution, space.stem.stride)
    stem_out = size
    c = arch.stem_width
    blocks: list[BlockPlan] = []
    for i, (stage, spec) in enumerate(zip(arch.stages, space.stages, strict=True)):
        for j in range(stage.depth):
            stride = spec.stride if j == 0 else 1
            mid = c * stage.expansions[j]
            out_size = conv_out(size, stride)
            blocks.append(_with_effects(
                BlockPlan(
                    stage=i,
                    index=j,
                    c_in=c,
                    c_out=stage.width,
                    mid=mid,
                    kernel=stage.kernels[j],
                    stride=stride,
                    se_mid=se_width(mid) if spec.se else 0,
                    act=spec.act,
                    # The first layer of a stage always has the projection shortcut (BigNAS adds a
                    # skip at each stage transition); the supernet holds it for every width choice.
                    shortcut_conv=j == 0,
                    h_in=size,
                    h_out=out_size,
                ), registered, arch, stage))
            c, size = stage.width, out_size
    return ChildPlan(
        resolution=arch.resolution,
        in_channels=space.input.channels,
        stem_width=arch.stem_width,
        stem_kernel=space.stem.kernel,
        stem_stride=space.stem.stride,
        stem_act=space.stem.act,
        stem_out=stem_out,
        blocks=tuple(blocks),
        head_in=c,
        head_width=space.head.width,
        head_act=space.head.act,
        head_size=size,
        num_classes=space.num_classes,
    )


def count_macs(arch: Architecture, space: SearchSpace) -> int:
    """Multiply-accumulates of convolutions and linear layers for one image (BN folded, as deployed)."""
    p = child_plan(arch, space)
    macs = p.stem_out**2 * p.in_channels * p.stem_width * p.stem_kernel**2
    for b in p.blocks:
        macs += b.h_in**2 * b.c_in * b.mid  # expand
        macs += b.h_out**2 * b.mid * b.kernel**2  # depthwise
        macs += 2 * b.mid * b.se_mid  # squeeze-and-excitation on the pooled vector
        macs += b.h_out**2 * b.mid * b.c_out  # project
        if b.shortcut_conv:
            macs += b.h_out**2 * b.c_in * b.c_out
    macs += p.head_size**2 * p.head_in * p.head_width
    macs += p.head_width * p.num_classes
    return macs


def count_params(arch: Architecture, space: SearchSpace) -> int:
    """Trainable parameters of the static child (convolutions without bias, each followed by BN)."""
    p = child_plan(arch, space)
    params = p.in_channels * p.stem_width * p.stem_kernel**2 + 2 * p.stem_width
    for b in p.blocks:
        params += b.c_in * b.mid + 2 * b.mid
        params += b.mid * b.kernel**2 + 2 * b.mid
        if b.se_mid:
            params += b.mid * b.se_mid + b.se_mid + b.se_mid * b.mid + b.mid
        params += b.mid * b.c_out + 2 * b.c_out
        if b.shortcut_conv:
            params += b.c_in * b.c_out + 2 * b.c_out
    params += p.head_in * p.head_width + 2 * p.head_width
    params += p.head_width * p.num_classes + p.num_classes
    return params
