"""The serving frontier of one device: what a pick is chosen from (issue 18).

A pick is the best entry within the target of a per-device table, which holds, scored by **one accuracy
estimate** (the expected validation accuracy):

- **measured** architectures, the bundle's triplets: cost from the device's predictor as it is now (the
  triplets' stored costs may predate a re-profile), expected accuracy = their measured validation
  accuracy;
- **proposed** architectures: at each budget of a fixed ladder across the device's range, the
  evaluator's `PROPOSAL_KEEP` best distinct feasible samples of `PROPOSAL_CANDIDATES`, in each of
  `PROPOSAL_SEEDS` seeded draws (`proposal_pool`), plus the space's cheapest and dearest children;
  expected accuracy = the bundle's accuracy predictor (ridge on the one-hot encoding, fitted on the
  same triplets, so on the same scale; an architecture that is also a triplet keeps its measurement).
  On-policy refinement (`nag.pipeline.refine`) measures the proposed entries that reach the front.

The table is reduced to its Pareto front (cost ascending, expected accuracy strictly increasing), and
the pick for a target T is the front's last entry with cost <= T. Because the pool does not depend on
T, the pool within T only grows as T rises: the pick is never worse, by the common estimate, than the
best measured architecture within T; its expected accuracy never falls as the budget rises; and a
target at or above every entry's cost gets the best entry of all. A pick made from samples drawn for T
itself would not be monotone: those samples are not in the pool of the next budget.

Why this rule, these proposals and these two estimates, as measured on the default bundle:
docs/serving.md ("Picking a child") and docs/results.md ("Serving frontier against the lookup table").
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nag.bundle.bundle import TRIPLETS_FILE, Bundle, DeviceModels
from nag.bundle.members import BnStats, StoredFrontier
from nag.cost.store import Device
from nag.pnag.accuracy import AccuracyPredictor
from nag.pnag.evaluator import Evaluator
from nag.pnag.generator import Generator
from nag.pnag.triplets import Triplet, read_triplets
from nag.space.arch import Architecture, biggest, from_tokens, smallest, to_tokens

LADDER_BUDGETS = 48  # half geometric (fine at the low end), half linear (fine at the top) over the range
PROPOSAL_CANDIDATES = 64  # samples per ladder budget and draw
PROPOSAL_SEEDS = 3  # seeded draws per ladder budget (seeds PROPOSAL_SEED, PROPOSAL_SEED + 1, ...)
PROPOSAL_KEEP = 3  # the evaluator's best distinct feasible samples kept per budget and draw
PROPOSAL_SEED = 0


@dataclass(frozen=True)
class FrontierEntry:
    arch: Architecture
    cost: float  # predicted by the device's cost model
    expected_accuracy: float  # % on the validation split: measured, or the accuracy predictor's
    measured: bool  # True: a triplet of the bundle; False: proposed by the generator (or an end of the space)
    # BN statistics stored with the bundle's materialized frontier (else calibrated when exported)
    bn: BnStats | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ServingFrontier:
    """The Pareto front of everything a device's picks are chosen from."""

    entries: tuple[FrontierEntry, ...]  # cost ascending, expected accuracy strictly increasing
    measured: int  # triplets considered
    proposed: int  # distinct proposed architectures considered (not measured)
    ladder: tuple[float, ...]  # the budgets the generator proposed for
    seconds: float  # time to build
    materialized: bool = False  # read from the bundle's stored frontier (`nag.bundle.members`)

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("a serving frontier needs at least one entry")

    @property
    def costs(self) -> list[float]:
        return [e.cost for e in self.entries]

    def index_within(self, target: float) -> int:
        """Index of the best entry with cost <= target; -1 if none fits."""
        return bisect_right(self.costs, target) - 1

    def best_within(self, target: float) -> FrontierEntry | None:
        i = self.index_within(target)
        return self.entries[i] if i >= 0 else None

    @property
    def best(self) -> FrontierEntry:
        return self.entries[-1]


def pareto_front(entries: Sequence[FrontierEntry]) -> tuple[FrontierEntry, ...]:
    """Entries no other entry beats on both cost and expected accuracy; at equal cost and accuracy a
    measured one is kept."""
    front: list[FrontierEntry] = []
    for e in sorted(entries, key=lambda e: (e.cost, -e.expected_accuracy, not e.measured)):
        if not front or e.expected_accuracy > front[-1].expected_accuracy:
            front.append(e)
    return tuple(front)


def ladder_budgets(lo: float, hi: float, n: int = LADDER_BUDGETS) -> list[float]:
    """`n` budgets over [lo, hi]: half evenly in log space, half evenly, both ends included."""
    if not 0 < lo <= hi:
        raise ValueError(f"need 0 < lo <= hi, got {lo}, {hi}")
    if hi == lo or n < 2:
        return [float(hi)]
    half = max(2, n // 2)
    values = np.concatenate([np.geomspace(lo, hi, half), np.linspace(lo, hi, n - half if n - half >= 2 else 2)])
    return sorted({float(v) for v in values})


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one intra-op thread for a while: the generator steps through small tensors, where more
    threads only synchronise (1,536 samples: 0.18 s on 1 thread, 9.7 s on 2 threads of a busy 2-core
    machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def propose_ranked(generator: Generator, evaluator: Evaluator, device: Device, budgets: Sequence[float],
                   candidates: int = PROPOSAL_CANDIDATES, seed: int = PROPOSAL_SEED, keep: int = 1
                   ) -> list[list[Architecture]]:
    """Per budget, the evaluator's `keep` best distinct feasible (by predicted cost) architectures of
    `candidates` samples drawn in one batch, best first (fewer, or none, where fewer are feasible)."""
    space = generator.encoder.space
    budget_rows = torch.tensor(budgets, dtype=torch.float64).repeat_interleave(candidates)
    with _one_thread():
        tokens = generator.sample(budget_rows.float(), torch.Generator().manual_seed(seed)).tokens
    unique: dict[tuple[int, ...], Architecture] = {}
    rows: list[tuple[int, ...]] = []
    for t in tokens.tolist():
        arch = from_tokens(t, space)
        key = tuple(to_tokens(arch, space))
        unique.setdefault(key, arch)
        rows.append(key)
    keys = list(unique)
    cost_of = dict(zip(keys, (float(c) for c in device.predict([unique[k] for k in keys])), strict=True))
    cost = torch.tensor([cost_of[k] for k in rows], dtype=torch.float64)
    with _one_thread():
        scores = evaluator(generator.encoder.encode(torch.tensor(rows, dtype=torch.long)), budget_rows, cost)
    scores = torch.where(cost <= budget_rows, scores.double(), torch.full_like(cost, -torch.inf))
    ranked: list[list[Architecture]] = []
    for g, group in enumerate(scores.view(len(budgets), candidates)):
        chosen: list[Architecture] = []
        for i in torch.argsort(group, descending=True, stable=True).tolist():
            arch = unique[rows[g * candidates + i]]
            if len(chosen) == keep or not torch.isfinite(group[i]):
                break
            if all(arch.arch_id != c.arch_id for c in chosen):
                chosen.append(arch)
        ranked.append(chosen)
    return ranked


def proposal_pool(generator: Generator, evaluator: Evaluator, device: Device, budgets: Sequence[float],
                  candidates: int = PROPOSAL_CANDIDATES, seeds: int = PROPOSAL_SEEDS, keep: int = PROPOSAL_KEEP,
                  seed: int = PROPOSAL_SEED) -> list[Architecture]:
    """Every distinct architecture `propose_ranked` keeps at `budgets` over `seeds` draws (seeds `seed`,
    `seed + 1`, ...), in the order first kept."""
    pool: dict[str, Architecture] = {}
    for s in range(seed, seed + seeds):
        for ranked in propose_ranked(generator, evaluator, device, budgets, candidates, s, keep):
            for arch in ranked:
                pool.setdefault(arch.arch_id, arch)
    return list(pool.values())


def build_frontier(generator: Generator, evaluator: Evaluator, device: Device, accuracy: AccuracyPredictor,
                   triplets: Sequence[Triplet], ladder: int = LADDER_BUDGETS, candidates: int = PROPOSAL_CANDIDATES,
                   seeds: int = PROPOSAL_SEEDS, keep: int = PROPOSAL_KEEP, seed: int = PROPOSAL_SEED
                   ) -> ServingFrontier:
    """The serving frontier of one device (see the module's docstring)."""
    started = time.perf_counter()
    space = generator.encoder.space
    measured: dict[str, FrontierEntry] = {}
    if triplets:
        archs = [t.arch(space) for t in triplets]
        for t, arch, c in zip(triplets, archs, device.predict(archs), strict=True):
            entry = FrontierEntry(arch, float(c), float(t.val_acc), True)
            old = measured.get(arch.arch_id)  # a triplet collected twice: the better-scored one stays
            if old is None or entry.expected_accuracy > old.expected_accuracy:
                measured[arch.arch_id] = entry
    ends = [smallest(space), biggest(space)]
    lo, hi = (float(c) for c in device.predict(ends))
    hi = max([hi, lo] + [e.cost for e in measured.values()])
    budgets = ladder_budgets(lo, hi, ladder)
    pool = {a.arch_id: a for a in proposal_pool(generator, evaluator, device, budgets, candidates, seeds, keep, seed)
            + ends}
    new = [a for a in pool.values() if a.arch_id not in measured]
    proposed = []
    if new:
        expected = accuracy.predict(generator.encoder.encode(generator.encoder.tokens(new)))
        costs = device.predict(new)
        proposed = [FrontierEntry(a, float(c), float(np.clip(e, 0.0, 100.0)), False)
                    for a, c, e in zip(new, costs, expected, strict=True)]
    return ServingFrontier(pareto_front(list(measured.values()) + proposed), len(measured), len(proposed),
                           tuple(budgets), time.perf_counter() - started)


def from_stored(stored: StoredFrontier) -> ServingFrontier:
    """The serving frontier a bundle stores, with each member's BN statistics."""
    entries = tuple(FrontierEntry(m.arch, m.cost, m.expected_accuracy, m.measured, m.bn) for m in stored.members)
    stats = stored.stats
    return ServingFrontier(entries, int(stats.get("measured", 0)), int(stats.get("proposed", 0)),
                           tuple(float(b) for b in stats.get("ladder", ())), 0.0, materialized=True)


_LOCK = threading.Lock()


def built_frontier(bundle: Bundle, models: DeviceModels) -> ServingFrontier:
    """The device's serving frontier built now from the bundle's triplets and the device's generator,
    evaluator and cost model (what the pipeline materializes)."""
    path = Path(bundle.root) / TRIPLETS_FILE
    triplets = read_triplets(path) if path.is_file() else []
    return build_frontier(models.generator, models.evaluator, models.device, bundle.accuracy, triplets)


def serving_frontier(bundle: Bundle, models: DeviceModels) -> ServingFrontier:
    """The device's serving frontier: the bundle's materialized one when it stores a current one, else built
    (`built_frontier`) on first use; kept on `models` (once per loaded bundle). A bundle without triplets
    serves from the generator's proposals alone."""
    frontier = models.frontier
    if frontier is None:
        with _LOCK:
            frontier = models.frontier
            if frontier is None:
                stored = models.stored
                frontier = from_stored(stored) if stored is not None else built_frontier(bundle, models)
                models.frontier = frontier
    return frontier
