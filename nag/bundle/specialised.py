"""Specialised children: cheap serving-frontier members fine-tuned from their slices, stored with the bundle.

Two files at the bundle's root, sealed in the manifest like every other file::

    specialised.json   per architecture: how it was specialised (from which supernet, epochs, learning rate,
                       label weight), its validation accuracy as a slice and specialised, and the files it
                       was derived from (`inputs`)
    specialised.npz    each child's weights and BN statistics (float32; counters int64; no pickles)

A child is served with these weights instead of its slice wherever its architecture is picked. A set
derived from another supernet than the bundle holds is stale: it is ignored, with a warning.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nag.artifacts import atomic_write_bytes
from nag.errors import NagError
from nag.space.arch import Architecture
from nag.space.space import SearchSpace

log = logging.getLogger(__name__)

SPECIALISED_FILE = "specialised.json"
SPECIALISED_WEIGHTS_FILE = "specialised.npz"
SPECIALISED_FORMAT = 1
SPECIALISED_INPUTS = ("supernet.pt",)


class SpecialisedError(NagError):
    """The specialised files are missing, malformed or do not match each other."""


@dataclass(frozen=True)
class SpecialisedChild:
    arch: Architecture
    state: dict[str, np.ndarray]  # the static child's state_dict: weights and BN statistics
    info: dict[str, Any]  # epochs, lr, label_weight, slice_val_acc, specialised_val_acc, seconds, ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(np.array(value)) for name, value in self.state.items()}


@dataclass(frozen=True)
class SpecialisedSet:
    children: dict[str, SpecialisedChild]  # by arch_id
    inputs: dict[str, str]  # bundle-relative path -> sha256 the children were derived from
    stats: dict[str, Any]  # how the set was built: the stage's config and seconds


def specialised_inputs(files: Mapping[str, str]) -> dict[str, str]:
    """The manifest hashes (`files`) of what the specialised children derive from."""
    return {name: files[name] for name in SPECIALISED_INPUTS if name in files}


def write_specialised(root: str | Path, children: SpecialisedSet) -> None:
    """Write `specialised.npz` then `specialised.json`, each atomically."""
    root = Path(root)
    arrays = {f"{arch_id}/{name}": np.asarray(value) for arch_id, c in sorted(children.children.items())
              for name, value in sorted(c.state.items())}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(root / SPECIALISED_WEIGHTS_FILE, buffer.getvalue())
    doc = {"format": SPECIALISED_FORMAT, "inputs": children.inputs, "stats": children.stats,
           "children": [{"arch": c.arch.to_dict(), "arch_id": arch_id, "tensors": sorted(c.state), **c.info}
                        for arch_id, c in sorted(children.children.items())]}
    atomic_write_bytes(root / SPECIALISED_FILE, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


def read_specialised(root: str | Path, space: SearchSpace) -> SpecialisedSet | None:
    """The bundle's specialised children, None when it has none; a `SpecialisedError` naming the file when
    they are malformed."""
    root = Path(root)
    if not (root / SPECIALISED_FILE).is_file():
        return None
    if not (root / SPECIALISED_WEIGHTS_FILE).is_file():
        raise SpecialisedError(f"{SPECIALISED_WEIGHTS_FILE} is missing (the weights of {SPECIALISED_FILE})")
    try:
        doc = json.loads((root / SPECIALISED_FILE).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise SpecialisedError(f"{SPECIALISED_FILE} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != SPECIALISED_FORMAT or not isinstance(doc.get("children"),
                                                                                              list):
        raise SpecialisedError(f"{SPECIALISED_FILE} is not a specialised-children file of format "
                               f"{SPECIALISED_FORMAT}")
    try:
        with np.load(root / SPECIALISED_WEIGHTS_FILE, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # zipfile, numpy and OS errors: any of them is a corrupt file
        raise SpecialisedError(f"{SPECIALISED_WEIGHTS_FILE} cannot be read ({type(exc).__name__}: {exc})") from None
    children = {}
    try:
        for raw in doc["children"]:
            arch = Architecture.from_dict(raw["arch"], space)
            if arch.arch_id != raw["arch_id"]:
                raise SpecialisedError(f"{SPECIALISED_FILE}: {raw['arch_id']}'s architecture has another id")
            state = {}
            for name in raw["tensors"]:
                value = arrays.get(f"{arch.arch_id}/{name}")
                if value is None:
                    raise SpecialisedError(f"{SPECIALISED_WEIGHTS_FILE} lacks {arch.arch_id}'s tensor {name!r}")
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise SpecialisedError(f"{SPECIALISED_WEIGHTS_FILE}: {arch.arch_id}'s {name!r} is not finite")
                state[name] = value
            info = {k: v for k, v in raw.items() if k not in ("arch", "arch_id", "tensors")}
            children[arch.arch_id] = SpecialisedChild(arch, state, info)
    except SpecialisedError:
        raise
    except (NagError, KeyError, TypeError, ValueError) as exc:
        raise SpecialisedError(f"{SPECIALISED_FILE} is malformed ({type(exc).__name__}: {exc})") from None
    return SpecialisedSet(children, dict(doc.get("inputs", {})), dict(doc.get("stats", {})))


def current_specialised(root: Path, files: Mapping[str, str], space: SearchSpace) -> dict[str, SpecialisedChild]:
    """The bundle's specialised children by arch_id; none (and a warning) when they were derived from another
    supernet than the bundle holds (the pipeline's specialise stage makes them again)."""
    children = read_specialised(root, space)
    if children is None:
        return {}
    if children.inputs != specialised_inputs(files):
        log.warning("bundle %s: its specialised children were fine-tuned from another supernet than it holds; "
                    "their slices are served instead (specialise again with `python -m nag.pipeline.specialise "
                    "--bundle %s`)", root, root)
        return {}
    return children.children
