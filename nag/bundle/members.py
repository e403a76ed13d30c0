"""The materialized serving frontier of one device: its members and their stored BN statistics.

Two files per device folder, sealed in the manifest like every other file of the bundle::

    devices/<name>/frontier.json     the members (architecture, cost, expected accuracy, measured or not),
                                     cost ascending, and what they were derived from (`inputs`)
    devices/<name>/frontier_bn.npz   each member's BatchNorm running mean and variance, calibrated on the
                                     bundle's calibration images (float32, no pickles)

`inputs` holds the manifest hashes of the files the frontier was built from; a device whose stored frontier
no longer matches them (re-profiled, retrained) is stale and gets re-materialized by the pipeline.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nag.artifacts import atomic_write_bytes
from nag.cost.store import MEASUREMENTS_FILE, PREDICTOR_FILE, SERVING_MEASUREMENTS_FILE, device_dir
from nag.errors import NagError
from nag.space.arch import Architecture
from nag.space.space import SearchSpace

FRONTIER_FILE = "frontier.json"
FRONTIER_BN_FILE = "frontier_bn.npz"
FRONTIER_FORMAT = 1
# Files of the bundle a device's frontier is derived from (device files are relative to its folder).
BUNDLE_INPUTS = ("supernet.pt", "triplets.jsonl", "accuracy_predictor.json")
DEVICE_INPUTS = ("device.json", PREDICTOR_FILE, MEASUREMENTS_FILE, SERVING_MEASUREMENTS_FILE, "evaluator.pt",
                 "generator.pt")

BnStats = dict[str, tuple[np.ndarray, np.ndarray]]  # BN module name -> (running mean, running var)


class MembersError(NagError):
    """A stored frontier file is missing, malformed or does not match its statistics."""


@dataclass(frozen=True)
class StoredMember:
    arch: Architecture
    cost: float  # in the device's unit, at the profile's speed
    expected_accuracy: float  # % on the validation split: measured, or the accuracy predictor's
    measured: bool  # a triplet of the bundle (else proposed by the generator, or an end of the space)
    bn: BnStats


@dataclass(frozen=True)
class StoredFrontier:
    members: tuple[StoredMember, ...]  # cost ascending, expected accuracy strictly increasing
    calibration_images: int
    inputs: dict[str, str]  # bundle-relative path -> sha256 the frontier was built from
    stats: dict[str, Any]  # how it was built: triplets and proposals considered, ladder, seconds


def frontier_inputs(device: str, files: Mapping[str, str]) -> dict[str, str]:
    """The manifest hashes (`files`: relative path -> sha256) of what `device`'s frontier derives from."""
    names = list(BUNDLE_INPUTS) + [f"devices/{device}/{name}" for name in DEVICE_INPUTS]
    return {name: files[name] for name in names if name in files}


def write_stored_frontier(root: str | Path, device: str, frontier: StoredFrontier) -> None:
    """Write the device's `frontier.json` and `frontier_bn.npz` atomically (statistics first)."""
    folder = device_dir(root, device)
    arrays: dict[str, np.ndarray] = {}
    for i, m in enumerate(frontier.members):
        for name, (mean, var) in sorted(m.bn.items()):
            arrays[f"{i}/{name}/mean"] = np.asarray(mean, dtype=np.float32)
            arrays[f"{i}/{name}/var"] = np.asarray(var, dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(folder / FRONTIER_BN_FILE, buffer.getvalue())
    doc = {
        "format": FRONTIER_FORMAT, "device": device, "calibration_images": frontier.calibration_images,
        "inputs": frontier.inputs, "stats": frontier.stats,
        "members": [{"arch": m.arch.to_dict(), "arch_id": m.arch.arch_id, "cost": m.cost,
                     "expected_accuracy": m.expected_accuracy, "measured": m.measured,
                     "bn_layers": sorted(m.bn)} for m in frontier.members],
    }
    atomic_write_bytes(folder / FRONTIER_FILE, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


def has_stored_frontier(root: str | Path, device: str) -> bool:
    return (device_dir(root, device) / FRONTIER_FILE).is_file()


def _member(raw: Any, i: int, space: SearchSpace, arrays: Mapping[str, np.ndarray], rel: str) -> StoredMember:
    if not isinstance(raw, dict):
        raise MembersError(f"{rel}: member {i} is not an object")
    arch = Architecture.from_dict(raw["arch"], space)
    if arch.arch_id != raw["arch_id"]:
        raise MembersError(f"{rel}: member {i}'s arch_id does not match its architecture")
    bn: BnStats = {}
    for name in raw["bn_layers"]:
        try:
            mean, var = arrays[f"{i}/{name}/mean"], arrays[f"{i}/{name}/var"]
        except KeyError:
            raise MembersError(f"{rel}'s statistics lack member {i}'s BN layer {name!r}") from None
        if mean.shape != var.shape or mean.ndim != 1 or not (np.isfinite(mean).all() and np.isfinite(var).all()
                                                               and (var >= 0).all()):
            raise MembersError(f"{rel}'s statistics of member {i}'s BN layer {name!r} are malformed")
        bn[name] = (mean, var)
    if not bn:
        raise MembersError(f"{rel}: member {i} has no BN statistics")
    return StoredMember(arch, float(raw["cost"]), float(raw["expected_accuracy"]), bool(raw["measured"]), bn)


def read_stored_frontier(root: str | Path, device: str, space: SearchSpace) -> StoredFrontier:
    """Read and check the device's stored frontier; a `MembersError` naming the file otherwise."""
    folder = device_dir(root, device)
    rel, rel_bn = f"devices/{device}/{FRONTIER_FILE}", f"devices/{device}/{FRONTIER_BN_FILE}"
    if not (folder / FRONTIER_BN_FILE).is_file():
        raise MembersError(f"{rel_bn} is missing (the BN statistics of {rel})")
    try:
        doc = json.loads((folder / FRONTIER_FILE).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise MembersError(f"{rel} is not JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FRONTIER_FORMAT or not isinstance(doc.get("members"), list):
        raise MembersError(f"{rel} is not a frontier file of format {FRONTIER_FORMAT}")
    try:
        with np.load(folder / FRONTIER_BN_FILE, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # zipfile, numpy and OS errors: any of them is a corrupt file
        raise MembersError(f"{rel_bn} cannot be read ({type(exc).__name__}: {exc})") from None
    try:
        members = tuple(_member(raw, i, space, arrays, rel_bn) for i, raw in enumerate(doc["members"]))
    except MembersError:
        raise
    except (NagError, KeyError, TypeError, ValueError) as exc:
        raise MembersError(f"{rel} is malformed ({type(exc).__name__}: {exc})") from None
    if not members or any(b.cost < a.cost for a, b in itertools.pairwise(members)):
        raise MembersError(f"{rel} must list at least one member, cost ascending")
    return StoredFrontier(members, int(doc["calibration_images"]), dict(doc.get("inputs", {})),
                          dict(doc.get("stats", {})))


def bn_stats_of(modules: Sequence[tuple[str, Any]]) -> BnStats:
    """The running statistics of `(name, BatchNorm2d)` pairs as float32 arrays."""
    return {name: (bn.running_mean.detach().cpu().numpy().astype(np.float32),
                   bn.running_var.detach().cpu().numpy().astype(np.float32)) for name, bn in modules}
