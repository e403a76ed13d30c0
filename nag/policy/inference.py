"""Generating an architecture for a budget (PNAG section 3.5).

`generate`, what the server and the CLI serve, chooses from the device's serving frontier
(`nag.policy.frontier`): the generator's proposals across the device's range and the bundle's measured
triplets, scored by one accuracy estimate, so that a pick is never worse than what the bundle measured
within the budget and never gets worse as the budget rises. On a device whose costs are measured
latencies the pick targets the budget less a margin for the predictor's error
(`GenerationConfig.latency_margin`), never less than the cheapest child.

`pick_architecture` is PNAG's sampling step as the paper defines it, which serving never calls: the
budget's embedding is interpolated between its two neighbouring learned budgets, `candidates`
architectures are sampled in one batch, their cost comes from the device's predictor, infeasible ones
are dropped (a bounded number of resampling rounds if none is feasible; then the space's cheapest child,
which the caller is told about), and the evaluator's score picks the best. The benchmarks use it as the
per-request rule that serving is compared with (`benchmarks/frontier_methods.py`) and to judge trained
policies (`benchmarks/ablations_fpnas.py`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from nag.bundle.bundle import Bundle, DeviceModels
from nag.config import GENERATION
from nag.cost.device import DeviceError
from nag.cost.store import Device
from nag.errors import NagError
from nag.limits import MAX_CANDIDATES, MAX_SEED
from nag.pnag.evaluator import Evaluator
from nag.pnag.generator import Generator
from nag.policy.frontier import FrontierEntry, serving_frontier
from nag.space.arch import Architecture, from_tokens, smallest, to_tokens
from nag.space.plan import count_macs, count_params

# Budgets above this many times the dearest child's cost are generated for that multiple: every child
# fits there already, and the generator's float32 budget tensors must stay finite.
SATURATION = 2.0


class InvalidBudgetError(NagError):
    """The budget is not a finite positive number, or the candidate count is out of range."""


class BudgetOutOfRangeError(NagError):
    """The budget is below the cheapest architecture of the space on that device."""

    def __init__(self, message: str, minimum: float):
        super().__init__(message)
        self.minimum = minimum


@dataclass(frozen=True)
class Generated:
    arch: Architecture
    device: str
    unit: str
    budget: float
    target: float  # the budget the pick was generated for: `budget` less the latency margin
    predicted_cost: float
    predicted_accuracy: float  # expected validation accuracy %: measured for a triplet, else predicted
    score: float  # the evaluator's score of the pick at `target`
    macs: int
    params: int
    candidates: int  # architectures the serving frontier was built from (measured + proposed)
    feasible_candidates: int  # frontier entries within `target`
    rounds: int
    fallback: bool
    seed: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    measured: bool = False  # the pick is one of the bundle's triplets (its accuracy was measured)


def _shorten(text: str, limit: int = 64) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def resolve_device(bundle: Bundle, device: str | None) -> DeviceModels:
    name = device or bundle.default_device
    if name not in bundle.devices:
        # The name is the caller's: shortened, so that a huge one cannot blow up the error (gRPC metadata).
        raise DeviceError(f"unknown device {_shorten(name)!r}; this bundle serves {sorted(bundle.devices)}")
    return bundle.devices[name]


def check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise InvalidBudgetError(f"seed must lie in [0, 2**64 - 1], got {seed}")


def check_candidates(candidates: int) -> None:
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise InvalidBudgetError(f"candidates must lie in [1, {MAX_CANDIDATES}], got {candidates}")


def check_budget(budget: float, models: DeviceModels, candidates: int) -> None:
    if budget is None or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise InvalidBudgetError(f"budget must be a finite number > 0 {models.device.unit}, got {budget!r}")
    check_candidates(candidates)
    if budget < models.min_cost:
        raise BudgetOutOfRangeError(
            f"budget {budget:g} {models.device.unit} is below the cheapest architecture of the space on device "
            f"{models.name!r}: the minimum is {models.min_cost:.4g} {models.device.unit}", models.min_cost)


# (feasible tokens [N, T], their predicted cost [N], budget) -> scores [N]; the highest is picked.
ScoreFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Pick:
    tokens: list[int]
    cost: float
    score: float
    candidates: int
    feasible: int
    rounds: int
    fallback: bool
    timings: dict[str, float]  # seconds: "sample" (policy and cost predictor), "choose" (scoring)


@torch.no_grad()
def pick_architecture(generator: Generator, device: Device, score: ScoreFn, budget: float, candidates: int,
                      rng: torch.Generator, max_rounds: int = 4) -> Pick:
    """Sample `candidates` from the policy at `budget`, drop the infeasible ones (by predicted cost), and
    pick the best by `score`; up to `max_rounds` rounds if none is feasible, then the cheapest child."""
    space = generator.encoder.space
    started = time.perf_counter()
    budget_batch = torch.full((candidates,), float(budget))
    feasible_tokens: list[list[int]] = []
    feasible_cost: list[float] = []
    rounds = 0
    while not feasible_tokens and rounds < max_rounds:
        rounds += 1
        tokens = generator.sample(budget_batch, rng).tokens
        unique = {tuple(to_tokens(a, space)): a for a in (from_tokens(t, space) for t in tokens.tolist())}
        archs = list(unique.values())
        costs = device.predict(archs)
        for a, c in zip(archs, costs, strict=True):
            if c <= budget:
                feasible_tokens.append(to_tokens(a, space))
                feasible_cost.append(float(c))
    fallback = not feasible_tokens
    if fallback:
        cheapest = smallest(space)
        feasible_tokens = [to_tokens(cheapest, space)]
        feasible_cost = [float(device.predict([cheapest])[0])]
    sampled = time.perf_counter()
    scores = score(torch.tensor(feasible_tokens, dtype=torch.long), torch.tensor(feasible_cost, dtype=torch.float64),
                   float(budget))
    best = int(torch.argmax(scores))
    return Pick(feasible_tokens[best], feasible_cost[best], float(scores[best]), candidates * rounds,
                0 if fallback else len(feasible_tokens), rounds, fallback,
                {"sample": sampled - started, "choose": time.perf_counter() - sampled})


def evaluator_score(generator: Generator, evaluator: Evaluator) -> ScoreFn:
    def score(tokens: torch.Tensor, cost: torch.Tensor, budget: float) -> torch.Tensor:
        encoding = generator.encoder.encode(tokens)
        return evaluator(encoding, torch.full((len(tokens),), float(budget), dtype=torch.float64), cost)

    return score


def latency_margin(models: DeviceModels) -> float:
    """The device's default margin: `GENERATION.latency_margin` for measured latencies, none for analytic costs."""
    return GENERATION.latency_margin if models.device.profile.device_kind.measured else 0.0


def target_budget(budget: float, models: DeviceModels, margin: float | None = None) -> float:
    """`budget` less the latency margin (the device's default unless `margin` is given), never below the
    cheapest child's cost and never above `SATURATION` times the dearest child's."""
    if margin is None:
        margin = latency_margin(models)
    if not 0.0 <= margin < 1.0:
        raise InvalidBudgetError(f"margin must lie in [0, 1), got {margin!r}")
    ceiling = SATURATION * max(models.device.cost_range[1], models.min_cost)
    return min(max(budget * (1.0 - margin), models.min_cost), ceiling)


@torch.no_grad()
def generate(bundle: Bundle, budget: float, device: str | None = None, candidates: int = 64,
             seed: int | None = None, max_rounds: int = 4, margin: float | None = None) -> Generated:
    """The best architecture within `target_budget(budget, ..., margin)` (in the device's unit) of the
    device's serving frontier (`nag.policy.frontier`): the bundle's measured triplets and the generator's
    proposals across the device's range, scored by one accuracy estimate (measured validation accuracy,
    else the bundle's accuracy predictor), reported as `predicted_accuracy`. The pool does not depend on
    the budget, so the pick is never worse than the best measured architecture within the target, and
    its expected accuracy never falls as the budget rises. `candidates`, `seed` and `max_rounds` are
    deprecated: still validated and `seed` is reported (0 when not given), but the pick does not depend on
    them: a pick drawn from samples for one budget would not be in the pool of the next, and could get
    worse as the budget rises."""
    models = resolve_device(bundle, device)
    check_budget(budget, models, candidates)
    check_seed(seed)
    return generate_checked(bundle, models, budget, candidates, seed, margin)


@torch.no_grad()
def generate_checked(bundle: Bundle, models: DeviceModels, budget: float, candidates: int, seed: int | None,
                     margin: float | None = None) -> Generated:
    """`generate` for a device, budget, candidate count and seed validated already (by
    `nag.policy.request.resolve_request`, or by `generate` itself)."""
    return pick_member(bundle, models, budget, seed, margin)[0]


@torch.no_grad()
def pick_member(bundle: Bundle, models: DeviceModels, budget: float, seed: int | None = None,
                margin: float | None = None) -> tuple[Generated, int]:
    """The pick for a validated `budget` and its index on the device's serving frontier (-1: the space's
    cheapest child, below every member). A function of (bundle, device, budget, margin) alone: `seed` is
    only reported back (0 when not given)."""
    started = time.perf_counter()
    target, index = member_within(bundle, models, budget, margin)
    return member_pick(bundle, models, index, budget, target, 0 if seed is None else int(seed),
                       {"sample": time.perf_counter() - started}), index


def member_within(bundle: Bundle, models: DeviceModels, budget: float, margin: float | None = None
                  ) -> tuple[float, int]:
    """The target for a validated `budget` (`target_budget`) and the index of the device's serving-frontier
    member picked for it: the best one within the target (-1: none, the space's cheapest child)."""
    target = target_budget(budget, models, margin)
    # The bundle's materialized frontier, or one built on first use.
    return target, serving_frontier(bundle, models).index_within(target)


@torch.no_grad()
def member_pick(bundle: Bundle, models: DeviceModels, index: int, budget: float, target: float, seed: int = 0,
                timings: dict[str, float] | None = None) -> Generated:
    """The `Generated` of the device's serving-frontier member `index` (-1: the space's cheapest child)
    answering `budget` (picked for `target`)."""
    started = time.perf_counter()
    space = bundle.space
    frontier = serving_frontier(bundle, models)
    fallback = index < 0  # never while the space's cheapest child is on the frontier's pool
    if fallback:
        cheapest = smallest(space)
        entry = FrontierEntry(cheapest, models.min_cost, float(np.clip(bundle.accuracy.predict(
            models.generator.encoder.encode(models.generator.encoder.tokens([cheapest])))[0], 0.0, 100.0)), False)
    else:
        entry = frontier.entries[index]
    tokens = torch.tensor([to_tokens(entry.arch, space)], dtype=torch.long)
    score = evaluator_score(models.generator, models.evaluator)(
        tokens, torch.tensor([entry.cost], dtype=torch.float64), float(target))
    arch = entry.arch
    return Generated(
        arch=arch, device=models.name, unit=models.device.unit, budget=float(budget), target=target,
        predicted_cost=entry.cost, predicted_accuracy=entry.expected_accuracy, score=float(score[0]),
        macs=count_macs(arch, space), params=count_params(arch, space),
        candidates=frontier.measured + frontier.proposed, feasible_candidates=index + 1, rounds=0,
        fallback=fallback, seed=seed,
        timings={"sample": (timings or {}).get("sample", 0.0), "choose": time.perf_counter() - started},
        measured=entry.measured,
    )
