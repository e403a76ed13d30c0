"""Children one dimension away from another: `base` with one dimension taken from `other`."""

from __future__ import annotations

from nag.space.arch import SPACE_DIMENSIONS, Architecture, assemble
from nag.space.dimensions import Dimension, Scope, families
from nag.space.space import SearchSpace

DIMENSIONS = families(SPACE_DIMENSIONS)  # the built-in ones: resolution, width, depth, kernel, expansion


def with_dimension_of(base: Architecture, other: Architecture, dimension: str, space: SearchSpace) -> Architecture:
    """`base` with one dimension copied from `other`; both have one kernel and expansion per stage (the
    smallest and the biggest child), so layers added by a deeper copy repeat `base`'s choice."""
    def pick(dim: Dimension, stage: int | None, _choices: tuple[int, ...]) -> int:
        source = other if dim.family == dimension else base
        value = (source if stage is None else source.stages[stage]).value(dim)
        return value[0] if dim.scope is Scope.LAYER else value

    return Architecture.from_dict(assemble(space, pick).to_dict(), space)
