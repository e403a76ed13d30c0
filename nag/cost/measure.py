"""Latency measurement in ONNX Runtime under a device profile.

Measurements on a shared machine drift (frequency scaling, other processes), so they are taken in
interleaved rounds: every architecture of a chunk gets its warm-up, then each round times every
architecture once, in a fresh shuffled order. Slow phases of the machine then hit all architectures
alike instead of biasing a few, and each round's common speed is divided out. The reported latency is
the median of all runs; its `noise` is the relative standard error estimated robustly (from the median
absolute deviation) from the per-round medians, so that one round hit by a burst of other work does
not condemn a measurement whose median it barely moved. A measurement noisier than the profile's
`max_noise` gets extra rounds (at most as many again) and, if still noisy, is kept but flagged
`stable=False` so that the predictor prefers the others.

Runs are timed with `time.perf_counter_ns` around `InferenceSession.run`: ONNX Runtime's built-in
profiler (`enable_profiling`) writes a JSON trace per session and adds per-node overhead, which is
the right tool for a per-operator breakdown but distorts whole-model timings of sub-millisecond models.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol

import numpy as np
import torch

from nag.cost.device import GRAPH_OPTIMIZATION_LEVELS, DeviceError, DeviceProfile, check_runnable
from nag.export import INPUT_NAME, export_onnx
from nag.space.arch import Architecture, biggest, sample_uniform, smallest
from nag.space.plan import child_plan, count_macs
from nag.space.space import SearchSpace
from nag.supernet.static import StaticChild

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyMeasurement:
    """One architecture's latency on one device, in the device's unit (ms per batch, or MMACs)."""

    arch_id: str
    arch_json: str
    macs: int
    median: float
    p10: float
    p90: float
    round_medians: tuple[float, ...]
    runs: int
    stable: bool
    # Speed of the machine while this measurement's chunk ran, relative to the first chunk (the
    # median ratio of the anchor architectures); `corrected` divides it out.
    drift: float = 1.0

    @property
    def spread(self) -> float:
        return (self.p90 - self.p10) / self.median if self.median > 0 else 0.0

    @property
    def corrected(self) -> float:
        """The median with the chunk's common-mode drift divided out: what the predictor is fitted on."""
        return self.median / self.drift

    @property
    def noise(self) -> float:
        """Relative standard error of the median, estimated from the per-round medians."""
        if self.median <= 0:
            return 0.0
        return robust_relative_error(self.round_medians, self.median)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["round_medians"] = list(self.round_medians)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LatencyMeasurement:
        return cls(
            arch_id=str(raw["arch_id"]), arch_json=str(raw["arch_json"]), macs=int(raw["macs"]),
            median=float(raw["median"]), p10=float(raw["p10"]), p90=float(raw["p90"]),
            round_medians=tuple(float(v) for v in raw["round_medians"]), runs=int(raw["runs"]),
            stable=bool(raw["stable"]), drift=float(raw.get("drift", 1.0)),
        )


# 1.4826 * MAD estimates a normal standard deviation; the median of n samples has sqrt(pi/2) = 1.2533
# times the standard error of their mean.
_MAD_TO_SD = 1.4826
# Below this many architectures a round's common speed cannot be told from the architectures' own noise.
_MIN_ARCHS_FOR_ROUND_SPEED = 8
_MEDIAN_SE_FACTOR = 1.2533


def robust_relative_error(round_medians: Sequence[float], centre: float) -> float:
    """Standard error of the median of `round_medians`, relative to `centre`, from their MAD."""
    values = np.asarray(round_medians, dtype=float)
    if len(values) < 2 or centre <= 0:
        return 0.0
    spread = _MAD_TO_SD * float(np.median(np.abs(values - np.median(values))))
    return float(_MEDIAN_SE_FACTOR * spread / np.sqrt(len(values)) / centre)


def latency_model_bytes(arch: Architecture, space: SearchSpace, seed: int = 0) -> bytes:
    """The ONNX model of `arch` with seeded random weights: the same graph as a served child."""
    torch.manual_seed(seed)
    child = StaticChild(arch, child_plan(arch, space), space.input.mean, space.input.std, space.stem.act,
                        space.input.size).eval()
    return export_onnx(child, check=False)


def _options(intra_op_threads: int, level: str, inter_op_threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.log_severity_level = 3
    return opts


def _providers(provider: str) -> list[str]:
    return [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])


def session_options(profile: DeviceProfile) -> Any:
    return _options(profile.intra_op_threads, GRAPH_OPTIMIZATION_LEVELS[profile.graph_optimization])


def open_session(model: bytes, profile: DeviceProfile) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(model, session_options(profile), providers=_providers(profile.provider))


def measure_model(model: bytes, profile: DeviceProfile, input_shape: Sequence[int], warmup: int = 10,
                  runs: int = 40) -> float:
    """Median latency in ms of one serialised model under `profile`'s runtime contract: a quick check of a
    served model (tens of milliseconds), not a profile-grade measurement."""
    session = open_session(model, profile)
    channels, height, width = input_shape[-3:]
    feed = {INPUT_NAME: np.random.default_rng(0).random((profile.batch_size, channels, height, width),
                                                         dtype=np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feed)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return float(np.median(times))


def _round_noise(rounds: list[list[float]]) -> float:
    return robust_relative_error([float(np.median(r)) for r in rounds], float(np.median(np.concatenate(rounds))))


# Untimed runs before each model's turn in a round: the previous model evicted this one's weights from the cache.
REWARM_RUNS = 2
# A served model's quick check (`measure_model`): warm-up runs, then the median of this many timed runs.
CHECK_WARMUP_RUNS = 10
CHECK_RUNS = 40


@dataclass(frozen=True)
class TimingContract:
    """How a set of models is timed: a device's runtime contract (provider, threads, graph optimisation, batch,
    one sample's input shape) and its repeats. The same values go to a measurement agent (`nag.cost.remote`)."""

    provider: str
    intra_op_threads: int
    graph_optimization_level: str  # ONNX Runtime's name, e.g. ORT_ENABLE_ALL
    batch_size: int
    input_shape: tuple[int, ...]  # one sample, without the batch
    warmup_runs: int
    timed_runs: int
    rounds: int
    rewarm_runs: int
    max_noise: float  # noisier models get up to `rounds` extra rounds; 0: none
    inter_op_threads: int = 1

    @classmethod
    def for_profiling(cls, profile: DeviceProfile, input_shape: Sequence[int]) -> TimingContract:
        """The interleaved rounds of profiling (`measure_onnxruntime`)."""
        return cls(profile.provider, profile.intra_op_threads, GRAPH_OPTIMIZATION_LEVELS[profile.graph_optimization],
                   profile.batch_size, tuple(int(d) for d in input_shape[-3:]), profile.warmup_runs,
                   profile.timed_runs, profile.rounds, REWARM_RUNS, profile.max_noise)

    @classmethod
    def for_check(cls, profile: DeviceProfile, input_shape: Sequence[int]) -> TimingContract:
        """One served model's quick check: the median of `CHECK_RUNS` runs after `CHECK_WARMUP_RUNS`."""
        return cls(profile.provider, profile.intra_op_threads, GRAPH_OPTIMIZATION_LEVELS[profile.graph_optimization],
                   profile.batch_size, tuple(int(d) for d in input_shape[-3:]), CHECK_WARMUP_RUNS, CHECK_RUNS, 1, 0,
                   0.0)


@dataclass(frozen=True)
class ModelTiming:
    """One model's timing under a `TimingContract`, in ms: the median over every timed run, and per round."""

    median: float
    p10: float
    p90: float
    round_medians: tuple[float, ...]
    runs: int
    stable: bool


class ModelTimer(Protocol):
    """Where models are timed: this machine (`LOCAL`) or a measurement agent (`nag.cost.remote.AgentClient`)."""

    where: str

    def check_runnable(self, profile: DeviceProfile) -> None:
        """Raise DeviceError if models cannot be timed there under `profile`'s contract."""

    def time_models(self, models: Sequence[bytes], contract: TimingContract, rng: random.Random
                    ) -> list[ModelTiming]:
        """Time `models` in interleaved rounds (their order in each round drawn from `rng`), in order."""


def _divide_round_speed(timings: list[list[list[float]]]) -> None:
    """Divide each full round's runs by the machine's speed during that round, in place.

    A round lasts a fraction of a second, and a shared machine's slow phases (another tenant, frequency
    changes) last about as long, so they hit every architecture of a round alike. The round's speed is
    the median over architectures of (round median / the architecture's median over all rounds); with
    a few dozen architectures per chunk this halves the pass-to-pass noise of the medians.
    """
    if len(timings) < _MIN_ARCHS_FOR_ROUND_SPEED:
        return
    medians = np.array([[np.median(r) for r in arch_rounds] for arch_rounds in timings])  # [archs, rounds]
    speed = np.median(medians / np.median(medians, axis=1, keepdims=True), axis=0)
    for arch_rounds in timings:
        for r, factor in enumerate(speed):
            arch_rounds[r] = [t / factor for t in arch_rounds[r]]


def _timing(rounds: list[list[float]], max_noise: float) -> ModelTiming:
    runs = np.concatenate([np.asarray(r) for r in rounds])
    p10, median, p90 = (float(v) for v in np.percentile(runs, [10, 50, 90]))
    round_medians = tuple(float(np.median(r)) for r in rounds)
    return ModelTiming(median, p10, p90, round_medians, len(runs), max_noise <= 0 or _round_noise(rounds) <= max_noise)


def _contract_session(model: bytes, contract: TimingContract) -> Any:
    import onnxruntime as ort

    opts = _options(contract.intra_op_threads, contract.graph_optimization_level, contract.inter_op_threads)
    return ort.InferenceSession(model, opts, providers=_providers(contract.provider))


class LocalTimer:
    """Times models on this machine, in this process."""

    where = "this machine"

    def check_runnable(self, profile: DeviceProfile) -> None:
        check_runnable(profile)

    def time_models(self, models: Sequence[bytes], contract: TimingContract, rng: random.Random
                    ) -> list[ModelTiming]:
        sessions = [_contract_session(m, contract) for m in models]
        feed = {INPUT_NAME: np.random.default_rng(0).random((contract.batch_size, *contract.input_shape),
                                                            dtype=np.float32)}
        for s in sessions:
            for _ in range(contract.warmup_runs):
                s.run(None, feed)
        timings: list[list[list[float]]] = [[] for _ in models]

        def one_round(indices: list[int]) -> None:
            rng.shuffle(indices)
            for i in indices:
                s = sessions[i]
                for _ in range(contract.rewarm_runs):
                    s.run(None, feed)
                times = []
                for _ in range(contract.timed_runs):
                    start = time.perf_counter_ns()
                    s.run(None, feed)
                    times.append((time.perf_counter_ns() - start) / 1e6)
                timings[i].append(times)

        for _ in range(contract.rounds):
            one_round(list(range(len(models))))
        _divide_round_speed(timings)
        if contract.max_noise > 0:
            for _ in range(contract.rounds):  # extra rounds, only for the measurements still too noisy
                noisy = [i for i, t in enumerate(timings) if _round_noise(t) > contract.max_noise]
                if not noisy:
                    break
                one_round(noisy)
        return [_timing(t, contract.max_noise) for t in timings]


LOCAL = LocalTimer()


def _measure_chunk(archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile,
                   rng: random.Random, timer: ModelTimer) -> list[LatencyMeasurement]:
    contract = TimingContract.for_profiling(profile, (space.input.channels, space.input.size, space.input.size))
    timings = timer.time_models([latency_model_bytes(a, space) for a in archs], contract, rng)
    return [LatencyMeasurement(a.arch_id, a.to_json(), count_macs(a, space), t.median, t.p10, t.p90, t.round_medians,
                               t.runs, t.stable) for a, t in zip(archs, timings, strict=True)]


def _anchors(space: SearchSpace) -> list[Architecture]:
    return [smallest(space), sample_uniform(space, random.Random(0)), biggest(space)]


def _chunk_factor(anchor_runs: list[LatencyMeasurement], reference: dict[str, float]) -> float:
    return float(np.median([m.median / reference[m.arch_id] for m in anchor_runs]))


def measure_latencies(archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile, *,
                      chunk_size: int = 50, retries: int = 2, seed: int = 0,
                      on_chunk: Callable[[list[LatencyMeasurement]], None] | None = None,
                      timer: ModelTimer | None = None) -> list[LatencyMeasurement]:
    """Every architecture's cost on the device, as its kind measures it (`measure_onnxruntime` for ONNX Runtime).
    With a `timer` (a measurement agent), an ONNX Runtime device's models are timed there instead."""
    if timer is None:
        return profile.device_kind.measure(archs, space, profile, chunk_size=chunk_size, retries=retries, seed=seed,
                                           on_chunk=on_chunk)
    if profile.kind != "onnxruntime":
        raise DeviceError(f"device {profile.name!r} is of kind {profile.kind!r}; a measurement agent times ONNX "
                          f"Runtime latencies only")
    return measure_onnxruntime(archs, space, profile, chunk_size=chunk_size, retries=retries, seed=seed,
                               on_chunk=on_chunk, timer=timer)


def measure_onnxruntime(archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile, *,
                        chunk_size: int = 50, retries: int = 2, seed: int = 0,
                        on_chunk: Callable[[list[LatencyMeasurement]], None] | None = None,
                        timer: ModelTimer = LOCAL) -> list[LatencyMeasurement]:
    """Measure every architecture in chunks of interleaved rounds, guarding against machine drift.

    A shared machine changes speed over minutes (here one chunk in eight ran 30% slower), which
    interleaving within a chunk cannot see. So three anchor architectures are measured inside every
    chunk; a chunk whose anchors are off by more than the profile's `max_drift` from the first chunk's is
    measured again (at most `retries` times, keeping the attempt closest to the reference), and if
    it stays off, its measurements are flagged unstable. Noisy single measurements are flagged too.
    `on_chunk` is called with each finished chunk (for progress and incremental saving). `timer` says
    where the models run: this machine, or a measurement agent.
    """
    timer.check_runnable(profile)
    rng = random.Random(seed)
    anchors = _anchors(space)
    reference: dict[str, float] | None = None
    results: list[LatencyMeasurement] = []
    for start in range(0, len(archs), chunk_size):
        chunk = list(archs[start:start + chunk_size])
        best: tuple[float, float, list[LatencyMeasurement]] | None = None
        for _ in range(1 + retries):
            measured = _measure_chunk(chunk + anchors, space, profile, rng, timer)
            measured, anchor_runs = measured[:len(chunk)], measured[len(chunk):]
            if reference is None:
                reference = {m.arch_id: m.median for m in anchor_runs}
            factor = _chunk_factor(anchor_runs, reference)
            drift = abs(factor - 1)
            if best is None or drift < best[0]:
                best = (drift, factor, measured)
            if drift <= profile.max_drift:
                break
            log.info("chunk at %d drifted %.1f%% from the reference; measuring it again", start, 100 * drift)
        assert best is not None
        drift, factor, measured = best
        measured = [replace(m, drift=factor) for m in measured]
        if drift > profile.max_drift:
            log.warning("chunk at %d still drifts %.1f%%; its measurements are flagged unstable", start, 100 * drift)
            measured = [replace(m, stable=False) for m in measured]
        results += measured
        if on_chunk:
            on_chunk(measured)
    return results
