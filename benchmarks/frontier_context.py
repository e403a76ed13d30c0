"""What every part of the frontier benchmark (`benchmarks.frontier`) shares: its settings, one pick
(`Run`) and the bundle, device and image sets the methods search and are judged on (`Context`)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from nag.bundle.bundle import Bundle, DeviceModels
from nag.config import SERVING_CALIBRATION_IMAGES, GeneratorConfig
from nag.data.datasets import ImageSet
from nag.policy.inference import target_budget
from nag.search.fitness import EvaluationCache, SupernetFitness
from nag.space.arch import Architecture
from nag.space.space import SearchSpace

NOISE_ALLOWANCE = 1.05  # measured latency may exceed the budget by 5% (measurement noise)
GOAL_MARGIN = 0.3  # accuracy points NAG may trail evolutionary search by
SEARCHES = ("random", "evolution", "evolution-predictor", "bignas")
EXTRA_METHODS = ("lookup", "sampled")  # the best triplet within the target; the pre-frontier serving rule


@dataclass(frozen=True)
class Settings:
    """What the default run (≤ 30 minutes on 2 cores for the default bundle) spends per method."""

    budgets: int = 10
    nag_seeds: int = 3
    search_seeds: int = 1  # searches that evaluate the supernet are expensive on 2 cores
    predictor_seeds: int = 1
    random_evaluations: int = 60
    evolution_evaluations: int = 200  # the goal run (`make bench-frontier-goal`) gives evolution 1,000
    evolution_population: int = 100
    predictor_generations: int = 500  # OFA's tutorial: 500 generations of 100 with its accuracy predictor
    coarse: int = 15
    fine: int = 25
    search_val_images: int = 1000
    search_calib_images: int = SERVING_CALIBRATION_IMAGES
    test_images: int | None = None  # all
    ablation_budgets: int = 5
    k_values: tuple[int, ...] = (2, 5, 10, 30)
    candidates: int = 64


QUICK = Settings(budgets=5, nag_seeds=2, predictor_seeds=1, random_evaluations=12, evolution_evaluations=30,
                 evolution_population=10, predictor_generations=20, coarse=6, fine=6, search_val_images=300,
                 test_images=2000, ablation_budgets=3, k_values=(2, 5))


@dataclass
class Run:
    method: str
    seed: int
    budget: float
    arch: Architecture
    predicted_cost: float
    seconds: float
    evaluations: int = 0
    fallback: bool = False
    expected: float | None = None  # the method's own accuracy estimate of its pick (%), where it has one


@dataclass
class Context:
    bundle: Bundle
    device_name: str
    settings: Settings
    val: ImageSet
    test: ImageSet
    cache: EvaluationCache = field(default_factory=EvaluationCache)
    one_off_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def models(self) -> DeviceModels:
        return self.bundle.devices[self.device_name]

    @property
    def space(self) -> SearchSpace:
        return self.bundle.space

    def cost(self, archs: list[Architecture]) -> np.ndarray:
        return self.models.device.predict(archs)

    def target(self, budget: float) -> float:
        """The constraint every method searches under: the budget less NAG's serving latency margin."""
        return target_budget(budget, self.models)

    def supernet_fitness(self) -> SupernetFitness:
        calib = self.bundle.trained.calibration_float[: self.settings.search_calib_images]
        return SupernetFitness(self.bundle.trained.supernet, calib, self.val, self.cache)

    def generator_config(self, steps: int | None = None, seed: int = 0) -> GeneratorConfig:
        pipe = self.bundle.pipeline
        return pipe.generator_config(steps=steps or pipe.generator_steps, seed=seed, log_every=10**9)


def stable_seed(*parts: float | str) -> int:
    """A seed stable across processes (Python's `hash` of a string is salted per process)."""
    text = repr(tuple(round(p, 9) if isinstance(p, float) else p for p in parts))
    return zlib.crc32(text.encode()) & 0x7FFFFFFF
