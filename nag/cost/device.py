"""Device profiles: how a device's latency is measured (execution provider, threads, batch, repeats).

A profile is a small JSON file. The packaged ones (`nag/cost/profiles/`) are templates; a bundle holds
its own copy under `devices/<name>/device.json`, next to the measurements and the fitted predictor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nag.artifacts import read_json
from nag.cost.kinds import DeviceKind, registered_kinds
from nag.errors import NagError

PACKAGED_PROFILES = Path(__file__).resolve().parent / "profiles"
# ONNX Runtime's graph optimisation levels: the same model ran 9x slower at BASIC than at ALL here.
GRAPH_OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                             "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
MODEL_FORMATS = ("onnx",)


class DeviceError(NagError):
    """A device is unknown, misconfigured, or cannot run here."""


@dataclass(frozen=True)
class DeviceProfile:
    """How to measure latency on one device. `kind` names its `DeviceKind`; `kind="flops"` is a pseudo-device
    whose cost is MMACs."""

    name: str
    kind: str = "onnxruntime"
    description: str = ""
    provider: str = "CPUExecutionProvider"
    intra_op_threads: int = 1
    batch_size: int = 1
    warmup_runs: int = 20
    # Many short interleaved rounds, each round's common speed divided out: over 4 passes of 40
    # architectures here, 40 rounds of 6 runs reproduced medians to 0.6% mean / 2.6% worst deviation,
    # 10 rounds of 12 (the earlier default) to 2.2% / 6.0%, 20 rounds of 12 to 1.3% / 5.8%.
    timed_runs: int = 6
    rounds: int = 40
    max_noise: float = 0.03  # relative standard error of the median above this flags a measurement
    max_drift: float = 0.04  # a chunk whose anchor architectures moved more than this is measured again
    # The rest of the runtime contract: a latency budget holds only under the settings it was measured with.
    graph_optimization: str = "all"
    model_format: str = "onnx"
    runtime_version: str = ""  # the ONNX Runtime that measured the profile ("" in profiles that predate it)
    # The fingerprint (CPU, cores, OS, ONNX Runtime) of the measurement agent that measured the profile
    # (`nag profile-device --agent`); empty when it was measured in the profiling process itself.
    measured_on: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            problems.append(f"name {self.name!r} must be non-empty letters, digits, '-' or '_'")
        if self.kind not in registered_kinds():
            problems.append(f"kind {self.kind!r} must be one of {list(registered_kinds())}")
        if min(self.intra_op_threads, self.batch_size, self.timed_runs, self.rounds) < 1 or self.warmup_runs < 0:
            problems.append("intra_op_threads, batch_size, timed_runs and rounds must be >= 1, warmup_runs >= 0")
        if not self.max_noise > 0 or not self.max_drift > 0:
            problems.append("max_noise and max_drift must be > 0")
        if self.graph_optimization not in GRAPH_OPTIMIZATION_LEVELS:
            problems.append(f"graph_optimization {self.graph_optimization!r} must be one of "
                            f"{list(GRAPH_OPTIMIZATION_LEVELS)}")
        if self.model_format not in MODEL_FORMATS:
            problems.append(f"model_format {self.model_format!r} must be one of {list(MODEL_FORMATS)}")
        if not isinstance(self.measured_on, dict):
            problems.append("measured_on must be a JSON object (an agent's fingerprint)")
        if problems:
            raise DeviceError(f"device profile {self.name!r} is invalid: " + "; ".join(problems))

    @property
    def measured_remotely(self) -> bool:
        """Measured through a measurement agent, on another machine than the one profiling."""
        return bool(self.measured_on)

    @property
    def device_kind(self) -> DeviceKind:
        return registered_kinds()[self.kind]  # registered: checked on construction

    @property
    def unit(self) -> str:
        """The unit of this device's cost: milliseconds, or millions of MACs for the flops pseudo-device."""
        return self.device_kind.unit

    def contract(self) -> dict[str, Any]:
        """Everything the device's costs depend on: a served model's latency holds only under these settings."""
        return self.device_kind.contract(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, raw: Any, origin: str = "device profile") -> DeviceProfile:
        if not isinstance(raw, dict):
            raise DeviceError(f"{origin} must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise DeviceError(f"{origin} has unknown fields {unknown}; known fields: {sorted(known)}")
        if "name" not in raw:
            raise DeviceError(f"{origin} lacks the field 'name'")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise DeviceError(f"{origin} is malformed: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> DeviceProfile:
        raw = read_json(path, "device profile", DeviceError)
        return cls.from_dict(raw, origin=f"device profile {path}")


def packaged_profiles() -> dict[str, Path]:
    """The profile templates shipped with the package, by name."""
    return {p.stem: p for p in sorted(PACKAGED_PROFILES.glob("*.json"))}


def packaged_profile(name: str) -> DeviceProfile:
    known = packaged_profiles()
    if name not in known:
        raise DeviceError(f"unknown device {name!r}; packaged profiles: {sorted(known)} "
                          "(pass --profile-file to describe a new device)")
    return DeviceProfile.load(known[name])


def contract_problems(profile: DeviceProfile) -> tuple[list[str], list[str]]:
    """(errors, warnings) about honouring `profile`'s runtime contract here (for ONNX Runtime: its execution
    provider and version)."""
    return profile.device_kind.contract_problems(profile)


def check_runnable(profile: DeviceProfile) -> None:
    """Raise DeviceError if this machine cannot measure the device (for ONNX Runtime: lacks its execution
    provider)."""
    profile.device_kind.check_runnable(profile)
