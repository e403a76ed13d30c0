"""Children one dimension away from another: `base` with one dimension taken from `other`."""

from __future__ import annotations

from nag.space.arch import Architecture, StageArch
from nag.space.space import SearchSpace

DIMENSIONS = ("resolution", "width", "depth", "kernel", "expansion")


def with_dimension_of(base: Architecture, other: Architecture, dimension: str, space: SearchSpace) -> Architecture:
    """`base` with one dimension copied from `other`; both have one kernel and expansion per stage (the
    smallest and the biggest child), so layers added by a deeper copy repeat `base`'s choice."""
    def pick(mine: int, theirs: int, dim: str) -> int:
        return theirs if dim == dimension else mine

    stages = []
    for mine, theirs in zip(base.stages, other.stages, strict=True):
        depth = pick(mine.depth, theirs.depth, "depth")
        kernel = pick(mine.kernels[0], theirs.kernels[0], "kernel")
        expansion = pick(mine.expansions[0], theirs.expansions[0], "expansion")
        stages.append(StageArch(depth, pick(mine.width, theirs.width, "width"), (kernel,) * depth,
                                (expansion,) * depth))
    arch = Architecture(pick(base.resolution, other.resolution, "resolution"),
                        pick(base.stem_width, other.stem_width, "width"), tuple(stages))
    return Architecture.from_dict(arch.to_dict(), space)
