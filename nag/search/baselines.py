"""Per-budget search baselines, each constrained by the device's cost predictor.

- Random search: `evaluations` feasible architectures drawn uniformly, the best kept.
- Evolutionary search as in OFA: population 100, parent ratio 0.25, mutation ratio 0.5, per-gene
  mutation probability 0.1; children are resampled until feasible a bounded number of times.
- BigNAS coarse-to-fine: a grid of global skeletons (resolution and per-stage depth, width, kernel,
  expansion levels shared by all stages), the best feasible ones evaluated, then random mutations
  around the best.

Every sampler has a bound on its tries; a search that cannot find a feasible architecture falls back
to the space's smallest child and says so.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nag.search.fitness import Fitness
from nag.space.arch import (
    Architecture,
    assemble,
    from_tokens,
    mutate,
    sample_uniform,
    smallest,
    to_tokens,
)
from nag.space.dimensions import Dimension, Scope, families, of_scope, space_dimensions
from nag.space.sampling import sample_tilted
from nag.space.space import SearchSpace

CostFn = Callable[[Sequence[Architecture]], np.ndarray]
# Uniform sampling rarely reaches small budgets; later rounds tilt every choice towards its smallest option.
SAMPLING_TILTS = (0.0, -1.0, -2.0, -4.0, -8.0)


@dataclass(frozen=True)
class SearchResult:
    arch: Architecture
    fitness: float
    predicted_cost: float
    evaluations: int
    seconds: float  # wall time, with each evaluation charged what it cost (see `nag.search.fitness`)
    sampled: int  # architectures drawn, feasible or not
    fallback: bool = False


class FeasibleSampler:
    """Draws architectures within budget, in batches, with a bounded number of batches per call."""

    def __init__(self, space: SearchSpace, cost: CostFn, budget: float, rng: random.Random, batch: int = 64,
                 max_batches: int = 50):
        self.space, self.cost, self.budget, self.rng = space, cost, budget, rng
        self.batch, self.max_batches = batch, max_batches
        self.sampled = 0
        self._pool: list[tuple[Architecture, float]] = []
        self._tilt = 0

    def draw(self, count: int) -> list[tuple[Architecture, float]]:
        out: list[tuple[Architecture, float]] = []
        batches = 0
        while len(out) < count and batches < self.max_batches:
            if not self._pool:
                batches += 1
                tilt = SAMPLING_TILTS[min(self._tilt, len(SAMPLING_TILTS) - 1)]
                archs = [sample_tilted(self.space, tilt, self.rng) if tilt else sample_uniform(self.space, self.rng)
                         for _ in range(self.batch)]
                self.sampled += len(archs)
                costs = self.cost(archs)
                self._pool = [(a, float(c)) for a, c in zip(archs, costs, strict=True) if c <= self.budget]
                if len(self._pool) < self.batch // 16:  # too few feasible: tilt further for the next batch
                    self._tilt += 1
            take = min(count - len(out), len(self._pool))
            out += self._pool[:take]
            self._pool = self._pool[take:]
        return out


def _fallback(space: SearchSpace, cost: CostFn, fitness: Fitness, started: float, sampled: int) -> SearchResult:
    arch = smallest(space)
    score = fitness([arch])[0]
    return SearchResult(arch, score, float(cost([arch])[0]), fitness.evaluations,
                        _charged_seconds(started, fitness), sampled, fallback=True)


def _charged_seconds(started: float, fitness: Fitness) -> float:
    """Wall time outside the fitness calls plus what the fitness charges (cached evaluations included)."""
    return time.perf_counter() - started - fitness.wall + fitness.seconds


def _best(archs: list[tuple[Architecture, float]], fitness: Fitness) -> tuple[Architecture, float, float]:
    scores = fitness([a for a, _ in archs])
    i = int(np.argmax(scores))
    return archs[i][0], scores[i], archs[i][1]


def random_search(space: SearchSpace, cost: CostFn, budget: float, fitness: Fitness, evaluations: int,
                  rng: random.Random) -> SearchResult:
    started = time.perf_counter()
    sampler = FeasibleSampler(space, cost, budget, rng)
    found: dict[str, tuple[Architecture, float]] = {}
    for _ in range(4 * evaluations):  # bounded: duplicates are skipped, not re-evaluated
        if len(found) >= evaluations:
            break
        drawn = sampler.draw(evaluations - len(found))
        if not drawn:
            break
        for a, c in drawn:
            found.setdefault(a.arch_id, (a, c))
    if not found:
        return _fallback(space, cost, fitness, started, sampler.sampled)
    arch, score, c = _best(list(found.values()), fitness)
    return SearchResult(arch, score, c, fitness.evaluations, _charged_seconds(started, fitness), sampler.sampled)


def crossover(a: Architecture, b: Architecture, space: SearchSpace, rng: random.Random) -> Architecture:
    """Each decision from either parent with equal probability (layers follow their stage's depth)."""
    ta, tb = to_tokens(a, space), to_tokens(b, space)
    return from_tokens([x if rng.random() < 0.5 else y for x, y in zip(ta, tb, strict=True)], space)


@dataclass(frozen=True)
class EvolutionConfig:
    population: int = 100
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    max_tries: int = 50  # resampling a child until it is feasible


def evolutionary_search(space: SearchSpace, cost: CostFn, budget: float, fitness: Fitness, evaluations: int,
                        rng: random.Random, cfg: EvolutionConfig = EvolutionConfig()) -> SearchResult:
    """OFA's evolution, stopped once `evaluations` distinct architectures have been scored."""
    started = time.perf_counter()
    sampler = FeasibleSampler(space, cost, budget, rng)
    population = sampler.draw(min(cfg.population, evaluations))
    if not population:
        return _fallback(space, cost, fitness, started, sampler.sampled)
    scores = fitness([a for a, _ in population])
    n_parents = max(1, round(cfg.parent_ratio * cfg.population))
    n_mutations = round(cfg.mutation_ratio * cfg.population)
    sampled = sampler.sampled

    def feasible_children(make: Callable[[], Architecture], count: int) -> list[tuple[Architecture, float]]:
        """`count` children, each slot redrawn (in batches) until feasible, at most `cfg.max_tries` times."""
        nonlocal sampled
        out: list[tuple[Architecture, float]] = []
        for _ in range(cfg.max_tries):
            need = count - len(out)
            if need <= 0:
                break
            drawn = [make() for _ in range(need)]
            sampled += need
            out += [(a, float(c)) for a, c in zip(drawn, cost(drawn), strict=True) if c <= budget]
        return out

    while fitness.evaluations < evaluations:
        order = np.argsort(scores)[::-1][:n_parents]
        parents = [population[i] for i in order]
        archs = [a for a, _ in parents]

        def mutant(archs: list[Architecture] = archs) -> Architecture:
            return mutate(rng.choice(archs), space, rng, cfg.mutate_prob)

        def cross(archs: list[Architecture] = archs) -> Architecture:
            return crossover(rng.choice(archs), rng.choice(archs), space, rng)

        children = feasible_children(mutant, n_mutations)
        children += feasible_children(cross, cfg.population - n_parents - n_mutations)
        room = evaluations - fitness.evaluations
        children = list({a.arch_id: (a, c) for a, c in children}.values())[:room]
        before = fitness.evaluations
        population = parents + children
        scores = fitness([a for a, _ in population])
        if fitness.evaluations == before:  # every child was already scored: nothing new can be learned
            break
    best = int(np.argmax(scores))
    return SearchResult(population[best][0], scores[best], population[best][1], fitness.evaluations,
                        _charged_seconds(started, fitness), sampled)


def _level(choices: tuple[int, ...], level: int, levels: int) -> int:
    return choices[round(level * (len(choices) - 1) / (levels - 1))]


def skeletons(space: SearchSpace, levels: int = 3) -> list[Architecture]:
    """BigNAS's coarse grid: every value of the global dimensions that no stage shares (the resolution) ×
    one level per family of the stage dimensions (depth, width, kernel, expansion), shared by all stages
    and by the global dimensions of the same family (the stem's width)."""
    dims = space_dimensions(space)
    stage_families = families(of_scope(dims, Scope.STAGE, Scope.LAYER))
    free = [d for d in of_scope(dims, Scope.GLOBAL) if d.family not in stage_families]
    out = []
    for combo in itertools.product(*(d.choices(space) for d in free), *(range(levels) for _ in stage_families)):
        chosen = dict(zip((d.name for d in free), combo[:len(free)], strict=True))
        out.append(_skeleton(space, chosen, dict(zip(stage_families, combo[len(free):], strict=True)), levels))
    return list({a.arch_id: a for a in out}.values())


def _skeleton(space: SearchSpace, chosen: dict[str, int], level: dict[str, int], levels: int) -> Architecture:
    def pick(dim: Dimension, _stage: int | None, choices: tuple[int, ...]) -> int:
        return chosen[dim.name] if dim.name in chosen else _level(choices, level[dim.family], levels)

    return assemble(space, pick)


def coarse_to_fine_search(space: SearchSpace, cost: CostFn, budget: float, fitness: Fitness, rng: random.Random,
                          coarse: int = 20, fine: int = 30, mutate_prob: float = 0.2, max_tries: int = 50
                          ) -> SearchResult:
    """Evaluate the `coarse` most expensive feasible skeletons, then `fine` feasible mutations of the best."""
    started = time.perf_counter()
    grid = skeletons(space)
    costs = cost(grid)
    feasible = sorted(((a, float(c)) for a, c in zip(grid, costs, strict=True) if c <= budget),
                      key=lambda ac: -ac[1])
    sampled = len(grid)
    if not feasible:
        return _fallback(space, cost, fitness, started, sampled)
    best_arch, best_score, best_cost = _best(feasible[:coarse], fitness)
    for _ in range(fine):
        for _ in range(max_tries):
            child = mutate(best_arch, space, rng, mutate_prob)
            sampled += 1
            c = float(cost([child])[0])
            if c <= budget:
                score = fitness([child])[0]
                if score > best_score:
                    best_arch, best_score, best_cost = child, score, c
                break
    return SearchResult(best_arch, best_score, best_cost, fitness.evaluations, _charged_seconds(started, fitness),
                        sampled)
