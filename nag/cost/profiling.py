"""`nag profile-device`: measure stratified architectures on a device and fit its latency predictor.

Measurements are saved after every chunk, so a killed run resumes where it stopped (the architecture
list is fixed by the seed, and measured ids are skipped). With a measurement agent the models are timed on
the agent's machine and everything else (sampling, drift checks, saving, the fit) happens here; a killed
agent or host resumes the same way.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from nag.artifacts import atomic_write_bytes
from nag.cost.device import DeviceError, DeviceProfile, check_runnable
from nag.cost.measure import LatencyMeasurement, measure_latencies
from nag.cost.metrics import prediction_metrics
from nag.cost.predictor import LatencyPredictor
from nag.cost.remote import AgentClient, AgentError
from nag.cost.store import (
    MEASUREMENTS_FILE,
    PREDICTOR_FILE,
    PROFILE_FILE,
    device_dir,
    read_measurements,
    write_measurements,
)
from nag.space.arch import Architecture
from nag.space.sampling import sample_stratified
from nag.space.space import SearchSpace

log = logging.getLogger(__name__)

MIN_FIT_MEASUREMENTS = 10


@dataclass(frozen=True)
class FitReport:
    predictor: LatencyPredictor | None
    holdout: dict[str, Any]
    measurements: int
    unstable: int
    # True when too few measurements were stable and the fit used all of them (a noisy machine).
    fit_on_unstable: bool = False


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    cut = round(n * fraction)
    return np.sort(order[cut:]), np.sort(order[:cut])


def fit_device(measurements: list[LatencyMeasurement], space: SearchSpace, profile: DeviceProfile,
               holdout_fraction: float = 0.2, seed: int = 0) -> FitReport:
    """Fit on the stable measurements: held-out metrics from a fit without the held-out part, then the
    shipped predictor refitted on all of them. A MACs-only linear fit on the same split is the baseline.

    On a machine so noisy that fewer than a quarter of the measurements (or fewer than 10) are stable,
    dropping the rest would leave too little to fit, so the fit uses every measurement, logs a warning
    and records `fit_on_unstable` in the predictor's metrics; the held-out metrics then show the cost."""
    if len(measurements) < MIN_FIT_MEASUREMENTS:
        raise DeviceError(f"device {profile.name!r} has {len(measurements)} measurements; the predictor needs at "
                          f"least {MIN_FIT_MEASUREMENTS}")
    stable = [m for m in measurements if m.stable]
    fit_on_unstable = len(stable) < max(MIN_FIT_MEASUREMENTS, len(measurements) // 4)
    if fit_on_unstable:
        log.warning("only %d of %d measurements of device %s are stable (the machine is noisy); fitting the "
                    "predictor on all of them. Re-profile on a quiet machine for an accurate predictor",
                    len(stable), len(measurements), profile.name)
        stable = list(measurements)
    archs = [Architecture.from_json(m.arch_json, space) for m in stable]
    y = np.array([m.corrected for m in stable])
    train, test = split_holdout(len(stable), holdout_fraction, seed)
    held = LatencyPredictor.fit([archs[i] for i in train], y[train], space, profile.name, profile.unit, seed=seed)
    predicted = held.predict([archs[i] for i in test])
    macs = np.array([m.macs for m in stable], dtype=float)
    slope, intercept = np.polyfit(macs[train], y[train], 1, w=1 / y[train])
    holdout = {
        "predictor": prediction_metrics(predicted, y[test]),
        "macs_linear_baseline": prediction_metrics(slope * macs[test] + intercept, y[test]),
        "test_arch_ids": [stable[i].arch_id for i in test],
        "test_predicted": [float(v) for v in predicted],
        "test_measured": [float(y[i]) for i in test],
    }
    final = LatencyPredictor.fit(archs, y, space, profile.name, profile.unit, seed=seed).with_metrics(
        holdout=holdout["predictor"], holdout_macs_linear_baseline=holdout["macs_linear_baseline"],
        unstable_dropped=len(measurements) - len(stable), fit_on_unstable=fit_on_unstable)
    unstable = sum(not m.stable for m in measurements)
    return FitReport(final, holdout, len(measurements), unstable, fit_on_unstable)


def profile_device(bundle: str | Path, space: SearchSpace, profile: DeviceProfile, *, num_archs: int = 400,
                   seed: int = 0, chunk_size: int = 40, progress: bool = True, agent: AgentClient | None = None
                   ) -> FitReport:
    """Measure `num_archs` stratified architectures (resuming), then fit and save the predictor. With an
    `agent`, the models are timed on the agent's machine, whose fingerprint the saved profile records."""
    if agent is None:
        check_runnable(profile)
    else:
        agent.check_runnable(profile)
    folder = device_dir(bundle, profile.name)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MEASUREMENTS_FILE
    kind = profile.device_kind
    done = read_measurements(path) if path.exists() and kind.measured else []
    if agent is None:
        profile = kind.prepare_profiling(profile, done, path)
    else:
        if done and (folder / PROFILE_FILE).is_file():  # where the measurements so far were taken
            recorded = DeviceProfile.load(folder / PROFILE_FILE)
            profile = replace(profile, runtime_version=recorded.runtime_version, measured_on=recorded.measured_on)
        profile = agent.prepare_profiling(profile, done, path)
    atomic_write_bytes(folder / PROFILE_FILE, profile.to_json().encode())
    if not kind.measured:
        return FitReport(None, {}, 0, 0)
    archs = sample_stratified(space, num_archs, random.Random(seed))
    measured_ids = {m.arch_id for m in done}
    todo = [a for a in archs if a.arch_id not in measured_ids]
    log.info("device %s: %d architectures planned, %d already measured", profile.name, len(archs), len(done))
    bar = tqdm(total=len(archs), initial=len(archs) - len(todo), desc=f"measuring {profile.name}", unit="arch",
               disable=not progress)

    def save(chunk: list[LatencyMeasurement]) -> None:
        done.extend(chunk)
        write_measurements(path, done)
        bar.update(len(chunk))

    try:
        measure_latencies(todo, space, profile, chunk_size=chunk_size, seed=seed, on_chunk=save, timer=agent)
    except AgentError as exc:
        raise AgentError(f"{exc}. The {len(done)} measurements written to {path} are kept: run again to "
                         f"resume") from None
    finally:
        bar.close()  # before any error message
    report = fit_device(done, space, profile, seed=seed)
    assert report.predictor is not None
    report.predictor.save(folder / PREDICTOR_FILE)
    return report
