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
import logging
import os
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nag.artifacts import atomic_write_bytes, file_sha256, load_artifact, save_artifact
from nag.bundle.members import StoredFrontier, frontier_inputs, has_stored_frontier, read_stored_frontier
from nag.bundle.specialised import SPECIALISED_FILE, SpecialisedChild, current_specialised
from nag.config import PipelineConfig
from nag.cost.store import Device, device_dir, list_devices, load_device
from nag.errors import CheckpointError, NagError
from nag.pnag.accuracy import AccuracyPredictor
from nag.pnag.evaluator import Evaluator
from nag.pnag.generator import Generator
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
EVALUATOR_REPORT_FILE = "evaluator_report.json"
GENERATOR_LOG_FILE = "generator_log.jsonl"
TRIPLETS_FILE = "triplets.jsonl"
SUPERNET_LOG_FILE = "log.jsonl"
SUPERNET_SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"  # supernet training's, never part of a bundle
SKIP = {MANIFEST_FILE, CHECKPOINT_FILE}
BUNDLE_ENV = "NAG_BUNDLE"
log = logging.getLogger(__name__)


class BundleError(CheckpointError):
    """A bundle is missing, corrupt, incomplete or does not match this version."""


def default_bundle() -> Path | None:
    """`$NAG_BUNDLE`, else the committed default bundle of a source checkout (absolute, so the working
    directory does not matter), else None: an installed wheel has no bundle of its own."""
    if os.environ.get(BUNDLE_ENV):
        return Path(os.environ[BUNDLE_ENV])
    checkout = Path(__file__).resolve().parents[2] / "bundles" / "default"
    return checkout if (checkout / MANIFEST_FILE).is_file() else None


def bundle_or_default(bundle: str | Path | None) -> Path:
    """The bundle a command should use; a clear error when none is given and there is no default."""
    chosen = Path(bundle) if bundle else default_bundle()
    if chosen is None:
        raise BundleError(f"no bundle given: pass --bundle PATH or set {BUNDLE_ENV}")
    return chosen


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


SEAL = "manifest_sha256"
# The manifest's fields and their JSON types; any other shape is a corrupt manifest.
MANIFEST_FIELDS: dict[str, type] = {
    "format_version": int, "name": str, "space": dict, "default_device": str, "devices": list, "files": dict,
    "configs": dict, "metrics": dict, "bundle_id": str, SEAL: str,
}


def _manifest_digest(manifest: dict[str, Any]) -> str:
    """SHA-256 of the manifest without its seal, as canonical JSON."""
    body = {k: v for k, v in manifest.items() if k != SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def seal_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its seal: a hash over all its other fields, verified as a whole on load."""
    return {**manifest, SEAL: _manifest_digest(manifest)}


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[:limit] + "..."


def read_manifest(root: str | Path, verify: bool = True) -> dict[str, Any]:
    """Parse `manifest.json` and check its shape, format version and (unless `verify=False`) its seal."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST_FILE} is missing (build one with "
                          "`make train-generator`)")
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"bundle {root} is corrupt: {MANIFEST_FILE} is not JSON ({_one_line(str(exc), 120)})") \
            from None
    if not isinstance(manifest, dict):
        raise BundleError(f"bundle {root} is corrupt: {MANIFEST_FILE} is not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{root}: bundle format {_one_line(repr(manifest.get('format_version')), 40)} is not "
                          f"supported (this version reads format {FORMAT_VERSION})")
    for key, kind in MANIFEST_FIELDS.items():
        if not isinstance(manifest.get(key), kind) or (kind is int and isinstance(manifest.get(key), bool)):
            raise BundleError(f"bundle {root} is corrupt: {MANIFEST_FILE} has no valid {key!r} field")
    if verify and manifest[SEAL] != _manifest_digest(manifest):
        raise BundleError(f"bundle {root} is corrupt: {MANIFEST_FILE} does not match its own {SEAL}")
    files = manifest["files"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()) or \
            not all(isinstance(d, str) for d in manifest["devices"]):
        raise BundleError(f"bundle {root} is corrupt: {MANIFEST_FILE} lists malformed files or devices")
    return manifest


@contextmanager
def _reading(root: Path, rel: str) -> Iterator[None]:
    """Any failure to read one file of the bundle becomes a one-line BundleError naming the file."""
    try:
        yield
    except NagError as exc:
        raise BundleError(_one_line(str(exc))) from None
    except Exception as exc:  # a parser's errors come in many types: KeyError, TypeError, ValueError, ...
        raise BundleError(f"bundle {root} is corrupt: {rel} cannot be read "
                          f"({type(exc).__name__}: {_one_line(str(exc), 160)})") from None


def write_manifest(root: str | Path, name: str, space: SearchSpace, default_device: str,
                   configs: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Hash every file of the bundle and write `manifest.json` (sealed) atomically."""
    root = Path(root)
    files = {
        str(p.relative_to(root)): file_sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in SKIP and not p.name.startswith(".")
    }
    manifest = {
        "format_version": FORMAT_VERSION, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "space": json.loads(space.to_json()), "default_device": default_device, "devices": list_devices(root),
        "files": files, "configs": configs, "metrics": metrics,
        "bundle_id": hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16],
    }
    manifest = seal_manifest(manifest)
    atomic_write_bytes(root / MANIFEST_FILE, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return manifest


@dataclass
class DeviceModels:
    """What generation needs for one device: its cost model, evaluator, generator and cheapest cost."""

    device: Device
    evaluator: Evaluator
    generator: Generator
    min_cost: float
    # The materialized serving frontier (`nag.bundle.members`), when the bundle stores a current one.
    stored: StoredFrontier | None = None
    # The table picks are chosen from (`nag.policy.frontier`), built on first use; `dataclasses.replace`
    # does not copy it, so a copy with another device builds its own.
    frontier: Any = field(default=None, init=False, repr=False, compare=False)

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
    # Children served with weights of their own instead of their slices (`nag.bundle.specialised`), by arch_id.
    specialised: dict[str, SpecialisedChild] = field(default_factory=dict)

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def default_device(self) -> str:
        return str(self.manifest["default_device"])

    @property
    def classes(self) -> list[str] | None:
        return self.trained.meta.get("classes")

    @property
    def pipeline(self) -> PipelineConfig:
        """The config the bundle was built with: `pipeline.evaluator_config()` and `.generator_config()`
        are how its evaluators and generators were trained."""
        with _reading(self.root, f"{MANIFEST_FILE} (configs)"):
            return PipelineConfig.from_dict(self.manifest["configs"]["pipeline"])

    @property
    def metrics(self) -> dict[str, Any]:
        """What the build measured (`make train-generator`): build seconds, held-out agreements, ..."""
        return dict(self.manifest["metrics"])


def _stored_frontier(root: Path, manifest: dict[str, Any], device: str, space: SearchSpace
                     ) -> StoredFrontier | None:
    """The device's materialized serving frontier; None (and a warning) when the bundle has none or one built
    from other files than it now holds (the pipeline re-materializes it)."""
    if not has_stored_frontier(root, device):
        return None
    with _reading(root, f"devices/{device}/frontier.json"):
        stored = read_stored_frontier(root, device, space)
    if stored.inputs != frontier_inputs(device, manifest["files"]):
        log.warning("bundle %s: the stored serving frontier of device %s was built from other files than the "
                    "bundle holds now; it is built in memory instead (re-materialize it with `python -m "
                    "nag.pipeline.materialize_frontier --bundle %s`)", root, device, root)
        return None
    return stored


def load_bundle(root: str | Path, verify: bool = True, unsealed: Collection[str] = ()) -> Bundle:
    """Load a bundle, verifying the manifest's seal and the hash of every file it lists (unless
    `verify=False`), except files named in `unsealed` (a pipeline stage resuming its own writes after a
    kill). Any corruption is a one-line `BundleError` that names the file."""
    root = Path(root)
    manifest = read_manifest(root, verify)
    if verify:
        for rel, digest in manifest["files"].items():
            file = root / rel
            if not file.is_file():
                raise BundleError(f"bundle {root} is incomplete: {rel} is missing")
            if file.name not in unsealed and file_sha256(file) != digest:
                raise BundleError(f"bundle {root} is corrupt: {rel} does not match its hash in the manifest")
    with _reading(root, f"{MANIFEST_FILE} (space)"):
        space = SearchSpace.from_dict(manifest["space"])
    with _reading(root, SUPERNET_FILE):
        trained = load_supernet(root / SUPERNET_FILE)
    if trained.supernet.space.to_json() != space.to_json():
        raise BundleError(f"bundle {root}: the supernet's search space differs from the manifest's")
    with _reading(root, ACCURACY_FILE):
        accuracy = AccuracyPredictor.from_dict(json.loads((root / ACCURACY_FILE).read_bytes().decode("utf-8")))
    if manifest["default_device"] not in manifest["devices"]:
        raise BundleError(f"bundle {root} is corrupt: its default device is not one of its devices")
    devices = {}
    for name in manifest["devices"]:
        folder = device_dir(root, name)
        with _reading(root, f"devices/{name}"):
            device = load_device(root, name, space)
            evaluator = load_evaluator(folder / EVALUATOR_FILE)
            generator = load_generator(folder / GENERATOR_FILE, space)
            min_cost = float(device.predict([smallest(space)])[0])
        devices[name] = DeviceModels(device, evaluator, generator, min_cost, _stored_frontier(root, manifest, name,
                                                                                              space))
    with _reading(root, SPECIALISED_FILE):
        specialised = current_specialised(root, manifest["files"], space)
    return Bundle(root, manifest, space, trained, accuracy, devices, specialised)
