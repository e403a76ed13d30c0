"""The methods the frontier benchmark (`benchmarks.frontier`) compares: NAG, the bundle's lookup table,
the pre-frontier sampled pick, per-budget searches, and PNAG's ablations (Tables 2, 3 and 5). Each
returns one `Run` per (seed, budget)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.frontier_context import SEARCHES, Context, Run, stable_seed
from nag.bundle.bundle import TRIPLETS_FILE
from nag.pnag.budgets import even_budgets
from nag.pnag.encoding import TokenEncoder
from nag.pnag.evaluator import Evaluator, train_evaluator
from nag.pnag.generator import Generator, RewardFn, token_cost, train_generator
from nag.pnag.rewards import REWARDS, PredictedObjectives
from nag.pnag.triplets import SAMPLED, read_triplets
from nag.policy.inference import ScoreFn, evaluator_score, generate, pick_architecture
from nag.search.baselines import EvolutionConfig, coarse_to_fine_search, evolutionary_search, random_search
from nag.search.fitness import PredictorFitness
from nag.search.mlp_predictor import MLPPredictorConfig, fit_mlp_predictor
from nag.space.arch import Architecture, biggest, from_tokens, smallest

log = logging.getLogger("frontier")


def run_nag(ctx: Context, budgets: list[float], seeds: int) -> list[Run]:
    runs = []
    for seed in range(seeds):
        for b in budgets:
            started = time.perf_counter()
            g = generate(ctx.bundle, b, ctx.device_name, candidates=ctx.settings.candidates, seed=seed)
            runs.append(Run("nag", seed, b, g.arch, g.predicted_cost, time.perf_counter() - started,
                            fallback=g.fallback, expected=g.predicted_accuracy))
    return runs


def run_lookup(ctx: Context, budgets: list[float]) -> list[Run]:
    """The bundle's sampled triplet with the best measured validation accuracy whose predicted cost (the
    device's predictor as it is now) fits the target NAG's reply reports (`target_budget`): what serving
    can get without a generator. Triplets measured by on-policy refinement are left out: the generators
    found them. Deterministic, so one seed."""
    started = time.perf_counter()
    triplets = [t for t in read_triplets(ctx.bundle.root / TRIPLETS_FILE) if t.source == SAMPLED]
    archs = [t.arch(ctx.space) for t in triplets]
    cost = np.asarray(ctx.cost(archs), dtype=float)
    acc = np.array([t.val_acc for t in triplets])
    ctx.one_off_seconds["lookup_table"] = time.perf_counter() - started
    runs = []
    for b in budgets:
        t = time.perf_counter()
        fits = np.flatnonzero(cost <= ctx.target(b))
        if len(fits) == 0:  # below every triplet: the space's cheapest child, as NAG would
            arch = smallest(ctx.space)
            runs.append(Run("lookup", 0, b, arch, float(ctx.cost([arch])[0]), time.perf_counter() - t, fallback=True))
            continue
        best = fits[np.lexsort((cost[fits], -acc[fits]))[0]]  # best accuracy, then the cheaper
        runs.append(Run("lookup", 0, b, archs[best], float(cost[best]), time.perf_counter() - t,
                        expected=float(acc[best])))
    return runs


def run_sampled(ctx: Context, budgets: list[float], seeds: int) -> list[Run]:
    """What `generate` served before the serving frontier: the evaluator's best of the request's own
    `candidates` samples drawn for the target (`pick_architecture`)."""
    models = ctx.models
    score = evaluator_score(models.generator, models.evaluator)
    runs = []
    for seed in range(seeds):
        for b in budgets:
            started = time.perf_counter()
            arch, cost, fallback = pick(ctx, models.generator, score, b, seed)
            runs.append(Run("sampled", seed, b, arch, cost, time.perf_counter() - started, fallback=fallback))
    return runs


def run_search(ctx: Context, method: str, budgets: list[float], seeds: int) -> list[Run]:
    s = ctx.settings
    runs = []
    predictor = None
    if method == "evolution-predictor":
        started = time.perf_counter()
        triplets = read_triplets(ctx.bundle.root / TRIPLETS_FILE)
        encoder = TokenEncoder(ctx.space)
        enc = encoder.encode_archs([t.arch(ctx.space) for t in triplets])
        predictor = fit_mlp_predictor(enc, np.array([t.val_acc for t in triplets]), MLPPredictorConfig())
        ctx.one_off_seconds["mlp_accuracy_predictor"] = time.perf_counter() - started
        log.info("MLP accuracy predictor: held-out RMSE %.3f, tau %.3f (%.1f s)", predictor.metrics["heldout_rmse"],
                 predictor.metrics["heldout_kendall_tau"], ctx.one_off_seconds["mlp_accuracy_predictor"])
    bar = tqdm(total=seeds * len(budgets), desc=method, unit="budget")
    for seed in range(seeds):
        for b in budgets:
            rng = random.Random(stable_seed(method, seed, b))
            target = ctx.target(b)
            if method == "random":
                result = random_search(ctx.space, ctx.cost, target, ctx.supernet_fitness(), s.random_evaluations, rng)
            elif method == "evolution":
                cfg = EvolutionConfig(population=s.evolution_population)
                result = evolutionary_search(ctx.space, ctx.cost, target, ctx.supernet_fitness(),
                                             s.evolution_evaluations, rng, cfg)
            elif method == "evolution-predictor":
                assert predictor is not None
                cfg = EvolutionConfig(population=s.evolution_population)
                per_generation = cfg.population - round(cfg.parent_ratio * cfg.population)
                result = evolutionary_search(ctx.space, ctx.cost, target,
                                             PredictorFitness(TokenEncoder(ctx.space), predictor.predict),
                                             cfg.population + s.predictor_generations * per_generation, rng, cfg)
            elif method == "bignas":
                result = coarse_to_fine_search(ctx.space, ctx.cost, target, ctx.supernet_fitness(), rng, s.coarse,
                                               s.fine)
            else:
                raise ValueError(method)
            runs.append(Run(method, seed, b, result.arch, result.predicted_cost, result.seconds, result.evaluations,
                            result.fallback))
            bar.update(1)
    bar.close()
    return runs


def train_policy(ctx: Context, budgets: list[float], reward: Evaluator | RewardFn, steps: int | None, seed: int
                 ) -> Generator:
    cfg = ctx.generator_config(steps, seed)
    torch.manual_seed(seed)
    generator = Generator.for_config(ctx.space, budgets, cfg)
    train_generator(generator, reward, cfg, progress=False, cost=token_cost(ctx.cost, ctx.space))
    return generator


def pick(ctx: Context, generator: Generator, score: ScoreFn, budget: float, seed: int
         ) -> tuple[Architecture, float, bool]:
    p = pick_architecture(generator, ctx.models.device, score, ctx.target(budget), ctx.settings.candidates,
                          torch.Generator().manual_seed(seed))
    return from_tokens(p.tokens, ctx.space), p.cost, p.fallback


def run_independent(ctx: Context, budgets: list[float], seeds: int, steps: int, label: str) -> list[Run]:
    """PNAG Table 3's "repeated independent search": one policy per budget, trained on that budget alone."""
    evaluator = ctx.models.evaluator
    runs = []
    for seed in range(seeds):
        for b in tqdm(budgets, desc=label, unit="budget"):
            started = time.perf_counter()
            generator = train_policy(ctx, [b], evaluator, steps, seed)
            arch, cost, fallback = pick(ctx, generator, evaluator_score(generator, evaluator), b, seed)
            runs.append(Run(label, seed, b, arch, cost, time.perf_counter() - started, fallback=fallback))
    return runs


def _triplet_tensors(ctx: Context) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[Architecture]]:
    triplets = read_triplets(ctx.bundle.root / TRIPLETS_FILE)
    archs = [t.arch(ctx.space) for t in triplets]
    enc = TokenEncoder(ctx.space).encode_archs(archs)
    cost = torch.tensor(ctx.cost(archs), dtype=torch.float64)
    acc = torch.tensor([t.val_acc for t in triplets], dtype=torch.float64)
    return enc, cost, acc, archs


def run_reward_ablation(ctx: Context, budgets: list[float]) -> list[Run]:
    """PNAG Table 2: the generator trained with other rewards (the bundle's generator is "pareto")."""
    models = ctx.models
    train_budgets = [float(b) for b in models.generator.budget.budgets]
    objectives = PredictedObjectives(TokenEncoder(ctx.space), ctx.bundle.accuracy, models.device)
    runs = []
    for name in ("mnasnet", "tunas", "pareto-cost-only"):
        started = time.perf_counter()
        if name == "pareto-cost-only":
            enc, cost, acc, _ = _triplet_tensors(ctx)
            ecfg = ctx.bundle.pipeline.evaluator_config(rule="cost-only")
            evaluator, _ = train_evaluator(enc, cost, acc, train_budgets, ecfg, progress=False)
            generator = train_policy(ctx, train_budgets, evaluator, None, 0)
            score = evaluator_score(generator, evaluator)
        else:
            reward = REWARDS[name](objectives)
            generator = train_policy(ctx, train_budgets, reward, None, 0)

            def score(tokens: torch.Tensor, cost: torch.Tensor, budget: float, reward: RewardFn = reward
                      ) -> torch.Tensor:
                return reward(tokens, torch.full((len(tokens),), budget, dtype=torch.float64))

        ctx.one_off_seconds[f"train_{name}"] = time.perf_counter() - started
        log.info("reward ablation %s trained in %.0f s", name, ctx.one_off_seconds[f"train_{name}"])
        for b in budgets:
            t = time.perf_counter()
            arch, c, fallback = pick(ctx, generator, score, b, 0)
            runs.append(Run(f"reward:{name}", 0, b, arch, c, time.perf_counter() - t, fallback=fallback))
    return runs


def run_k_ablation(ctx: Context, budgets: list[float], k_values: tuple[int, ...]) -> list[Run]:
    """PNAG Table 5: evaluator and generator retrained with K budgets (the bundle's K is reused as is)."""
    models = ctx.models
    bundle_k = len(models.generator.budget.budgets)
    enc, cost, acc, _ = _triplet_tensors(ctx)
    lo, hi = float(cost.min()), float(cost.max())
    ecfg = ctx.bundle.pipeline.evaluator_config()
    runs = []
    for k in k_values:
        if k == bundle_k:
            evaluator, generator = models.evaluator, models.generator
        else:
            started = time.perf_counter()
            train_budgets = even_budgets(lo, hi, k)
            evaluator, _ = train_evaluator(enc, cost, acc, train_budgets, ecfg, progress=False)
            generator = train_policy(ctx, train_budgets, evaluator, None, 0)
            ctx.one_off_seconds[f"train_k{k}"] = time.perf_counter() - started
            log.info("K=%d trained in %.0f s", k, ctx.one_off_seconds[f"train_k{k}"])
        for b in budgets:
            t = time.perf_counter()
            arch, c, fallback = pick(ctx, generator, evaluator_score(generator, evaluator), b, 0)
            runs.append(Run(f"K={k}", 0, b, arch, c, time.perf_counter() - t, fallback=fallback))
    return runs


def equal_steps(ctx: Context) -> int:
    """Generator steps per budget for independent search: the bundle generator's steps shared over its K budgets."""
    return max(1, ctx.bundle.pipeline.generator_steps // len(ctx.models.generator.budget.budgets))


def benchmark_budgets(ctx: Context, top: float) -> tuple[list[float], list[float]]:
    """The budgets across the device's range (up to `top` times its dearest child) and the ablations' subset."""
    s = ctx.settings
    lo, hi = ctx.models.min_cost, ctx.models.device.cost_range[1]
    budgets = [float(b) for b in np.linspace(lo + 0.02 * (hi - lo), top * hi, s.budgets)]
    ablation_budgets = budgets[1::2][: s.ablation_budgets] if s.budgets >= 2 * s.ablation_budgets \
        else budgets[: s.ablation_budgets]
    return budgets, ablation_budgets


def run_methods(ctx: Context, methods: list[str], budgets: list[float], ablation_budgets: list[float],
                ablations: bool, timings: dict[str, float]) -> tuple[list[Run], list[Run], list[Run]]:
    """Every method's picks, PNAG's ablations' (unless `ablations` is false) and the biggest child at the
    budgets where it fits the target; each stage's wall time goes into `timings`."""
    settings = ctx.settings

    def timed(name: str, fn: Callable[[], list[Run]]) -> list[Run]:
        t = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t
        log.info("%s: %d picks in %.0f s", name, len(out), timings[name])
        return out

    pipe = ctx.bundle.pipeline
    runs = timed("nag", lambda: run_nag(ctx, budgets, settings.nag_seeds))
    if ctx.models.frontier is not None:  # built by NAG's first call (`nag.policy.frontier`)
        ctx.one_off_seconds["nag_serving_frontier"] = ctx.models.frontier.seconds
    if "independent" in methods:
        runs += timed("independent", lambda: run_independent(ctx, budgets, settings.search_seeds, equal_steps(ctx),
                                                             "independent"))
    for m in SEARCHES:
        if m in methods:
            seeds = settings.predictor_seeds if m == "evolution-predictor" else settings.search_seeds
            runs += timed(m, lambda m=m, seeds=seeds: run_search(ctx, m, budgets, seeds))
    if "lookup" in methods:
        runs += timed("lookup", lambda: run_lookup(ctx, budgets))
    if "sampled" in methods:
        runs += timed("sampled", lambda: run_sampled(ctx, budgets, settings.nag_seeds))
    big = biggest(ctx.space)
    big_cost = float(ctx.cost([big])[0])
    reference_runs = [Run("biggest", 0, b, big, big_cost, 0.0) for b in budgets if ctx.target(b) >= big_cost]
    ablation_runs: list[Run] = []
    if ablations:
        ablation_runs += timed("independent-equal-samples", lambda: run_independent(
            ctx, ablation_budgets, 1, pipe.generator_steps, "independent-equal-samples"))
        ablation_runs += timed("rewards", lambda: run_reward_ablation(ctx, ablation_budgets))
        ablation_runs += timed("K", lambda: run_k_ablation(ctx, ablation_budgets, settings.k_values))
    return runs, ablation_runs, reference_runs
