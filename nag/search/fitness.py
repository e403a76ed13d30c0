"""What a search maximises: supernet validation accuracy (cached, with its cost accounted) or a predictor.

Several searches in one benchmark share a `EvaluationCache` so that an architecture is evaluated once,
but each search is charged the time its own evaluations took, cached or not: the reported search
time is what the search would have cost alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from nag.data.datasets import ImageSet
from nag.export.evaluate import child_accuracy
from nag.pnag.encoding import TokenEncoder
from nag.space.arch import Architecture
from nag.supernet.model import Supernet


@dataclass
class EvaluationCache:
    """arch_id -> (validation accuracy, seconds the evaluation took)."""

    entries: dict[str, tuple[float, float]] = field(default_factory=dict)


class Fitness:
    """Scores architectures; `evaluations` counts distinct architectures scored, `seconds` their cost
    and `wall` the time actually spent in calls."""

    def __init__(self) -> None:
        self.evaluations = 0
        self.seconds = 0.0
        self.wall = 0.0
        self._seen: dict[str, float] = {}

    def __call__(self, archs: Sequence[Architecture]) -> list[float]:
        started = time.perf_counter()
        new = list({a.arch_id: a for a in archs if a.arch_id not in self._seen}.values())
        if new:
            for arch, score in zip(new, self._score(new), strict=True):
                self._seen[arch.arch_id] = score
            self.seconds += self._charged(new, time.perf_counter() - started)
            self.evaluations += len(new)
        self.wall += time.perf_counter() - started
        return [self._seen[a.arch_id] for a in archs]

    def _score(self, archs: list[Architecture]) -> list[float]:
        raise NotImplementedError

    def _charged(self, archs: list[Architecture], elapsed: float) -> float:
        return elapsed


class SupernetFitness(Fitness):
    """Validation accuracy (%) in the supernet after BN re-calibration: one "supernet evaluation" each."""

    def __init__(self, supernet: Supernet, calibration: torch.Tensor, val: ImageSet,
                 cache: EvaluationCache | None = None):
        super().__init__()
        self.supernet = supernet
        self.calibration = calibration
        self.val = val
        self.cache = cache if cache is not None else EvaluationCache()
        self._cost: dict[str, float] = {}

    def _score(self, archs: list[Architecture]) -> list[float]:
        out = []
        for arch in archs:
            if arch.arch_id not in self.cache.entries:
                started = time.perf_counter()
                acc = child_accuracy(self.supernet, arch, self.calibration, self.val)
                self.cache.entries[arch.arch_id] = (acc, time.perf_counter() - started)
            acc, seconds = self.cache.entries[arch.arch_id]
            self._cost[arch.arch_id] = seconds
            out.append(acc)
        return out

    def _charged(self, archs: list[Architecture], elapsed: float) -> float:
        return sum(self._cost[a.arch_id] for a in archs)


class PredictorFitness(Fitness):
    """A learned accuracy predictor on the one-hot encoding (OFA's search with a predictor)."""

    def __init__(self, encoder: TokenEncoder, predict: Callable[[torch.Tensor], np.ndarray]):
        super().__init__()
        self.encoder = encoder
        self.predict = predict

    def _score(self, archs: list[Architecture]) -> list[float]:
        return [float(v) for v in self.predict(self.encoder.encode_archs(archs))]
