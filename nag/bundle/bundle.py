"""A bundle directory and its `manifest.json` (format version, search space, devices, file hashes,
training configs and metrics). Loading verifies every listed file's SHA-256 and refuses a corrupt,
incomplete or mismatched bundle with a message naming the file.

Layout::

    manifest.json  space.json  supernet.pt  triplets.jsonl  accuracy_predictor.json  log.jsonl ...
    devices/<name>/device.json  measurements.jsonl  predictor.json  evaluator.pt  generator.pt ...
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nag.artifacts import atomic_write_bytes, load_artifact, save_artifact
from nag.core.accuracy import AccuracyPredictor
from nag.core.evaluator import Evaluator
from nag.core.generator import Generator
from nag.cost.store import Device, device_dir, list_devices, load_device
from nag.errors import CheckpointError
from nag.space.arch import smallest
from nag.space.space import SearchSpace
from nag.supernet.io import TrainedSupernet, load_supernet

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
SPACE_FILE = "space.json"
SUPERNET_FILE = "supernet.pt"
ACCURACY_FILE = "accuracy_predictor.json"
EVALUATOR_FILE = "evaluator.pt"
GENERATOR_FILE = "generator.pt"
SKIP = {MANIFEST_FILE, "checkpoint.pt"}


class BundleError(CheckpointError):
    """A bundle is missing, corrupt, incomplete or does not match this version."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_evaluator(path: Path, model: Evaluator, in_dim: int, hidden: int, budget_dim: int,
                   report: dict[str, Any]) -> None:
    save_artifact(path, {"kind": "evaluator", "state": model.state_dict(), "in_dim": in_dim, "hidden": hidden,
                         "budget_dim": budget_dim, "budgets": [float(b) for b in model.budget.budgets],
                         "cost_features": model.cost_features, "report": json.dumps(report)})


def load_evaluator(path: Path) -> Evaluator:
    raw = load_artifact(path, "evaluator")
    if raw.get("kind") != "evaluator":
        raise BundleError(f"{path} is not an evaluator")
    # Evaluators saved before the cost features existed read the encoding and budget only.
    model = Evaluator(int(raw["in_dim"]), list(raw["budgets"]), int(raw["hidden"]), int(raw["budget_dim"]),
                      bool(raw.get("cost_features", False)))
    model.load_state_dict(raw["state"])
    return model.eval()


def save_generator(path: Path, model: Generator, config: dict[str, Any]) -> None:
    save_artifact(path, {"kind": "generator", "state": model.state_dict(), "hidden": model.hidden,
                         "budget_dim": model.budget.table.embedding_dim,
                         "budgets": [float(b) for b in model.budget.budgets], "factorized": model.factorized,
                         "config": json.dumps(config)})


def load_generator(path: Path, space: SearchSpace) -> Generator:
    raw = load_artifact(path, "generator")
    if raw.get("kind") != "generator":
        raise BundleError(f"{path} is not a generator")
    model = Generator(space, list(raw["budgets"]), int(raw["hidden"]), int(raw["budget_dim"]),
                      bool(raw.get("factorized", False)))
    try:
        model.load_state_dict(raw["state"])
    except RuntimeError as exc:
        raise BundleError(f"{path} does not fit this bundle's search space: {exc}") from None
    return model.eval()


def write_manifest(root: str | Path, name: str, space: SearchSpace, default_device: str,
                   configs: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Hash every file of the bundle and write `manifest.json` atomically."""
    root = Path(root)
    files = {
        str(p.relative_to(root)): _sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in SKIP and not p.name.startswith(".")
    }
    manifest = {
        "format_version": FORMAT_VERSION, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "space": json.loads(space.to_json()), "default_device": default_device, "devices": list_devices(root),
        "files": files, "configs": configs, "metrics": metrics,
        "bundle_id": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16],
    }
    atomic_write_bytes(root / MANIFEST_FILE, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return manifest


@dataclass
class DeviceModels:
    """What generation needs for one device: its cost model, evaluator, generator and cheapest cost."""

    device: Device
    evaluator: Evaluator
    generator: Generator
    min_cost: float

    @property
    def name(self) -> str:
        return self.device.name


@dataclass
class Bundle:
    root: Path
    manifest: dict[str, Any]
    space: SearchSpace
    trained: TrainedSupernet
    accuracy: AccuracyPredictor
    devices: dict[str, DeviceModels]

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def default_device(self) -> str:
        return str(self.manifest["default_device"])

    @property
    def classes(self) -> list[str] | None:
        return self.trained.meta.get("classes")


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Load a bundle, verifying the manifest's hashes of every file it lists (unless `verify=False`)."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST_FILE} is missing (build one with "
                          "`make train-generator`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is corrupt: {exc}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{root}: bundle format {manifest.get('format_version')} is not supported "
                          f"(this version reads format {FORMAT_VERSION})")
    if verify:
        for rel, digest in manifest.get("files", {}).items():
            file = root / rel
            if not file.is_file():
                raise BundleError(f"bundle {root} is incomplete: {rel} is missing")
            if _sha256(file) != digest:
                raise BundleError(f"bundle {root} is corrupt: {rel} does not match its hash in the manifest")
    space = SearchSpace.from_dict(manifest["space"])
    trained = load_supernet(root / SUPERNET_FILE)
    if trained.supernet.space.to_json() != space.to_json():
        raise BundleError(f"bundle {root}: the supernet's search space differs from the manifest's")
    accuracy = AccuracyPredictor.from_dict(json.loads((root / ACCURACY_FILE).read_text()))
    devices = {}
    for name in manifest["devices"]:
        folder = device_dir(root, name)
        device = load_device(root, name, space)
        evaluator = load_evaluator(folder / EVALUATOR_FILE)
        generator = load_generator(folder / GENERATOR_FILE, space)
        min_cost = float(device.predict([smallest(space)])[0])
        devices[name] = DeviceModels(device, evaluator, generator, min_cost)
    return Bundle(root, manifest, space, trained, accuracy, devices)
