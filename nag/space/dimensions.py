"""The dimensions of the search space: their records, the built-in ones and the registry of added ones.

A built-in dimension is a field of `Architecture` or `StageArch` and its choice list a field of
`SearchSpace` or `StageSpec`. A registered dimension (`register_dimension`) lives in the `extra` map of
those classes instead, has a declared default, and acts on the network through `effect`: what its value
does to the plan of each block it covers. A space whose JSON has no choice list for a registered
dimension does not search it (its value is the default everywhere), so spaces, bundles and architectures
written before the dimension existed load and build the same network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # both import the registry from this module
    from nag.space.plan import BlockPlan
    from nag.space.space import SearchSpace


class Scope(Enum):
    GLOBAL = "global"  # one value for the network: a field of `Architecture`
    STAGE = "stage"  # one value per stage: a field of `StageArch`
    LAYER = "layer"  # one value per active layer of a stage: a tuple field of `StageArch`, `depth` long


# The stage dimension that sets how many layers a stage has, and so the length of its layer dimensions.
DEPTH = "depth"

V = TypeVar("V")


class FrozenMap(Mapping[str, V]):
    """An immutable, hashable mapping (spaces and architectures are hashed); equality ignores the order."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] = ()):
        self._items: dict[str, V] = dict(items)

    def __getitem__(self, key: str) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


NO_EXTRA: FrozenMap[Any] = FrozenMap()  # the `extra` of spaces and architectures without registered dimensions

# What a registered dimension's value does to one block's plan (`dataclasses.replace` on its fields).
Effect = Callable[["BlockPlan", int], "BlockPlan"]


@dataclass(frozen=True)
class Dimension:
    """One decision of an architecture, made once, per stage or per layer as its scope says."""

    name: str  # the field of `Architecture` (global) or of `StageArch`, and its key in the architecture's JSON
    scope: Scope
    source: str  # its choice list: an attribute path on `SearchSpace` / `StageSpec`; for a registered one,
    # its key in the space's JSON (top level for a global one, else each stage's object)
    family: str  # what `with_dimension_of` and the coarse grid move together: the stem's and the stages' widths
    # Registered dimensions only: the value wherever a space or an architecture lacks the dimension. It must
    # build the network of a space without the dimension (the effect returns the plan unchanged).
    default: int | None = None
    effect: Effect | None = None  # registered dimensions only: applied to every block the value covers

    @property
    def builtin(self) -> bool:
        return self.default is None

    def choices(self, space: SearchSpace, stage: int = 0) -> tuple[int, ...]:
        owner = space if self.scope is Scope.GLOBAL else space.stages[stage]
        if self.builtin:
            return attrgetter(self.source)(owner)
        return owner.extra.get(self.name, (self.default,))

    def default_value(self, depth: int) -> int | tuple[int, ...]:
        """The default as a value of this dimension in a stage of `depth` layers."""
        assert self.default is not None
        return (self.default,) * depth if self.scope is Scope.LAYER else self.default


# The built-in dimensions; each names a field of `Architecture`/`StageArch` (a test checks that they agree).
# Within a scope, this order (then the registered ones, in registration order) is the order of the
# tokens, of the JSON and of the validation.
SPACE_DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("resolution", Scope.GLOBAL, source="resolutions", family="resolution"),
    Dimension("stem_width", Scope.GLOBAL, source="stem.widths", family="width"),
    Dimension("depth", Scope.STAGE, source="depths", family="depth"),
    Dimension("width", Scope.STAGE, source="widths", family="width"),
    Dimension("kernels", Scope.LAYER, source="kernels", family="kernel"),
    Dimension("expansions", Scope.LAYER, source="expansions", family="expansion"),
)
BUILTIN_NAMES = frozenset(d.name for d in SPACE_DIMENSIONS)
_REGISTERED: dict[str, Dimension] = {}


def register_dimension(dimension: Dimension) -> Dimension:
    """Add a dimension to every space whose JSON gives its choice list (`dimension.source`)."""
    if dimension.builtin or dimension.effect is None:
        raise ValueError(f"dimension {dimension.name!r}: a registered dimension needs a default and an effect")
    taken = BUILTIN_NAMES | set(_REGISTERED) | {d.source for d in _REGISTERED.values()}
    if dimension.name in taken or dimension.source in taken:
        raise ValueError(f"dimension {dimension.name!r}: its name or source is taken already")
    _REGISTERED[dimension.name] = dimension
    return dimension


def unregister_dimension(name: str) -> None:
    """Remove a registered dimension (tests); spaces parsed while it was registered keep its choices."""
    del _REGISTERED[name]


def registered_dimensions() -> tuple[Dimension, ...]:
    return tuple(_REGISTERED.values())


def space_dimensions(space: SearchSpace) -> tuple[Dimension, ...]:
    """The dimensions `space` searches: the built-in ones, then each registered one its JSON gives choices for."""
    present = set(space.extra) | {name for stage in space.stages for name in stage.extra}
    return SPACE_DIMENSIONS + tuple(d for d in _REGISTERED.values() if d.name in present)


def of_scope(dimensions: Sequence[Dimension], *scopes: Scope) -> tuple[Dimension, ...]:
    return tuple(d for d in dimensions if d.scope in scopes)


def families(dimensions: Sequence[Dimension]) -> tuple[str, ...]:
    """The families in the order they first appear."""
    return tuple(dict.fromkeys(d.family for d in dimensions))


def read_value(owner: Any, dimension: Dimension) -> Any:
    """`dimension`'s value in an `Architecture` (global) or a `StageArch`: its field, its entry in `extra`, or
    the default."""
    if dimension.builtin:
        return getattr(owner, dimension.name)
    if dimension.name in owner.extra:
        return owner.extra[dimension.name]
    return dimension.default_value(getattr(owner, DEPTH, 0))
