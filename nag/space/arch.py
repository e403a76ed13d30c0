"""Architectures: immutable values of a search space, their JSON, ids, tokens, sampling and mutation."""

from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nag.errors import ArchitectureError
from nag.space.space import SearchSpace


@dataclass(frozen=True)
class StageArch:
    """The choices of one stage: its depth, width and the kernel and expansion of each active layer."""

    depth: int
    width: int
    kernels: tuple[int, ...]
    expansions: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "width": self.width,
            "kernels": list(self.kernels),
            "expansions": list(self.expansions),
        }


@dataclass(frozen=True)
class Architecture:
    """One child of a search space. Build it with `from_dict`/`sample_*` so that it is validated."""

    resolution: int
    stem_width: int
    stages: tuple[StageArch, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "stem_width": self.stem_width,
            "stages": [s.to_dict() for s in self.stages],
        }

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no white space; equal architectures give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @functools.cached_property
    def arch_id(self) -> str:
        """A stable id: the first 16 hex digits of the SHA-256 of the canonical JSON."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, raw: dict[str, Any], space: SearchSpace) -> Architecture:
        try:
            arch = cls(
                resolution=_as_int(raw["resolution"], "resolution"),
                stem_width=_as_int(raw["stem_width"], "stem_width"),
                stages=tuple(
                    StageArch(
                        depth=_as_int(s["depth"], f"stages[{i}].depth"),
                        width=_as_int(s["width"], f"stages[{i}].width"),
                        kernels=tuple(_as_int(k, f"stages[{i}].kernels") for k in s["kernels"]),
                        expansions=tuple(_as_int(e, f"stages[{i}].expansions") for e in s["expansions"]),
                    )
                    for i, s in enumerate(raw["stages"])
                ),
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


def _as_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArchitectureError(f"{field}={value!r} must be an integer")
    return value


def validate(arch: Architecture, space: SearchSpace) -> None:
    """Raise ArchitectureError naming the first field of `arch` that `space` does not allow."""

    def check(field: str, value: int, choices: tuple[int, ...]) -> None:
        if value not in choices:
            raise ArchitectureError(f"{field}={value} is not one of {list(choices)}")

    check("resolution", arch.resolution, space.resolutions)
    check("stem_width", arch.stem_width, space.stem.widths)
    if len(arch.stages) != len(space.stages):
        raise ArchitectureError(f"stages has {len(arch.stages)} entries, the space has {len(space.stages)}")
    for i, (stage, spec) in enumerate(zip(arch.stages, space.stages, strict=True)):
        check(f"stages[{i}].depth", stage.depth, spec.depths)
        check(f"stages[{i}].width", stage.width, spec.widths)
        for name, values in (("kernels", stage.kernels), ("expansions", stage.expansions)):
            if len(values) != stage.depth:
                raise ArchitectureError(f"stages[{i}].{name} has {len(values)} entries, depth is {stage.depth}")
        for j, k in enumerate(stage.kernels):
            check(f"stages[{i}].kernels[{j}]", k, spec.kernels)
        for j, e in enumerate(stage.expansions):
            check(f"stages[{i}].expansions[{j}]", e, spec.expansions)


# ---------------------------------------------------------------------------------------------
# Decisions and tokens
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """One categorical choice the generator makes, in the fixed order of `decisions(space)`."""

    name: str
    choices: tuple[int, ...]


@functools.cache
def decisions(space: SearchSpace) -> tuple[Decision, ...]:
    """Resolution, stem width, then per stage depth and width, then per layer kernel and expansion.

    Cached per space (spaces are frozen): searches decode tens of thousands of token sequences.
    """
    out = [Decision("resolution", space.resolutions), Decision("stem_width", space.stem.widths)]
    for i, spec in enumerate(space.stages):
        out.append(Decision(f"stages[{i}].depth", spec.depths))
        out.append(Decision(f"stages[{i}].width", spec.widths))
        for j in range(spec.max_depth):
            out.append(Decision(f"stages[{i}].kernels[{j}]", spec.kernels))
            out.append(Decision(f"stages[{i}].expansions[{j}]", spec.expansions))
    return tuple(out)


def to_tokens(arch: Architecture, space: SearchSpace) -> list[int]:
    """The fixed-length token sequence of `arch`; layers beyond a stage's depth get token 0."""
    tokens = [space.resolutions.index(arch.resolution), space.stem.widths.index(arch.stem_width)]
    for stage, spec in zip(arch.stages, space.stages, strict=True):
        tokens += [spec.depths.index(stage.depth), spec.widths.index(stage.width)]
        for j in range(spec.max_depth):
            if j < stage.depth:
                tokens += [spec.kernels.index(stage.kernels[j]), spec.expansions.index(stage.expansions[j])]
            else:
                tokens += [0, 0]
    return tokens


def from_tokens(tokens: list[int] | tuple[int, ...], space: SearchSpace) -> Architecture:
    """Decode a token sequence; tokens of layers beyond a stage's depth are ignored."""
    space_decisions = decisions(space)
    if len(tokens) != len(space_decisions):
        raise ArchitectureError(f"token sequence has {len(tokens)} tokens, the space needs {len(space_decisions)}")
    for pos, (tok, dec) in enumerate(zip(tokens, space_decisions, strict=True)):
        if not 0 <= int(tok) < len(dec.choices):
            raise ArchitectureError(f"token {pos} ({dec.name})={tok} is outside [0, {len(dec.choices)})")
    it = iter(int(t) for t in tokens)
    resolution = space.resolutions[next(it)]
    stem_width = space.stem.widths[next(it)]
    stages = []
    for spec in space.stages:
        depth = spec.depths[next(it)]
        width = spec.widths[next(it)]
        kernels, expansions = [], []
        for j in range(spec.max_depth):
            k, e = next(it), next(it)
            if j < depth:
                kernels.append(spec.kernels[k])
                expansions.append(spec.expansions[e])
        stages.append(StageArch(depth, width, tuple(kernels), tuple(expansions)))
    return Architecture(resolution, stem_width, tuple(stages))


# ---------------------------------------------------------------------------------------------
# Sampling and mutation
# ---------------------------------------------------------------------------------------------


def sample_uniform(space: SearchSpace, rng: random.Random) -> Architecture:
    """Every decision drawn uniformly and independently (depth first, then the active layers)."""
    stages = []
    for spec in space.stages:
        depth = rng.choice(spec.depths)
        stages.append(
            StageArch(
                depth=depth,
                width=rng.choice(spec.widths),
                kernels=tuple(rng.choice(spec.kernels) for _ in range(depth)),
                expansions=tuple(rng.choice(spec.expansions) for _ in range(depth)),
            )
        )
    return Architecture(rng.choice(space.resolutions), rng.choice(space.stem.widths), tuple(stages))


def _extreme(space: SearchSpace, pick: Any) -> Architecture:
    stages = []
    for spec in space.stages:
        depth = pick(spec.depths)
        stages.append(
            StageArch(depth, pick(spec.widths), (pick(spec.kernels),) * depth, (pick(spec.expansions),) * depth)
        )
    return Architecture(pick(space.resolutions), pick(space.stem.widths), tuple(stages))


def smallest(space: SearchSpace) -> Architecture:
    """Lowest resolution, thinnest widths, shallowest depths, smallest kernels and expansions."""
    return _extreme(space, min)


def biggest(space: SearchSpace) -> Architecture:
    """The full network: every choice at its maximum. It uses every weight of the supernet."""
    return _extreme(space, max)


def mutate(arch: Architecture, space: SearchSpace, rng: random.Random, prob: float = 0.1) -> Architecture:
    """Re-draw each decision with probability `prob` (a layer a deeper stage gains is drawn fresh)."""
    tokens = to_tokens(arch, space)
    new = [
        rng.randrange(len(d.choices)) if rng.random() < prob else t
        for t, d in zip(tokens, decisions(space), strict=True)
    ]
    # Layers that were inactive carry token 0; give them random choices so that a stage that grows
    # deeper does not always gain the smallest layers.
    pos = 2
    for stage, spec in zip(arch.stages, space.stages, strict=True):
        pos += 2
        for j in range(spec.max_depth):
            if j >= stage.depth:
                new[pos] = rng.randrange(len(spec.kernels))
                new[pos + 1] = rng.randrange(len(spec.expansions))
            pos += 2
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

