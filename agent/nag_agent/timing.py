"""Timing ONNX models the way NAG's profiler does, on the machine this agent runs on.

The models of one request are timed in interleaved rounds: each model gets its warm-up, then every round
runs each model (in a fresh shuffled order) a few untimed times to bring its weights back into the cache
and then `timed_runs` timed times. With 8 or more models, each round's common speed (the median over the
models of their round median / their overall median) is divided out, so that a slow phase of the machine
hits no model more than another. A model's noise is the relative standard error of its median, estimated
from the median absolute deviation of its round medians; a model noisier than `max_noise` gets extra
rounds (at most as many again) and stays flagged unstable if that does not help.

NAG's own local measurement (`nag.cost.measure`) follows the same rules; this module cannot import NAG,
so the agent stays small enough for a board. Runs are timed with `time.perf_counter_ns` around
`InferenceSession.run`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

GRAPH_OPTIMIZATION_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
# 1.4826 * MAD estimates a normal standard deviation; the median of n samples has sqrt(pi/2) = 1.2533 times
# the standard error of their mean.
MAD_TO_SD = 1.4826
MEDIAN_SE_FACTOR = 1.2533
# Below this many models a round's common speed cannot be told apart from the models' own noise.
MIN_MODELS_FOR_ROUND_SPEED = 8


class ModelError(ValueError):
    """A model cannot be loaded or fed (the message says which one and why)."""


class Cancelled(Exception):
    """The caller went away while its models were being timed."""


@dataclass(frozen=True)
class Settings:
    provider: str = "CPUExecutionProvider"
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    graph_optimization_level: str = "ORT_ENABLE_ALL"
    batch_size: int = 1
    input_shape: tuple = ()  # one sample's shape; () takes it from the model
    warmup_runs: int = 20
    timed_runs: int = 6
    rounds: int = 40
    rewarm_runs: int = 2
    max_noise: float = 0.0  # 0: no extra rounds
    seed: int = 0


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    round_medians_ms: tuple
    runs: int
    noise: float
    stable: bool


def relative_error(round_medians: Sequence[float], centre: float) -> float:
    """Standard error of the median of `round_medians`, relative to `centre`, from their MAD."""
    values = np.asarray(round_medians, dtype=float)
    if len(values) < 2 or centre <= 0:
        return 0.0
    spread = MAD_TO_SD * float(np.median(np.abs(values - np.median(values))))
    return float(MEDIAN_SE_FACTOR * spread / np.sqrt(len(values)) / centre)


def rounds_noise(rounds: list[list[float]]) -> float:
    return relative_error([float(np.median(r)) for r in rounds], float(np.median(np.concatenate(rounds))))


def open_session(model: bytes, settings: Settings, index: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings.graph_optimization_level)
    opts.log_severity_level = 3
    providers = [settings.provider]
    if settings.provider != "CPUExecutionProvider":
        providers.append("CPUExecutionProvider")
    try:
        return ort.InferenceSession(model, opts, providers=providers)
    except Exception as exc:  # ONNX Runtime raises its own exception types per failure
        reason = " ".join(str(exc).split())[:300]
        raise ModelError(f"model {index} is not an ONNX model that ONNX Runtime can load: {reason}") from None


def make_feed(session: Any, settings: Settings, index: int) -> dict:
    """Seeded uniform [0, 1) float32 input of the contract's batch and the model's (or the contract's) shape."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"model {index} has {len(inputs)} inputs; the agent feeds models with one input")
    spec = inputs[0]
    if spec.type != "tensor(float)":
        raise ModelError(f"model {index}'s input {spec.name!r} is {spec.type}; the agent feeds float32 tensors")
    if settings.input_shape:
        sample = list(settings.input_shape)
    else:
        sample = list(spec.shape[1:])
        if not all(isinstance(d, int) and d > 0 for d in sample):
            raise ModelError(f"model {index}'s input shape {spec.shape} has symbolic dimensions besides the "
                             f"batch; give the sample shape in the contract")
    shape = (settings.batch_size, *sample)
    feed = {spec.name: np.random.default_rng(0).random(shape, dtype=np.float32)}
    try:
        session.run(None, feed)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ModelError(f"model {index} does not run on a float32 input of shape {list(shape)}: {reason}") from None
    return feed


def _divide_round_speed(runs: list[list[list[float]]]) -> None:
    if len(runs) < MIN_MODELS_FOR_ROUND_SPEED:
        return
    medians = np.array([[np.median(r) for r in model_rounds] for model_rounds in runs])  # [models, rounds]
    speed = np.median(medians / np.median(medians, axis=1, keepdims=True), axis=0)
    for model_rounds in runs:
        for r, factor in enumerate(speed):
            model_rounds[r] = [t / factor for t in model_rounds[r]]


def _summary(rounds: list[list[float]], max_noise: float) -> Timing:
    every = np.concatenate([np.asarray(r) for r in rounds])
    p10, median, p90 = (float(v) for v in np.percentile(every, [10, 50, 90]))
    noise = rounds_noise(rounds)
    return Timing(median, p10, p90, tuple(float(np.median(r)) for r in rounds), len(every), noise,
                  max_noise <= 0 or noise <= max_noise)


def time_sessions(sessions: Sequence[Any], feeds: Sequence[dict], settings: Settings,
                  cancelled: Callable[[], bool] = lambda: False) -> list[Timing]:
    """Time loaded sessions in interleaved rounds; raises `Cancelled` as soon as `cancelled()` says so."""
    rng = random.Random(settings.seed)
    for session, feed in zip(sessions, feeds):
        for _ in range(settings.warmup_runs):
            session.run(None, feed)
    runs: list[list[list[float]]] = [[] for _ in sessions]

    def play(indices: list[int]) -> None:
        rng.shuffle(indices)
        for i in indices:
            if cancelled():
                raise Cancelled()
            session, feed = sessions[i], feeds[i]
            for _ in range(settings.rewarm_runs):
                session.run(None, feed)
            times = []
            for _ in range(settings.timed_runs):
                start = time.perf_counter_ns()
                session.run(None, feed)
                times.append((time.perf_counter_ns() - start) / 1e6)
            runs[i].append(times)

    for _ in range(settings.rounds):
        play(list(range(len(sessions))))
    _divide_round_speed(runs)
    if settings.max_noise > 0:
        for _ in range(settings.rounds):
            noisy = [i for i, r in enumerate(runs) if rounds_noise(r) > settings.max_noise]
            if not noisy:
                break
            play(noisy)
    return [_summary(r, settings.max_noise) for r in runs]


def time_models(models: Sequence[bytes], settings: Settings, cancelled: Callable[[], bool] = lambda: False
                ) -> list[Timing]:
    """Load every model under the contract (ModelError names the first that fails), then time them."""
    sessions = [open_session(m, settings, i) for i, m in enumerate(models)]
    feeds = [make_feed(s, settings, i) for i, s in enumerate(sessions)]
    return time_sessions(sessions, feeds, settings, cancelled)
