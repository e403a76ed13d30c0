"""Latency measurement in ONNX Runtime under a device profile.

Measurements on a shared machine drift (frequency scaling, other processes), so they are taken in
interleaved rounds: every architecture of a chunk gets its warm-up, then each round times every
architecture once, in a fresh shuffled order. Slow phases of the machine then hit all architectures
alike instead of biasing a few. The reported latency is the median of all runs; its `noise` is the
relative standard error estimated from the per-round medians. A measurement noisier than the profile's
`max_noise` is re-measured a bounded number of times and, if still noisy, kept but flagged
`stable=False` so that the predictor ignores it.

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
from typing import Any

import numpy as np

from nag.cost.device import DeviceProfile, check_runnable
from nag.space.arch import Architecture, biggest, sample_uniform, smallest
from nag.space.plan import child_plan, count_macs
from nag.space.space import SearchSpace

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
        """Relative standard error of the median, estimated from the spread of the per-round medians."""
        if self.median <= 0 or len(self.round_medians) < 2:
            return 0.0
        return float(np.std(self.round_medians, ddof=1) / np.sqrt(len(self.round_medians)) / self.median)

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


def latency_model_bytes(arch: Architecture, space: SearchSpace, seed: int = 0) -> bytes:
    """The ONNX model of `arch` with seeded random weights: the same graph as a served child."""
    import torch

    from nag.export import export_onnx
    from nag.supernet.static import StaticChild

    torch.manual_seed(seed)
    child = StaticChild(arch, child_plan(arch, space), space.input.mean, space.input.std, space.stem.act,
                        space.input.size).eval()
    return export_onnx(child, check=False)


def session_options(profile: DeviceProfile) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = profile.intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def open_session(model: bytes, profile: DeviceProfile) -> Any:
    import onnxruntime as ort

    providers = [profile.provider] + (["CPUExecutionProvider"] if profile.provider != "CPUExecutionProvider" else [])
    return ort.InferenceSession(model, session_options(profile), providers=providers)


def _summarise(arch: Architecture, space: SearchSpace, rounds: list[list[float]], max_noise: float
               ) -> LatencyMeasurement:
    runs = np.concatenate([np.asarray(r) for r in rounds])
    p10, median, p90 = (float(v) for v in np.percentile(runs, [10, 50, 90]))
    round_medians = tuple(float(np.median(r)) for r in rounds)
    m = LatencyMeasurement(arch.arch_id, arch.to_json(), count_macs(arch, space), median, p10, p90,
                           round_medians, len(runs), True)
    stable = m.noise <= max_noise
    return LatencyMeasurement(**{**asdict(m), "round_medians": round_medians, "stable": stable})


def _measure_chunk(archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile,
                   rng: random.Random) -> list[LatencyMeasurement]:
    from nag.export import INPUT_NAME

    sessions = [open_session(latency_model_bytes(a, space), profile) for a in archs]
    c, size = space.input.channels, space.input.size
    feed = {INPUT_NAME: np.random.default_rng(0).random((profile.batch_size, c, size, size), dtype=np.float32)}
    for s in sessions:
        for _ in range(profile.warmup_runs):
            s.run(None, feed)
    timings: list[list[list[float]]] = [[] for _ in archs]
    rewarm = 2
    for _ in range(profile.rounds):
        order = list(range(len(archs)))
        rng.shuffle(order)
        for i in order:
            s = sessions[i]
            for _ in range(rewarm):  # the previous architecture evicted this one's weights from the cache
                s.run(None, feed)
            times = []
            for _ in range(profile.timed_runs):
                start = time.perf_counter_ns()
                s.run(None, feed)
                times.append((time.perf_counter_ns() - start) / 1e6)
            timings[i].append(times)
    return [_summarise(a, space, t, profile.max_noise) for a, t in zip(archs, timings, strict=True)]


def flops_measurement(arch: Architecture, space: SearchSpace) -> LatencyMeasurement:
    macs = count_macs(arch, space)
    v = macs / 1e6
    return LatencyMeasurement(arch.arch_id, arch.to_json(), macs, v, v, v, (v,), 1, True)


def _anchors(space: SearchSpace) -> list[Architecture]:
    return [smallest(space), sample_uniform(space, random.Random(0)), biggest(space)]


def _chunk_factor(anchor_runs: list[LatencyMeasurement], reference: dict[str, float]) -> float:
    return float(np.median([m.median / reference[m.arch_id] for m in anchor_runs]))


def measure_latencies(archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile, *,
                      chunk_size: int = 50, retries: int = 2, seed: int = 0,
                      on_chunk: Callable[[list[LatencyMeasurement]], None] | None = None
                      ) -> list[LatencyMeasurement]:
    """Measure every architecture in chunks of interleaved rounds, guarding against machine drift.

    A shared machine changes speed over minutes (here one chunk in eight ran 30% slower), which
    interleaving within a chunk cannot see. So three anchor architectures are measured inside every
    chunk; a chunk whose anchors are off by more than the profile's `max_drift` from the first chunk's is
    measured again (at most `retries` times, keeping the attempt closest to the reference), and if
    it stays off, its measurements are flagged unstable. Noisy single measurements are flagged too.
    `on_chunk` is called with each finished chunk (for progress and incremental saving).
    """
    if profile.kind == "flops":
        out = [flops_measurement(a, space) for a in archs]
        if on_chunk and out:
            on_chunk(out)
        return out
    check_runnable(profile)
    rng = random.Random(seed)
    anchors = _anchors(space)
    reference: dict[str, float] | None = None
    results: list[LatencyMeasurement] = []
    for start in range(0, len(archs), chunk_size):
        chunk = list(archs[start:start + chunk_size])
        best: tuple[float, float, list[LatencyMeasurement]] | None = None
        for _ in range(1 + retries):
            measured = _measure_chunk(chunk + anchors, space, profile, rng)
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
