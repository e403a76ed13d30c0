"""The record that declares one dimension of the search space (the declaration itself: `nag.space.arch`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter

from nag.space.space import SearchSpace


class Scope(Enum):
    GLOBAL = "global"  # one value for the network: a field of `Architecture`
    STAGE = "stage"  # one value per stage: a field of `StageArch`
    LAYER = "layer"  # one value per active layer of a stage: a tuple field of `StageArch`, `depth` long


# The stage dimension that sets how many layers a stage has, and so the length of its layer dimensions.
DEPTH = "depth"


@dataclass(frozen=True)
class Dimension:
    """One decision of an architecture, made once, per stage or per layer as its scope says."""

    name: str  # the field of `Architecture` (global) or of `StageArch`, and its key in the architecture's JSON
    scope: Scope
    source: str  # its choice list: an attribute path on `SearchSpace` (global) or on each `StageSpec`
    family: str  # what `with_dimension_of` and the coarse grid move together: the stem's and the stages' widths

    def choices(self, space: SearchSpace, stage: int = 0) -> tuple[int, ...]:
        owner = space if self.scope is Scope.GLOBAL else space.stages[stage]
        return attrgetter(self.source)(owner)


def of_scope(dimensions: Sequence[Dimension], *scopes: Scope) -> tuple[Dimension, ...]:
    return tuple(d for d in dimensions if d.scope in scopes)


def families(dimensions: Sequence[Dimension]) -> tuple[str, ...]:
    """The families in the order they first appear."""
    return tuple(dict.fromkeys(d.family for d in dimensions))
