"""Device kinds: what a device's cost is, the contract it holds under, and how it is measured and modelled.

A device profile names its kind (`DeviceProfile.kind`, e.g. "onnxruntime" or "flops"); everything that
depends on the kind asks the kind object. A new kind is one `DeviceKind` subclass (usually of
`AnalyticKind` or `MeasuredKind` in `nag.cost.builtin_kinds`), registered once with `register_kind`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from nag.cost.predictor import CostModel
from nag.space.arch import Architecture
from nag.space.space import SearchSpace

if TYPE_CHECKING:  # both import this module to look kinds up
    from nag.cost.device import DeviceProfile
    from nag.cost.measure import LatencyMeasurement


class DeviceKind(ABC):
    """One kind of device. An analytic kind (`measured = False`) computes its cost from the architecture;
    a measured kind times models, and serves costs from a predictor fitted to those measurements."""

    name: ClassVar[str]  # the `kind` field of its profiles
    unit: ClassVar[str]  # of its costs, e.g. "ms"
    measured: ClassVar[bool]  # costs carry measurement error: profiling measures, serving keeps a margin

    @abstractmethod
    def contract(self, profile: DeviceProfile) -> dict[str, Any]:
        """Everything the device's costs depend on: a served model's cost holds only under these settings."""

    def contract_problems(self, profile: DeviceProfile) -> tuple[list[str], list[str]]:
        """(errors, warnings) about honouring `profile`'s contract on this machine."""
        return [], []

    def check_runnable(self, profile: DeviceProfile) -> None:
        """Raise `DeviceError` if this machine cannot measure the device (by default every machine can)."""
        return None

    def runs_here(self, profile: DeviceProfile) -> bool:
        """Whether this machine runs the device's models under its contract, so that a server can verify a
        served model's cost (`measure_model`) and calibrate its speed against the profile."""
        return False

    def measure_model(self, model: bytes, profile: DeviceProfile, input_shape: Sequence[int]) -> float:
        """One served model's cost, measured now (only called where `runs_here`)."""
        raise NotImplementedError(f"device kind {self.name!r} does not measure served models")

    def prepare_profiling(self, profile: DeviceProfile, done: Sequence[LatencyMeasurement], path: Path
                          ) -> DeviceProfile:
        """The profile to record before profiling resumes with the measurements `done` (read from `path`),
        e.g. with the runtime version that measures them; raise `DeviceError` if they cannot be resumed."""
        return profile

    @abstractmethod
    def measure(self, archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile, *,
                chunk_size: int, retries: int, seed: int,
                on_chunk: Callable[[list[LatencyMeasurement]], None] | None) -> list[LatencyMeasurement]:
        """The cost of every architecture, in order; `on_chunk` is called with each finished chunk."""

    @abstractmethod
    def load_cost_model(self, folder: Path, profile: DeviceProfile, space: SearchSpace
                        ) -> tuple[CostModel, tuple[float, float]]:
        """The device's cost model from its bundle folder, and the (min, max) cost it predicts in `space`."""


_KINDS: dict[str, DeviceKind] = {}


def register_kind(kind: DeviceKind) -> DeviceKind:
    """Make profiles of `kind.name` use `kind`; a name is registered once."""
    if kind.name in _KINDS:
        raise ValueError(f"device kind {kind.name!r} is registered already ({_KINDS[kind.name]!r})")
    _KINDS[kind.name] = kind
    return kind


def registered_kinds() -> Mapping[str, DeviceKind]:
    """Every registered kind by name, in registration order."""
    return MappingProxyType(_KINDS)
