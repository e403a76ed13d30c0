"""Latency of architectures measured now, next to the machine's speed against its device profile.

A shared machine's speed moves by several percent between days (and far more on a bad one), while
the latency predictor was fitted on the profile's measurements. Judging a pick's measured latency
against a budget therefore mixes the predictor's error with the machine's drift. `measure_against_profile`
separates the two: it measures reference architectures from the profile in the same interleaved
rounds as the requested ones and reports their median ratio (now / profiled), so that a reader can
also judge a latency at the profile's speed, `median / speed`, the way the profiler itself divides
out drift between its chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nag.cost.device import DeviceProfile
from nag.cost.measure import LatencyMeasurement, ModelTimer, measure_latencies
from nag.cost.store import MEASUREMENTS_FILE, read_measurements
from nag.space.arch import Architecture
from nag.space.space import SearchSpace


@dataclass(frozen=True)
class MeasuredNow:
    measurements: list[LatencyMeasurement]  # one per requested architecture, in order (repeats shared)
    speed: float  # median over the references of (latency now / profiled latency); > 1: slower now
    reference_ratios: dict[str, float]  # arch_id -> latency now / profiled, per reference architecture

    def at_profile_speed(self) -> list[float]:
        return [m.corrected / self.speed for m in self.measurements]


def reference_architectures(profiled: Sequence[LatencyMeasurement], space: SearchSpace, count: int
                            ) -> list[Architecture]:
    """`count` stable profiled architectures spread evenly over the profiled latency range."""
    stable = sorted((m for m in profiled if m.stable), key=lambda m: m.corrected)
    if not stable:
        return []
    picks = np.unique(np.linspace(0, len(stable) - 1, min(count, len(stable))).round().astype(int))
    return [Architecture.from_json(stable[i].arch_json, space) for i in picks]


def measure_against_profile(archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile,
                            device_folder: str | Path, references: int = 8, seed: int = 0,
                            timer: ModelTimer | None = None) -> MeasuredNow:
    """Measure `archs` together with `references` profiled architectures and the machine's speed ratio (on a
    measurement agent's machine, given one as `timer`)."""
    profiled = read_measurements(Path(device_folder) / MEASUREMENTS_FILE)
    by_id = {m.arch_id: m for m in profiled}
    unique = {a.arch_id: a for a in archs}
    refs = [a for a in reference_architectures(profiled, space, references) if a.arch_id not in unique]
    measured = measure_latencies(list(unique.values()) + refs, space, profile, seed=seed, timer=timer)
    now = {m.arch_id: m for m in measured}
    ratios = {a.arch_id: now[a.arch_id].corrected / by_id[a.arch_id].corrected for a in refs}
    speed = float(np.median(list(ratios.values()))) if ratios else 1.0
    return MeasuredNow([now[a.arch_id] for a in archs], speed, ratios)
