"""The declaration of the space's dimensions: it matches the architecture's fields and the space's choice
lists, and every declared dimension reaches the JSON, tokens, encoding, extremes, mutation and neighbours."""

from __future__ import annotations

import json
import random
from dataclasses import fields

import pytest
import torch

from nag.pnag.encoding import TokenEncoder
from nag.space import (
    DIMENSIONS,
    SPACE_DIMENSIONS,
    Architecture,
    Dimension,
    Scope,
    StageArch,
    StageSpec,
    assemble,
    biggest,
    decisions,
    from_tokens,
    load_space,
    mutate,
    smallest,
    to_tokens,
    validate,
    with_dimension_of,
)
from nag.space.dimensions import DEPTH
from nag.space.space import SearchSpace


def _variant() -> SearchSpace:
    """Three stages, other depths and choice lists than the default space."""
    raw = json.loads(load_space().to_json())
    raw["resolutions"] = [20, 28]
    raw["stages"] = raw["stages"][:3]
    raw["stages"][0]["depths"] = [1, 3]
    raw["stages"][1]["kernels"] = [3, 5]
    raw["stages"][2]["expansions"] = [2, 6]
    return SearchSpace.from_dict(raw)


SPACES = {"default": load_space(), "variant": _variant()}


def _values(arch: Architecture, dim: Dimension) -> list[int]:
    """Every value `arch` holds for `dim`, stage by stage and layer by layer."""
    if dim.scope is Scope.GLOBAL:
        return [arch.value(dim)]
    per_stage = [stage.value(dim) for stage in arch.stages]
    return [v for value in per_stage for v in (value if dim.scope is Scope.LAYER else (value,))]


def test_the_declaration_matches_the_architecture_and_the_space() -> None:
    names = [d.name for d in SPACE_DIMENSIONS]
    assert len(set(names)) == len(names)
    # `extra` holds the registered dimensions' values (tests/test_extending.py).
    assert [d.name for d in SPACE_DIMENSIONS if d.scope is Scope.GLOBAL] == [
        f.name for f in fields(Architecture) if f.name not in ("stages", "extra")]
    assert [d.name for d in SPACE_DIMENSIONS if d.scope is not Scope.GLOBAL] == [
        f.name for f in fields(StageArch) if f.name != "extra"]
    assert all(d.builtin for d in SPACE_DIMENSIONS)
    assert DIMENSIONS == ("resolution", "width", "depth", "kernel", "expansion")
    space = SPACES["default"]
    spec = space.stages[0]
    # Every choice list of a stage is some dimension's source: a new one cannot be left undeclared.
    choice_lists = {f.name for f in fields(StageSpec) if isinstance(getattr(spec, f.name), tuple)}
    assert choice_lists == {d.source for d in SPACE_DIMENSIONS if d.scope is not Scope.GLOBAL}
    for d in SPACE_DIMENSIONS:
        for i in range(len(space.stages)):
            choices = d.choices(space, i)
            assert choices and all(isinstance(c, int) for c in choices) and list(choices) == sorted(choices)


@pytest.mark.parametrize("space_name", sorted(SPACES))
@pytest.mark.parametrize("dim", SPACE_DIMENSIONS, ids=lambda d: d.name)
def test_every_declared_dimension_drives_the_space(dim: Dimension, space_name: str) -> None:
    check_dimension_drives_the_space(dim, SPACES[space_name])


def check_dimension_drives_the_space(dim: Dimension, space: SearchSpace) -> None:
    """The checks of one dimension in one space (also run on registered dimensions by test_extending)."""
    low, high = smallest(space), biggest(space)
    n_stages = len(space.stages)

    def choices(stage: int | None) -> tuple[int, ...]:
        return dim.choices(space, stage or 0)

    # Extremes: every value at the smallest or the biggest choice.
    assert _values(low, dim) == [min(choices(s)) for s in _stages_of(dim, low)]
    assert _values(high, dim) == [max(choices(s)) for s in _stages_of(dim, high)]

    # JSON: the dimension's field, under its name.
    raw = low.to_dict()
    assert dim.name in (raw if dim.scope is Scope.GLOBAL else raw["stages"][0])

    # Decisions: one per network, per stage or per layer slot, named after the dimension.
    mine = [(pos, d) for pos, d in enumerate(decisions(space)) if d.dimension == dim]
    slots = {Scope.GLOBAL: 1, Scope.STAGE: n_stages, Scope.LAYER: sum(s.max_depth for s in space.stages)}
    assert len(mine) == slots[dim.scope]
    assert all(d.name.startswith("stages[" if dim.scope is not Scope.GLOBAL else dim.name) for _, d in mine)
    assert all(f".{dim.name}" in d.name for _, d in mine if dim.scope is not Scope.GLOBAL)

    # Tokens and encoding: the smallest child with only this dimension at its biggest choice differs from
    # the smallest child exactly in this dimension's active decisions, and both round-trip.
    def only_this(d: Dimension, _stage: int | None, options: tuple[int, ...]) -> int:
        return max(options) if d == dim else min(options)

    changed = assemble(space, only_this)
    validate(changed, space)
    assert from_tokens(to_tokens(changed, space), space) == changed
    diff = [pos for pos, (a, b) in enumerate(zip(to_tokens(low, space), to_tokens(changed, space), strict=True))
            if a != b]
    assert diff and set(diff) <= {pos for pos, _ in mine}
    encoder = TokenEncoder(space)
    enc = encoder.encode_archs([low, changed])
    blocks = {pos for pos in range(encoder.length)
              if not torch.equal(enc[0, encoder.offsets[pos]:encoder.offsets[pos] + encoder.sizes[pos]],
                                 enc[1, encoder.offsets[pos]:encoder.offsets[pos] + encoder.sizes[pos]])}
    active = encoder.active(encoder.tokens([low, changed]))
    activated = {pos for pos in range(encoder.length) if active[0, pos] != active[1, pos]}
    assert blocks == set(diff) | activated
    assert bool(activated) == (dim.name == DEPTH)  # only the depth gates layers

    # Mutation reaches it, and the neighbour of its family takes it from the other end.
    rng = random.Random(0)
    assert any(_values(mutate(low, space, rng, prob=0.5), dim) != _values(low, dim) for _ in range(50))
    neighbour = with_dimension_of(low, high, dim.family, space)
    assert _values(neighbour, dim) == [max(choices(s)) for s in _stages_of(dim, neighbour)] != _values(low, dim)


def _stages_of(dim: Dimension, arch: Architecture) -> list[int | None]:
    """The stage of each value `_values` lists."""
    if dim.scope is Scope.GLOBAL:
        return [None]
    if dim.scope is Scope.STAGE:
        return list(range(len(arch.stages)))
    return [i for i, stage in enumerate(arch.stages) for _ in range(stage.depth)]
