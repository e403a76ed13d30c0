"""Device directories in a bundle: `devices/<name>/{device.json, measurements.jsonl, predictor.json}`.

A user profiles a new device anywhere (`nag profile-device`) and copies the resulting directory into
the bundle's `devices/`; everything that serves or trains reads devices only through this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nag.artifacts import read_jsonl, write_jsonl
from nag.cost.device import DeviceError, DeviceProfile
from nag.cost.measure import LatencyMeasurement
from nag.cost.predictor import CostModel
from nag.space.arch import Architecture
from nag.space.space import SearchSpace

PROFILE_FILE = "device.json"
MEASUREMENTS_FILE = "measurements.jsonl"
PREDICTOR_FILE = "predictor.json"
# Latencies of the serving frontier's members, measured under the device's contract after the bundle was
# built (`nag measure-frontier`) and expressed at the profile's speed. A pick is the cheapest child the
# predictor likes best, so the predictor's misses gather there (on the default bundle it under-predicted
# the picks of 3-9 MMACs by 25-53%); a measured cost replaces the predicted one for these children.
SERVING_MEASUREMENTS_FILE = "serving_measurements.jsonl"


def devices_root(bundle: str | Path) -> Path:
    return Path(bundle) / "devices"


def device_dir(bundle: str | Path, name: str) -> Path:
    return devices_root(bundle) / name


def list_devices(bundle: str | Path) -> list[str]:
    root = devices_root(bundle)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / PROFILE_FILE).is_file())


def read_measurements(path: str | Path) -> list[LatencyMeasurement]:
    """Every line of a measurements file; a truncated or malformed line is an error naming it."""
    return read_jsonl(path, "measurements file", LatencyMeasurement.from_dict,
                      missing_hint="; run `nag profile-device`",
                      malformed_hint="; delete the line or re-run the profiler")


def write_measurements(path: str | Path, measurements: Sequence[LatencyMeasurement]) -> None:
    write_jsonl(path, (m.to_dict() for m in measurements))


@dataclass(frozen=True)
class Device:
    """A device ready to predict costs: its profile, cost model and the cost range of its space, and the
    children whose cost was measured rather than predicted (arch id -> cost at the profile's speed)."""

    profile: DeviceProfile
    cost_model: CostModel
    cost_range: tuple[float, float]
    measured: Mapping[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def unit(self) -> str:
        return self.profile.unit

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        """Each child's cost: its measurement where the device has one, else the cost model's prediction."""
        costs = self.cost_model.predict(archs)
        if self.measured:
            costs = np.array(costs, copy=True)
            for i, arch in enumerate(archs):
                known = self.measured.get(arch.arch_id)
                if known is not None:
                    costs[i] = known
        return costs


def read_serving_costs(folder: str | Path) -> dict[str, float]:
    """The device folder's measured serving-frontier costs (empty when it has none)."""
    path = Path(folder) / SERVING_MEASUREMENTS_FILE
    return {m.arch_id: m.corrected for m in read_measurements(path)} if path.is_file() else {}


def load_device(bundle: str | Path, name: str, space: SearchSpace) -> Device:
    """Load a device of a bundle; an unknown name is an error listing the known ones."""
    folder = device_dir(bundle, name)
    if not (folder / PROFILE_FILE).is_file():
        known = list_devices(bundle)
        raise DeviceError(f"unknown device {name!r}; this bundle has {known or 'no devices'}")
    profile = DeviceProfile.load(folder / PROFILE_FILE)
    if profile.name != name:
        raise DeviceError(f"{folder / PROFILE_FILE} describes device {profile.name!r}, but lies in folder {name!r}")
    model, cost_range = profile.device_kind.load_cost_model(folder, profile, space)
    return Device(profile, model, cost_range, read_serving_costs(folder))
