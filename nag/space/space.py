"""The search space: a typed, validated view of a JSON config file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from nag.errors import SpaceError
from nag.space.dimensions import NO_EXTRA, FrozenMap, Scope, registered_dimensions

ACTIVATIONS = ("relu", "hswish")


@dataclass(frozen=True)
class InputSpec:
    """The images the deployed models take: `[N, channels, size, size]`, values in [0, 1]."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class StemSpec:
    widths: tuple[int, ...]
    kernel: int
    stride: int
    act: str

    @property
    def max_width(self) -> int:
        return max(self.widths)


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv layers; every layer of a stage has the stage's width."""

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernels: tuple[int, ...]
    expansions: tuple[int, ...]
    stride: int
    se: bool
    act: str
    extra: FrozenMap[tuple[int, ...]] = NO_EXTRA  # the choice lists of registered dimensions, by name

    @property
    def max_width(self) -> int:
        return max(self.widths)

    @property
    def max_depth(self) -> int:
        return max(self.depths)

    @property
    def max_kernel(self) -> int:
        return max(self.kernels)

    @property
    def max_expansion(self) -> int:
        return max(self.expansions)


@dataclass(frozen=True)
class HeadSpec:
    width: int
    act: str


@dataclass(frozen=True)
class SearchSpace:
    name: str
    input: InputSpec
    num_classes: int
    resolutions: tuple[int, ...]
    stem: StemSpec
    stages: tuple[StageSpec, ...]
    head: HeadSpec
    dropout: float
    extra: FrozenMap[tuple[int, ...]] = NO_EXTRA  # the choice lists of registered global dimensions, by name

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SearchSpace:
        try:
            space = cls(
                name=str(raw["name"]),
                input=InputSpec(
                    channels=int(raw["input"]["channels"]),
                    size=int(raw["input"]["size"]),
                    mean=tuple(float(m) for m in raw["input"]["mean"]),
                    std=tuple(float(s) for s in raw["input"]["std"]),
                ),
                num_classes=int(raw["num_classes"]),
                resolutions=_sorted_ints(raw["resolutions"]),
                stem=StemSpec(
                    widths=_sorted_ints(raw["stem"]["widths"]),
                    kernel=int(raw["stem"]["kernel"]),
                    stride=int(raw["stem"]["stride"]),
                    act=str(raw["stem"]["act"]),
                ),
                stages=tuple(
                    StageSpec(
                        widths=_sorted_ints(s["widths"]),
                        depths=_sorted_ints(s["depths"]),
                        kernels=_sorted_ints(s["kernels"]),
                        expansions=_sorted_ints(s["expansions"]),
                        stride=int(s["stride"]),
                        se=bool(s["se"]),
                        act=str(s["act"]),
                        extra=_extra_choices(s, Scope.STAGE, Scope.LAYER),
                    )
                    for s in raw["stages"]
                ),
                head=HeadSpec(width=int(raw["head"]["width"]), act=str(raw["head"]["act"])),
                dropout=float(raw["dropout"]),
                extra=_extra_choices(raw, Scope.GLOBAL),
            )
        except KeyError as exc:
            raise SpaceError(f"search space config lacks the field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise SpaceError(f"search space config has a malformed field: {exc}") from None
        space._check()
        return space

    def _check(self) -> None:
        problems: list[str] = []
        if len(self.input.mean) != self.input.channels or len(self.input.std) != self.input.channels:
            problems.append("input.mean and input.std need one value per input channel")
        if any(s <= 0 for s in self.input.std):
            problems.append("input.std must be positive")
        if self.num_classes < 2:
            problems.append("num_classes must be at least 2")
        if not self.resolutions or max(self.resolutions) > self.input.size or min(self.resolutions) < 8:
            problems.append(f"resolutions must lie in [8, input.size={self.input.size}]")
        if not self.stages:
            problems.append("stages must not be empty")
        for where, act in [("stem.act", self.stem.act), ("head.act", self.head.act)] + [
            (f"stages[{i}].act", s.act) for i, s in enumerate(self.stages)
        ]:
            if act not in ACTIVATIONS:
                problems.append(f"{where}={act!r} is not one of {list(ACTIVATIONS)}")
        if self.stem.kernel % 2 == 0 or self.stem.stride not in (1, 2):
            problems.append("stem.kernel must be odd and stem.stride 1 or 2")
        for i, s in enumerate(self.stages):
            if not (s.widths and s.depths and s.kernels and s.expansions):
                problems.append(f"stages[{i}] has an empty choice list")
                continue
            if any(k % 2 == 0 for k in s.kernels):
                problems.append(f"stages[{i}].kernels must be odd")
            if not all(s.extra.values()):
                problems.append(f"stages[{i}] has an empty choice list")
            if s.stride not in (1, 2) or min(s.depths) < 1 or min(s.widths) < 1 or min(s.expansions) < 1:
                problems.append(f"stages[{i}] needs stride 1 or 2 and positive depths, widths, expansions")
        if not all(self.extra.values()):
            problems.append("a global choice list is empty")
        if not 0.0 <= self.dropout < 1.0:
            problems.append("dropout must lie in [0, 1)")
        if problems:
            raise SpaceError("invalid search space: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The space's JSON object: registered dimensions' choice lists sit under their sources' keys."""
        raw = asdict(self)
        sources = {d.name: d.source for d in registered_dimensions()}
        for owner, spec in [(raw, self), *zip(raw["stages"], self.stages, strict=True)]:
            del owner["extra"]
            owner.update({sources.get(name, name): list(choices) for name, choices in spec.extra.items()})
        return raw

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)

    @property
    def max_resolution(self) -> int:
        return max(self.resolutions)


def _extra_choices(raw: dict[str, Any], *scopes: Scope) -> FrozenMap[tuple[int, ...]]:
    """The choice lists `raw` gives for registered dimensions of `scopes` (absent ones: not searched)."""
    return FrozenMap((d.name, _sorted_ints(raw[d.source])) for d in registered_dimensions()
                     if d.scope in scopes and d.source in raw)


def _sorted_ints(values: Any) -> tuple[int, ...]:
    ints = sorted({int(v) for v in values})
    if len(ints) != len(list(values)):
        raise ValueError(f"choice list {list(values)} has duplicates")
    return tuple(ints)


def load_space(path: str | Path | None = None) -> SearchSpace:
    """Load a search space from a JSON file; with no path, the packaged default space."""
    if path is None:
        text = resources.files("nag.space").joinpath("default_space.json").read_text()
        source = "the packaged default space"
    else:
        path = Path(path)
        if not path.is_file():
            raise SpaceError(f"search space file {path} does not exist")
        text = path.read_text()
        source = str(path)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpaceError(f"{source} is not valid JSON: {exc}") from None
    return SearchSpace.from_dict(raw)
