"""The one way configs are checked and read back: each problem a phrase, all of them in one `NagError`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from nag.errors import NagError

C = TypeVar("C")


def check(problems: list[str], heading: str) -> None:
    """Raise one `NagError`, `heading` then every problem, when there is any."""
    if problems:
        raise NagError(heading + "; ".join(problems))


def known_fields(cls: type, raw: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """`raw` as keyword arguments of the dataclass `cls`; a field `cls` does not have is a `NagError`."""
    unknown = set(raw) - {f.name for f in fields(cls)}
    if unknown:
        raise NagError(f"unknown {kind} config fields: {sorted(unknown)}")
    return dict(raw)


def named(table: Mapping[str, C], name: str) -> C:
    """A profile's config by its name; an unknown name is a `NagError` listing the known ones."""
    if name not in table:
        raise NagError(f"unknown profile {name!r}; known profiles: {sorted(table)}")
    return table[name]
