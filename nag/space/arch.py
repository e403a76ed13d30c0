"""Architectures: immutable values of a search space, their JSON, ids, tokens, sampling and mutation.

The dimensions of the space are declared once, in `nag.space.dimensions` (`SPACE_DIMENSIONS` and the
registered ones): the JSON, the validation, the tokens, sampling, the extremes and mutation below iterate
the dimensions a space searches (`space_dimensions`), as do the encoder, the one-dimension neighbours and
the coarse search grid.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nag.errors import ArchitectureError
from nag.space.dimensions import (
    BUILTIN_NAMES,
    DEPTH,
    NO_EXTRA,
    SPACE_DIMENSIONS,
    Dimension,
    FrozenMap,
    Scope,
    of_scope,
    read_value,
    registered_dimensions,
    space_dimensions,
)
from nag.space.space import SearchSpace


@dataclass(frozen=True)
class StageArch:
    """The choices of one stage: its depth, width and the kernel and expansion of each active layer."""

    depth: int
    width: int
    kernels: tuple[int, ...]
    expansions: tuple[int, ...]
    # Registered dimensions' values (layer ones as tuples), only those the space searches: a dimension
    # missing here has its default.
    extra: FrozenMap[int | tuple[int, ...]] = NO_EXTRA

    def value(self, dimension: Dimension) -> Any:
        return read_value(self, dimension)

    def to_dict(self) -> dict[str, Any]:
        return {**{d.name: list(getattr(self, d.name)) if d.scope is Scope.LAYER else getattr(self, d.name)
                   for d in _PER_STAGE},
                **{name: list(v) if isinstance(v, tuple) else v for name, v in self.extra.items()}}


@dataclass(frozen=True)
class Architecture:
    """One child of a search space. Build it with `from_dict`/`sample_*` so that it is validated."""

    resolution: int
    stem_width: int
    stages: tuple[StageArch, ...]
    extra: FrozenMap[int] = NO_EXTRA  # registered global dimensions' values, as in `StageArch.extra`

    def value(self, dimension: Dimension) -> Any:
        return read_value(self, dimension)

    def to_dict(self) -> dict[str, Any]:
        return {**{d.name: getattr(self, d.name) for d in _GLOBAL}, **self.extra,
                "stages": [s.to_dict() for s in self.stages]}

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no white space; equal architectures give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @functools.cached_property
    def arch_id(self) -> str:
        """A stable id: the first 16 hex digits of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, raw: dict[str, Any], space: SearchSpace) -> Architecture:
        """Validated; a registered dimension the space searches and `raw` lacks takes its default (JSON
        written before the dimension existed), one the space does not search must be at its default."""
        dims = space_dimensions(space)
        try:
            for d in registered_dimensions():
                if d not in dims:
                    _check_unsearched(raw, d)
            arch = _architecture(
                {d.name: _as_int(_get(raw, d, 0), d.name) for d in of_scope(dims, Scope.GLOBAL)},
                tuple(_stage({d.name: _read(s, d, f"stages[{i}].{d.name}")
                              for d in of_scope(dims, Scope.STAGE, Scope.LAYER)})
                      for i, s in enumerate(raw["stages"])),
            )
        except KeyError as exc:
            raise ArchitectureError(f"architecture lacks the field {exc.args[0]!r}") from None
        except TypeError as exc:
            raise ArchitectureError(f"architecture is malformed: {exc}") from None
        validate(arch, space)
        return arch

    @classmethod
    def from_json(cls, text: str, space: SearchSpace) -> Architecture:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ArchitectureError(f"architecture is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ArchitectureError("architecture JSON must be an object")
        return cls.from_dict(raw, space)


_GLOBAL = of_scope(SPACE_DIMENSIONS, Scope.GLOBAL)
_PER_STAGE = of_scope(SPACE_DIMENSIONS, Scope.STAGE, Scope.LAYER)  # the fields of `StageArch`


def _split(values: dict[str, Any]) -> tuple[dict[str, Any], FrozenMap[Any]]:
    """(the built-in fields, the registered dimensions' values) of `values`."""
    return ({k: v for k, v in values.items() if k in BUILTIN_NAMES},
            FrozenMap((k, v) for k, v in values.items() if k not in BUILTIN_NAMES))


def _stage(values: dict[str, Any]) -> StageArch:
    fields, extra = _split(values)
    return StageArch(**fields, extra=extra)


def _architecture(values: dict[str, Any], stages: tuple[StageArch, ...]) -> Architecture:
    fields, extra = _split(values)
    return Architecture(**fields, stages=stages, extra=extra)


def _as_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchitectureError(f"{field}={value!r} must be an integer")
    return value


def _get(raw: dict[str, Any], dimension: Dimension, depth: Any) -> Any:
    if dimension.builtin or dimension.name in raw:
        return raw[dimension.name]
    return dimension.default_value(depth if isinstance(depth, int) else 0)


def _read(raw: dict[str, Any], dimension: Dimension, field: str) -> int | tuple[int, ...]:
    value = _get(raw, dimension, raw.get(DEPTH))
    if dimension.scope is Scope.LAYER:
        return tuple(_as_int(v, field) for v in value)
    return _as_int(value, field)


def _check_unsearched(raw: dict[str, Any], dimension: Dimension) -> None:
    owners = [raw] if dimension.scope is Scope.GLOBAL else list(raw["stages"])
    for owner in owners:
        value = owner.get(dimension.name, dimension.default) if isinstance(owner, dict) else dimension.default
        values = value if isinstance(value, list) else [value]
        if any(v != dimension.default for v in values):
            raise ArchitectureError(f"{dimension.name}={value!r}: the space does not search {dimension.name!r} "
                                    f"(only its default {dimension.default})")


def validate(arch: Architecture, space: SearchSpace) -> None:
    """Raise ArchitectureError naming the first field of `arch` that `space` does not allow."""

    def check(field: str, value: int, choices: tuple[int, ...]) -> None:
        if value not in choices:
            raise ArchitectureError(f"{field}={value} is not one of {list(choices)}")

    dims = space_dimensions(space)
    _check_canonical(arch, dims)
    for d in of_scope(dims, Scope.GLOBAL):
        check(d.name, arch.value(d), d.choices(space))
    if len(arch.stages) != len(space.stages):
        raise ArchitectureError(f"stages has {len(arch.stages)} entries, the space has {len(space.stages)}")
    for i, stage in enumerate(arch.stages):
        for d in of_scope(dims, Scope.STAGE):
            check(f"stages[{i}].{d.name}", stage.value(d), d.choices(space, i))
        for d in of_scope(dims, Scope.LAYER):
            values = stage.value(d)
            if len(values) != stage.depth:
                raise ArchitectureError(f"stages[{i}].{d.name} has {len(values)} entries, depth is {stage.depth}")
        for d in of_scope(dims, Scope.LAYER):
            for j, v in enumerate(stage.value(d)):
                check(f"stages[{i}].{d.name}[{j}]", v, d.choices(space, i))


def _check_canonical(arch: Architecture, dims: tuple[Dimension, ...]) -> None:
    """`extra` holds exactly the registered dimensions the space searches, so equal children have one JSON
    and one id."""
    registered = [d for d in dims if not d.builtin]
    owners: list[tuple[str, Architecture | StageArch, tuple[Scope, ...]]] = [
        ("the architecture", arch, (Scope.GLOBAL,))]
    owners += [(f"stages[{i}]", s, (Scope.STAGE, Scope.LAYER)) for i, s in enumerate(arch.stages)]
    for where, owner, scopes in owners:
        wanted = [d.name for d in registered if d.scope in scopes]
        if set(owner.extra) != set(wanted):
            raise ArchitectureError(f"{where} holds the registered dimensions {list(owner.extra)}, the space "
                                    f"searches {wanted}")


# ---------------------------------------------------------------------------------------------
# Decisions and tokens
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One categorical choice the generator makes, in the fixed order of `decisions(space)`."""

    name: str
    choices: tuple[int, ...]
    dimension: Dimension
    stage: int | None = None  # None for a global dimension
    layer: int | None = None  # the layer's index within its stage, for a layer dimension

    def value_in(self, arch: Architecture) -> int | None:
        """This decision's value in `arch`; None for a layer beyond its stage's depth."""
        if self.stage is None:
            return arch.value(self.dimension)
        stage = arch.stages[self.stage]
        if self.layer is None:
            return stage.value(self.dimension)
        return stage.value(self.dimension)[self.layer] if self.layer < stage.depth else None


@functools.cache
def decisions(space: SearchSpace) -> tuple[Decision, ...]:
    """The global dimensions, then per stage its stage dimensions and then, layer by layer up to the
    stage's biggest depth, its layer dimensions (resolution, stem width, per stage depth and width,
    then per layer kernel and expansion).

    Cached per space (spaces are frozen): searches decode tens of thousands of token sequences.
    """
    dims = space_dimensions(space)
    out = [Decision(d.name, d.choices(space), d) for d in of_scope(dims, Scope.GLOBAL)]
    for i, spec in enumerate(space.stages):
        out += [Decision(f"stages[{i}].{d.name}", d.choices(space, i), d, i) for d in of_scope(dims, Scope.STAGE)]
        for j in range(spec.max_depth):
            out += [Decision(f"stages[{i}].{d.name}[{j}]", d.choices(space, i), d, i, j)
                    for d in of_scope(dims, Scope.LAYER)]
    return tuple(out)


def to_tokens(arch: Architecture, space: SearchSpace) -> list[int]:
    """The fixed-length token sequence of `arch`; layers beyond a stage's depth get token 0."""
    return [0 if (v := d.value_in(arch)) is None else d.choices.index(v) for d in decisions(space)]


def from_tokens(tokens: list[int] | tuple[int, ...], space: SearchSpace) -> Architecture:
    """Decode a token sequence; tokens of layers beyond a stage's depth are ignored."""
    space_decisions = decisions(space)
    if len(tokens) != len(space_decisions):
        raise ArchitectureError(f"token sequence has {len(tokens)} tokens, the space needs {len(space_decisions)}")
    for pos, (tok, dec) in enumerate(zip(tokens, space_decisions, strict=True)):
        if not 0 <= int(tok) < len(dec.choices):
            raise ArchitectureError(f"token {pos} ({dec.name})={tok} is outside [0, {len(dec.choices)})")
    values: dict[str, Any] = {}
    layer_dims = of_scope(space_dimensions(space), Scope.LAYER)
    stages: list[dict[str, Any]] = [{d.name: () for d in layer_dims} for _ in space.stages]
    for tok, dec in zip(tokens, space_decisions, strict=True):
        value = dec.choices[int(tok)]
        if dec.stage is None:
            values[dec.dimension.name] = value
        elif dec.layer is None:
            stages[dec.stage][dec.dimension.name] = value
        elif dec.layer < stages[dec.stage][DEPTH]:
            stages[dec.stage][dec.dimension.name] += (value,)
    return _architecture(values, tuple(_stage(s) for s in stages))


# ---------------------------------------------------------------------------------------------
# Sampling and mutation
# ---------------------------------------------------------------------------------------------

# Makes one decision: (dimension, stage or None for a global one, the choices) -> the value.
Pick = Callable[[Dimension, int | None, tuple[int, ...]], int]


def assemble(space: SearchSpace, pick: Pick) -> Architecture:
    """An architecture with every decision made by `pick`: stage by stage its stage dimensions, then each
    layer dimension for all the stage's layers, then the global dimensions. Seeded samplers draw in this
    order, so changing it changes which architecture a seed gives."""
    dims = space_dimensions(space)
    stages = []
    for i in range(len(space.stages)):
        values: dict[str, Any] = {d.name: pick(d, i, d.choices(space, i)) for d in of_scope(dims, Scope.STAGE)}
        for d in of_scope(dims, Scope.LAYER):
            choices = d.choices(space, i)
            values[d.name] = tuple(pick(d, i, choices) for _ in range(values[DEPTH]))
        stages.append(_stage(values))
    return _architecture({d.name: pick(d, None, d.choices(space)) for d in of_scope(dims, Scope.GLOBAL)},
                         tuple(stages))


def sample_uniform(space: SearchSpace, rng: random.Random) -> Architecture:
    """Every decision drawn uniformly and independently (depth first, then the active layers)."""
    return assemble(space, lambda _d, _s, choices: rng.choice(choices))


def _extreme(space: SearchSpace, pick: Callable[[tuple[int, ...]], int]) -> Architecture:
    return assemble(space, lambda _d, _s, choices: pick(choices))


def smallest(space: SearchSpace) -> Architecture:
    """Lowest resolution, thinnest widths, shallowest depths, smallest kernels and expansions."""
    return _extreme(space, min)


def biggest(space: SearchSpace) -> Architecture:
    """The full network: every choice at its maximum. It uses every weight of the supernet."""
    return _extreme(space, max)


def mutate(arch: Architecture, space: SearchSpace, rng: random.Random, prob: float = 0.1) -> Architecture:
    """Re-draw each decision with probability `prob` (a layer a deeper stage gains is drawn fresh)."""
    tokens = to_tokens(arch, space)
    space_decisions = decisions(space)
    new = [
        rng.randrange(len(d.choices)) if rng.random() < prob else t
        for t, d in zip(tokens, space_decisions, strict=True)
    ]
    # Layers that were inactive carry token 0; give them random choices so that a stage that grows
    # deeper does not always gain the smallest layers.
    for pos, d in enumerate(space_decisions):
        if d.layer is not None and d.value_in(arch) is None:
            new[pos] = rng.randrange(len(d.choices))
    return from_tokens(new, space)


def resolve_arch(spec: str, space: SearchSpace, seed: int = 0) -> Architecture:
    """`biggest`, `smallest`, `random` (seeded), a path to an architecture's `.json` file, or its JSON."""
    if spec == "biggest":
        return biggest(space)
    if spec == "smallest":
        return smallest(space)
    if spec == "random":
        return sample_uniform(space, random.Random(seed))
    path = Path(spec)
    if path.suffix == ".json" and not path.is_file():
        raise ArchitectureError(f"{spec} is no architecture file")
    return Architecture.from_json(path.read_text() if path.suffix == ".json" else spec, space)
