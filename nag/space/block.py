"""The MBConv block, written once: a typed op sequence derived from the block's plan.

The supernet (`nag.supernet.model`), the static child (`nag.supernet.static`) and the ONNX builder
(`nag.export.onnx_builder`) interpret this sequence with one small function per op type, so a change to
the block (an op more, a new dimension) is made in `block_ops` alone.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from nag.space.plan import BlockPlan


@dataclass(frozen=True)
class Conv:
    """A 'same'-padded convolution (padding kernel // 2); `groups == c_in == c_out` makes it depthwise."""

    name: str  # the module's attribute name in the supernet and the static child
    c_in: int
    c_out: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    bias: bool = False

    @property
    def depthwise(self) -> bool:
        return self.groups > 1


@dataclass(frozen=True)
class Norm:
    """BatchNorm over `channels`."""

    name: str
    channels: int


@dataclass(frozen=True)
class ConvBN:
    """`conv`, then BatchNorm (the module `<conv.name>_bn`), then the activation `act` (None: linear)."""

    conv: Conv
    act: str | None = None

    @property
    def bn(self) -> Norm:
        return Norm(f"{self.conv.name}_bn", self.conv.c_out)


@dataclass(frozen=True)
class SqueezeExcite:
    """x * hardsigmoid(expand(relu(reduce(global average pool of x)))); both 1x1 convolutions with bias."""

    reduce: Conv
    expand: Conv


Op = ConvBN | SqueezeExcite


@dataclass(frozen=True)
class BlockOps:
    """The block computes main(x) + shortcut(x): `main` in order, the shortcut the identity when None."""

    main: tuple[Op, ...]
    shortcut: ConvBN | None

    def layers(self) -> tuple[Conv | Norm, ...]:
        """Every layer with weights, in the order the modules are created: the supernet's random
        initialisation and its parameter order follow it."""
        out: list[Conv | Norm] = []
        for op in (*self.main, *(() if self.shortcut is None else (self.shortcut,))):
            out += [op.conv, op.bn] if isinstance(op, ConvBN) else [op.reduce, op.expand]
        return tuple(out)


@functools.lru_cache(maxsize=4096)  # the supernet asks on every forward; the values are immutable
def block_ops(b: BlockPlan) -> BlockOps:
    """Inverted residual: expand 1x1, depthwise kxk, optional squeeze-excitation, linear project 1x1, and
    a projection shortcut (1x1 conv + BN, strided) or the identity."""
    main: list[Op] = [
        ConvBN(Conv("expand", b.c_in, b.mid), b.act),
        ConvBN(Conv("depthwise", b.mid, b.mid, b.kernel, b.stride, groups=b.mid), b.act),
    ]
    if b.se_mid:
        main.append(SqueezeExcite(Conv("se_reduce", b.mid, b.se_mid, bias=True),
                                  Conv("se_expand", b.se_mid, b.mid, bias=True)))
    main.append(ConvBN(Conv("project", b.mid, b.c_out)))
    shortcut = ConvBN(Conv("shortcut", b.c_in, b.c_out, stride=b.stride)) if b.shortcut_conv else None
    return BlockOps(tuple(main), shortcut)
