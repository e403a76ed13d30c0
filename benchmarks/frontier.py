"""NAG against per-budget searches, and PNAG's Tables 2-5, on one bundle (`make bench-frontier`).

    python -m benchmarks.frontier --bundle bundles/default --device cpu
    python -m benchmarks.frontier --bundle bundles/demo --quick

At each budget every method picks one architecture under the device's latency predictor, for the budget
less the latency margin NAG serves with (`GenerationConfig.latency_margin`). Each pick is
then judged the same way: test accuracy (supernet, BN re-calibrated on the served number of images,
all test images) and latency measured in ONNX Runtime (one drift-guarded pass over every pick).
Searches score candidates on validation images only. Method times are wall times on this machine;
a supernet evaluation that another search already ran is charged at what it cost then. `lookup` is
the bundle's best measured triplet within the target (no generator), `sampled` the evaluator's best of
the request's own samples (what `generate` served before its serving frontier); `--top 2` extends the
budgets to twice the dearest child.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import random
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from benchmarks.frontier_stats import hypervolume, paired_bootstrap, regrets, verdict
from benchmarks.results_io import RESULTS, machine, markdown_table, write_results
from nag.bundle import load_bundle
from nag.bundle.bundle import Bundle
from nag.core.budgets import even_budgets
from nag.core.encoding import TokenEncoder
from nag.core.evaluator import Evaluator, EvaluatorConfig, train_evaluator
from nag.core.generator import Generator, GeneratorConfig, RewardFn, token_cost, train_generator
from nag.core.inference import ScoreFn, evaluator_score, generate, latency_margin, pick_architecture, target_budget
from nag.core.materialize import SERVING_CALIBRATION_IMAGES
from nag.core.rewards import REWARDS, PredictedObjectives
from nag.core.triplets import read_triplets
from nag.cost.speed import measure_against_profile
from nag.cost.store import device_dir
from nag.data import DataSource, load_splits
from nag.data.datasets import ImageSet
from nag.errors import NagError
from nag.search.baselines import EvolutionConfig, coarse_to_fine_search, evolutionary_search, random_search
from nag.search.fitness import EvaluationCache, PredictorFitness, SupernetFitness
from nag.search.mlp_predictor import MLPPredictorConfig, fit_mlp_predictor
from nag.space.arch import Architecture, biggest, from_tokens, smallest
from nag.supernet.evaluate import child_correct

log = logging.getLogger("frontier")
NOISE_ALLOWANCE = 1.05  # measured latency may exceed the budget by 5% (measurement noise)
GOAL_MARGIN = 0.3  # accuracy points NAG may trail evolutionary search by


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
    def models(self) -> Any:
        return self.bundle.devices[self.device_name]

    @property
    def space(self) -> Any:
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
        pipe = self.bundle.manifest["configs"]["pipeline"]
        return GeneratorConfig(steps=steps or int(pipe["generator_steps"]),
                               samples_per_budget=int(pipe["samples_per_budget"]),
                               entropy_weight=float(pipe["entropy_weight"]), seed=seed, log_every=10**9)


def _seed(*parts: float | str) -> int:
    """A seed stable across processes (Python's `hash` of a string is salted per process)."""
    text = repr(tuple(round(p, 9) if isinstance(p, float) else p for p in parts))
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


# ---------------------------------------------------------------------------------------------
# Methods: each returns one Run per (seed, budget)
# ---------------------------------------------------------------------------------------------


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
    """The bundle's triplet with the best measured validation accuracy whose predicted cost (the device's
    predictor as it is now) fits the target NAG's reply reports (`target_budget`): what serving can get
    without a generator. Deterministic, so one seed."""
    started = time.perf_counter()
    triplets = read_triplets(ctx.bundle.root / "triplets.jsonl")
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
        triplets = read_triplets(ctx.bundle.root / "triplets.jsonl")
        encoder = TokenEncoder(ctx.space)
        enc = encoder.encode_archs([t.arch(ctx.space) for t in triplets])
        predictor = fit_mlp_predictor(enc, np.array([t.val_acc for t in triplets]), MLPPredictorConfig())
        ctx.one_off_seconds["mlp_accuracy_predictor"] = time.perf_counter() - started
        log.info("MLP accuracy predictor: held-out RMSE %.3f, tau %.3f (%.1f s)", predictor.metrics["heldout_rmse"],
                 predictor.metrics["heldout_kendall_tau"], ctx.one_off_seconds["mlp_accuracy_predictor"])
    bar = tqdm(total=seeds * len(budgets), desc=method, unit="budget")
    for seed in range(seeds):
        for b in budgets:
            rng = random.Random(_seed(method, seed, b))
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
    generator = Generator(ctx.space, budgets, cfg.hidden, cfg.budget_dim)
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
    triplets = read_triplets(ctx.bundle.root / "triplets.jsonl")
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
            steps = int(ctx.bundle.manifest["configs"]["pipeline"]["evaluator_steps"])
            ecfg = EvaluatorConfig(steps=steps, rule="cost-only")
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
    steps = int(ctx.bundle.manifest["configs"]["pipeline"]["evaluator_steps"])
    runs = []
    for k in k_values:
        if k == bundle_k:
            evaluator, generator = models.evaluator, models.generator
        else:
            started = time.perf_counter()
            train_budgets = even_budgets(lo, hi, k)
            evaluator, _ = train_evaluator(enc, cost, acc, train_budgets, EvaluatorConfig(steps=steps), progress=False)
            generator = train_policy(ctx, train_budgets, evaluator, None, 0)
            ctx.one_off_seconds[f"train_k{k}"] = time.perf_counter() - started
            log.info("K=%d trained in %.0f s", k, ctx.one_off_seconds[f"train_k{k}"])
        for b in budgets:
            t = time.perf_counter()
            arch, c, fallback = pick(ctx, generator, evaluator_score(generator, evaluator), b, 0)
            runs.append(Run(f"K={k}", 0, b, arch, c, time.perf_counter() - t, fallback=fallback))
    return runs


# ---------------------------------------------------------------------------------------------
# Judging the picks
# ---------------------------------------------------------------------------------------------


def correctness_on_test(ctx: Context, arch: Architecture) -> np.ndarray:
    trained = ctx.bundle.trained
    return child_correct(trained.supernet, arch, trained.calibration_float[:SERVING_CALIBRATION_IMAGES], ctx.test)


def judge(ctx: Context, runs: list[Run]) -> tuple[dict[str, np.ndarray], dict[str, float | None], dict[str, float]]:
    """Test correctness and measured latency of every pick, and the machine's speed against the profile's.

    The speed check measures 8 of the profile's architectures (spread over its latency range) in the
    same pass and divides by what the profile measured for them: a ratio above 1 means this machine
    runs slower now than when the latency predictor was fitted, so picks made under the predictor
    overshoot.
    """
    unique = {r.arch.arch_id: r.arch for r in runs}
    correct = {}
    for arch_id, arch in tqdm(unique.items(), desc="test accuracy", unit="arch"):
        correct[arch_id] = correctness_on_test(ctx, arch)
    measured: dict[str, float | None] = dict.fromkeys(unique)
    speed: dict[str, float] = {}
    profile = ctx.models.device.profile
    if profile.kind != "flops":
        log.info("measuring %d picks and the profile's reference architectures in ONNX Runtime", len(unique))
        now = measure_against_profile(list(unique.values()), ctx.space, profile,
                                      device_dir(ctx.bundle.root, ctx.device_name))
        measured.update({m.arch_id: m.median for m in now.measurements})
        speed = now.reference_ratios
    else:
        for arch_id, arch in unique.items():
            measured[arch_id] = float(ctx.cost([arch])[0])
    return correct, measured, speed


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


@dataclass
class Judged:
    correct: dict[str, np.ndarray]
    measured: dict[str, float | None]

    def acc(self, run: Run) -> float:
        return 100.0 * float(self.correct[run.arch.arch_id].mean())

    def latency(self, run: Run) -> float | None:
        return self.measured[run.arch.arch_id]

    def feasible(self, run: Run) -> bool:
        m = self.latency(run)
        return m is not None and m <= NOISE_ALLOWANCE * run.budget


def by_method(runs: list[Run]) -> dict[str, dict[float, list[Run]]]:
    out: dict[str, dict[float, list[Run]]] = {}
    for r in runs:
        out.setdefault(r.method, {}).setdefault(r.budget, []).append(r)
    return out


def comparison(ctx: Context, runs: list[Run], judged: Judged, budgets: list[float], reference: str = "nag"
               ) -> dict[str, Any]:
    """Per method: accuracy, feasibility, regret, hypervolume, time; paired bootstrap against `reference`."""
    from nag.space.plan import count_macs

    grouped = by_method(runs)
    methods = list(grouped)
    seed_acc = {m: [statistics.mean(judged.acc(r) for r in grouped[m][b]) for b in budgets] for m in methods}
    feasible = {m: [all(judged.feasible(r) for r in grouped[m][b]) for b in budgets] for m in methods}
    regret = regrets({m: [a if f else None for a, f in zip(seed_acc[m], feasible[m], strict=True)] for m in methods})
    all_points = [(judged.latency(r), judged.acc(r)) for r in runs if judged.latency(r) is not None]
    ref_cost = NOISE_ALLOWANCE * max(budgets)
    ref_acc = min(a for _, a in all_points) - 1.0
    summary: dict[str, Any] = {}
    for m in methods:
        seeds = sorted({r.seed for r in runs if r.method == m})
        hv = [hypervolume([(lat, judged.acc(r)) for b in budgets for r in grouped[m][b]
                           if r.seed == s and (lat := judged.latency(r)) is not None], ref_cost, ref_acc)
              for s in seeds]
        valid = [x for x in regret[m] if x is not None]
        times = [r.seconds for b in budgets for r in grouped[m][b]]
        summary[m] = {"mean_test_acc": statistics.mean(seed_acc[m]), "feasible_share": sum(feasible[m]) / len(budgets),
                      "mean_regret": statistics.mean(valid) if valid else None, "hypervolume": statistics.mean(hv),
                      "seconds_per_budget_median": statistics.median(times),
                      "seconds_per_budget_mean": statistics.mean(times), "seeds": len(seeds),
                      "evaluations_per_budget": statistics.mean(r.evaluations for b in budgets for r in grouped[m][b])}
    paired: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        if m == reference or reference not in grouped:
            continue
        paired[m] = []
        for b in budgets:
            ref = np.mean([judged.correct[r.arch.arch_id] for r in grouped[reference][b]], axis=0)
            other = np.mean([judged.correct[r.arch.arch_id] for r in grouped[m][b]], axis=0)
            diff, low, high = paired_bootstrap(ref, other, seed=_seed(m, b))
            paired[m].append({"budget": b, "diff": diff, "low": low, "high": high, "verdict": verdict(low, high)})
    per_budget = []
    for i, b in enumerate(budgets):
        row: dict[str, Any] = {"budget": b}
        for m in methods:
            rs = grouped[m][b]
            row[m] = {"archs": [r.arch.to_json() for r in rs], "test_acc": seed_acc[m][i],
                      "test_acc_per_seed": [judged.acc(r) for r in rs],
                      "measured": [judged.latency(r) for r in rs], "predicted": [r.predicted_cost for r in rs],
                      "feasible": feasible[m][i], "seconds": statistics.mean(r.seconds for r in rs),
                      "mmacs": [count_macs(r.arch, ctx.space) / 1e6 for r in rs], "regret": regret[m][i],
                      "fallback": any(r.fallback for r in rs)}
        per_budget.append(row)
    return {"methods": methods, "budgets": budgets, "summary": summary, "per_budget": per_budget,
            f"paired_{reference}_minus": paired, "hypervolume_reference": {"cost": ref_cost, "acc": ref_acc}}


def _cell(row: dict[str, Any], method: str) -> str:
    r = row[method]
    lat = [m for m in r["measured"] if m is not None]
    text = f"{r['test_acc']:.2f}" + (f" ({statistics.mean(lat):.3g})" if lat else "")
    return text if r["feasible"] else text + " ✗"


def accuracy_table(data: dict[str, Any], unit: str, labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    methods = data["methods"]
    rows = [[f"{row['budget']:.4g}"] + [_cell(row, m) for m in methods] for row in data["per_budget"]]
    return markdown_table([f"budget ({unit})"] + [labels.get(m, m) for m in methods], rows)


def summary_table(data: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    rows = []
    for m in data["methods"]:
        s = data["summary"][m]
        rows.append([labels.get(m, m), s["seeds"], f"{s['mean_test_acc']:.2f}", f"{100 * s['feasible_share']:.0f}%",
                     "-" if s["mean_regret"] is None else f"{s['mean_regret']:.2f}", f"{s['hypervolume']:.3f}",
                     f"{s['evaluations_per_budget']:.0f}", f"{s['seconds_per_budget_median']:.3g}"])
    return markdown_table(["method", "seeds", "mean test acc %", "feasible (measured ≤ B×1.05)", "mean regret (points)",
                           "hypervolume", "supernet/predictor evals per budget", "seconds per budget (median)"], rows)


def paired_table(data: dict[str, Any], reference: str = "nag") -> str:
    paired = data[f"paired_{reference}_minus"]
    if not paired:
        return ""
    methods = list(paired)
    rows = []
    for i, b in enumerate(data["budgets"]):
        rows.append([f"{b:.4g}"] + [f"{p[i]['diff']:+.2f} [{p[i]['low']:+.2f}, {p[i]['high']:+.2f}] {p[i]['verdict']}"
                                    for p in (paired[m] for m in methods)])
    return markdown_table(["budget"] + [f"{reference} − {m}" for m in methods], rows)


def at_profile_speed(result: dict[str, Any]) -> dict[str, Any] | None:
    """Feasibility with each measured latency divided by the machine's median speed against the profile.

    The latency predictor predicts the machine as it was when the profile was measured; when the
    profile's own architectures, measured in the same pass as the picks, run slower now, that factor is
    the machine's, not any method's. Both judgements are reported.
    """
    anchors = result.get("measured_over_profiled_anchors") or {}
    if not anchors:
        return None
    speed = float(np.median(list(anchors.values())))
    data = result["comparison"]
    out: dict[str, Any] = {"speed": speed, "methods": {}}
    for m in data["methods"]:
        infeasible = [row["budget"] for row in data["per_budget"]
                      if not all(x is not None and x / speed <= NOISE_ALLOWANCE * row["budget"]
                                 for x in row[m]["measured"])]
        out["methods"][m] = {"feasible_share": 1 - len(infeasible) / len(data["per_budget"]),
                             "infeasible_budgets": infeasible}
    goal = result.get("goal_vs_evolution")
    if goal is not None:
        out["goal_met_everywhere"] = not out["methods"]["nag"]["infeasible_budgets"] and all(
            row["gap"] >= -GOAL_MARGIN for row in goal["per_budget"])
    return out


def at_profile_speed_markdown(data: dict[str, Any]) -> str:
    rows = [[m, f"{v['feasible_share']:.0%}", ", ".join(f"{b:.4g}" for b in v["infeasible_budgets"]) or "none"]
            for m, v in data["methods"].items()]
    md = ("## Feasibility at the profile's speed\n\nMeasured latency divided by the machine's median speed "
          f"against the profile ({data['speed']:.3f}), then ≤ B×{NOISE_ALLOWANCE}:\n\n"
          + markdown_table(["method", "feasible", "infeasible budgets"], rows))
    if "goal_met_everywhere" in data:
        md += f"\n**Goal at the profile's speed**: {'met' if data['goal_met_everywhere'] else 'missed'}.\n"
    return md + "\n"


def rejudge(path: Path) -> int:
    """Add the at-profile-speed judgement to a saved result (`--rejudge`) without re-running its methods."""
    try:
        result = json.loads(path.read_text())
        data = at_profile_speed(result)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        print(f"error: {path} is not a frontier benchmark result (JSON written by benchmarks.frontier)",
              file=sys.stderr)
        return 2
    if data is None:
        print(f"error: {path} has no measured latencies against the profile", file=sys.stderr)
        return 2
    result["at_profile_speed"] = data
    md_path = path.with_suffix(".md")
    md = md_path.read_text() if md_path.is_file() else ""
    md = md.split("## Feasibility at the profile's speed")[0].rstrip("\n") + "\n\n" + at_profile_speed_markdown(data)
    write_results(path.stem, result, md, path.parent)
    print(at_profile_speed_markdown(data))
    return 0


def goal_check(data: dict[str, Any], baseline: str = "evolution") -> dict[str, Any]:
    """NAG feasible at every budget, and its accuracy ≥ the baseline's − 0.3 points at every budget."""
    rows = []
    for row in data["per_budget"]:
        nag, base = row["nag"], row[baseline]
        gap = nag["test_acc"] - base["test_acc"]
        rows.append({"budget": row["budget"], "nag_feasible": nag["feasible"], "gap": gap,
                     "met": nag["feasible"] and gap >= -GOAL_MARGIN})
    return {"baseline": baseline, "per_budget": rows, "met_everywhere": all(r["met"] for r in rows),
            "worst_gap": min(r["gap"] for r in rows), "infeasible_budgets": [r["budget"] for r in rows
                                                                            if not r["nag_feasible"]]}


def plot(data: dict[str, Any], unit: str, path: Any, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, m in enumerate(data["methods"]):
        xs, ys = [], []
        for row in data["per_budget"]:
            for lat, acc in zip(row[m]["measured"], row[m]["test_acc_per_seed"], strict=True):
                if lat is not None:
                    xs.append(lat)
                    ys.append(acc)
        ax.scatter(xs, ys, s=18, color=f"C{i}", alpha=0.7, label=m)
        means = [(statistics.mean([v for v in row[m]["measured"] if v is not None] or [np.nan]), row[m]["test_acc"])
                 for row in data["per_budget"]]
        ax.plot([x for x, _ in means], [y for _, y in means], color=f"C{i}", lw=1)
    for b in data["budgets"]:
        ax.axvline(b, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel(f"measured latency ({unit})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

SEARCHES = ("random", "evolution", "evolution-predictor", "bignas")
EXTRA_METHODS = ("lookup", "sampled")  # the best triplet within the target; the pre-frontier serving rule


def monotonicity(data: dict[str, Any], runs: list[Run]) -> dict[str, Any]:
    """Per method, the largest fall between consecutive budgets of its test accuracy (mean over seeds) and,
    where the method reports one, of its own expected accuracy (any seed)."""
    out: dict[str, Any] = {}
    grouped = by_method(runs)
    for m in data["methods"]:
        acc = [row[m]["test_acc"] for row in data["per_budget"]]
        worst = max((a - b for a, b in itertools.pairwise(acc)), default=0.0)
        seqs = {}
        for b in data["budgets"]:
            for r in grouped[m][b]:
                seqs.setdefault(r.seed, []).append(r.expected)
        expected = None
        if all(v is not None for seq in seqs.values() for v in seq):
            expected = max((max((a - b for a, b in itertools.pairwise(seq)), default=0.0)
                            for seq in seqs.values()), default=0.0)
        out[m] = {"max_test_acc_drop": max(0.0, worst), "max_expected_acc_drop": None if expected is None
                  else max(0.0, expected), "test_acc": acc}
    return out


def monotonicity_markdown(data: dict[str, Any]) -> str:
    rows = [[m, f"{v['max_test_acc_drop']:.2f}",
             "-" if v["max_expected_acc_drop"] is None else f"{v['max_expected_acc_drop']:.2f}"]
            for m, v in data.items()]
    return ("## Monotonicity\n\nLargest fall from one budget to the next (points; 0 = never falls):\n\n"
            + markdown_table(["method", "test accuracy (mean over seeds)", "the method's expected accuracy"], rows)
            + "\n")


def against_reference(judged: Judged, runs: list[Run], reference: list[Run], method: str = "nag"
                      ) -> list[dict[str, Any]]:
    """`method` against a fixed reference child (the biggest) at the budgets where that child fits the target."""
    rows = []
    for ref in reference:
        mine = [r for r in runs if r.method == method and r.budget == ref.budget]
        a = np.mean([judged.correct[r.arch.arch_id] for r in mine], axis=0)
        b = judged.correct[ref.arch.arch_id]
        diff, low, high = paired_bootstrap(a, b, seed=_seed(ref.method, ref.budget))
        rows.append({"budget": ref.budget, "reference": ref.method, f"{method}_acc": 100.0 * float(a.mean()),
                     "reference_acc": 100.0 * float(b.mean()), "diff": diff, "low": low, "high": high,
                     "verdict": verdict(low, high), "archs": sorted({r.arch.arch_id for r in mine}),
                     "reference_arch": ref.arch.arch_id, "reference_cost": ref.predicted_cost})
    return rows


def against_reference_markdown(rows: list[dict[str, Any]], unit: str) -> str:
    ref = rows[0]
    md = (f"## NAG against the {ref['reference']} child where it fits\n\nThe {ref['reference']} child (predicted "
          f"{ref['reference_cost']:.4g} {unit}) fits the target at these budgets; paired test accuracy, 95% "
          "bootstrap:\n\n")
    return md + markdown_table(
        [f"budget ({unit})", "nag %", f"{ref['reference']} %", "nag − reference"],
        [[f"{r['budget']:.4g}", f"{r['nag_acc']:.2f}", f"{r['reference_acc']:.2f}",
          f"{r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] {r['verdict']}"] for r in rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="few budgets, evaluations and images (demo bundle, CI)")
    p.add_argument("--budgets", type=int, help="number of budgets across the device's range")
    p.add_argument("--random-evaluations", type=int)
    p.add_argument("--evolution-evaluations", type=int)
    p.add_argument("--search-seeds", type=int)
    p.add_argument("--methods", default="nag,independent," + ",".join(SEARCHES),
                   help="comma-separated: nag, independent, " + ", ".join(SEARCHES + EXTRA_METHODS))
    p.add_argument("--top", type=float, default=1.0,
                   help="the highest budget as a multiple of the device's dearest child (default 1)")
    p.add_argument("--no-ablations", action="store_true", help="skip PNAG's Tables 2, 3 and 5")
    p.add_argument("--name", default="frontier", help="results file name (without suffix)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results/)")
    p.add_argument("--rejudge", type=Path, metavar="JSON",
                   help="only add the at-profile-speed feasibility to a saved result and rewrite its files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.rejudge:
        if not args.rejudge.is_file():
            print(f"error: {args.rejudge} does not exist", file=sys.stderr)
            return 2
        return rejudge(args.rejudge)
    settings = QUICK if args.quick else Settings()
    overrides = {"budgets": args.budgets, "random_evaluations": args.random_evaluations,
                 "evolution_evaluations": args.evolution_evaluations, "search_seeds": args.search_seeds}
    settings = Settings(**{**settings.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"nag", "independent", *SEARCHES, *EXTRA_METHODS}
    try:
        if unknown or "nag" not in methods:
            raise NagError(f"--methods must include nag and only name known methods; unknown: {sorted(unknown)}")
        if not math.isfinite(args.top) or args.top <= 0:
            raise NagError(f"--top must be a positive number, got {args.top}")
        bundle = load_bundle(args.bundle)
        if args.device not in bundle.devices:
            raise NagError(f"unknown device {args.device!r}; the bundle has {sorted(bundle.devices)}")
        cfg = bundle.trained.meta.get("config", {})
        splits = load_splits(DataSource(), int(cfg.get("val_size", 5000)), int(cfg.get("seed", 0)),
                             bundle.space.input.size, bundle.space.input.channels)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    started = time.perf_counter()
    val = splits.val.subset(torch.arange(min(settings.search_val_images, len(splits.val))))
    test = splits.test if settings.test_images is None else splits.test.subset(
        torch.arange(min(settings.test_images, len(splits.test))))
    ctx = Context(bundle, args.device, settings, val, test)
    models = ctx.models
    unit = models.device.unit
    lo, hi = models.min_cost, models.device.cost_range[1]
    budgets = [float(b) for b in np.linspace(lo + 0.02 * (hi - lo), args.top * hi, settings.budgets)]
    ablation_budgets = budgets[1::2][: settings.ablation_budgets] if settings.budgets >= 2 * settings.ablation_budgets \
        else budgets[: settings.ablation_budgets]
    timings: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], list[Run]]) -> list[Run]:
        t = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t
        log.info("%s: %d picks in %.0f s", name, len(out), timings[name])
        return out

    pipe = bundle.manifest["configs"]["pipeline"]
    k = len(models.generator.budget.budgets)
    equal_steps = max(1, int(pipe["generator_steps"]) // k)
    runs = timed("nag", lambda: run_nag(ctx, budgets, settings.nag_seeds))
    if models.frontier is not None:  # built by NAG's first call (`nag.core.frontier`)
        ctx.one_off_seconds["nag_serving_frontier"] = models.frontier.seconds
    if "independent" in methods:
        runs += timed("independent", lambda: run_independent(ctx, budgets, settings.search_seeds, equal_steps,
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
    if not args.no_ablations:
        ablation_runs += timed("independent-equal-samples", lambda: run_independent(
            ctx, ablation_budgets, 1, int(pipe["generator_steps"]), "independent-equal-samples"))
        ablation_runs += timed("rewards", lambda: run_reward_ablation(ctx, ablation_budgets))
        ablation_runs += timed("K", lambda: run_k_ablation(ctx, ablation_budgets, settings.k_values))
    t = time.perf_counter()
    correct, measured, speed = judge(ctx, runs + ablation_runs + reference_runs)
    timings["judging"] = time.perf_counter() - t
    judged = Judged(correct, measured)
    main_data = comparison(ctx, runs, judged, budgets)
    result: dict[str, Any] = {"bundle_id": bundle.bundle_id, "device": args.device, "unit": unit,
                              "settings": settings.__dict__, "machine": machine(), "comparison": main_data,
                              "test_images": len(test), "search_val_images": len(val),
                              "measured_over_profiled_anchors": speed}
    result["monotonicity"] = monotonicity(main_data, runs)
    if reference_runs:
        result["nag_vs_biggest"] = against_reference(judged, runs, reference_runs)
    if "evolution" in methods:
        result["goal_vs_evolution"] = goal_check(main_data)
    profile_speed = at_profile_speed(result)
    if profile_speed is not None:
        result["at_profile_speed"] = profile_speed
    md = _markdown_header(bundle, args.device, settings, len(test), len(val), budgets)
    md += "## NAG against per-budget searches\n\nTest accuracy % (measured latency); ✗ = infeasible.\n\n"
    md += accuracy_table(main_data, unit) + "\n" + summary_table(main_data) + "\n"
    if speed:
        md += ("Machine speed now against the device profile (measured / profiled latency of the profile's "
               f"architectures measured alongside): median {float(np.median(list(speed.values()))):.3f}, range "
               f"{min(speed.values()):.2f}-{max(speed.values()):.2f}. Every method picks under the same latency "
               f"predictor, fitted on the profile's measurements, for the budget less a "
               f"{latency_margin(models):.0%} margin.\n\n")
    md += "Paired on the same test images, 95% bootstrap interval (seeds averaged per image):\n\n"
    md += paired_table(main_data) + "\n"
    md += monotonicity_markdown(result["monotonicity"])
    if "nag_vs_biggest" in result:
        md += against_reference_markdown(result["nag_vs_biggest"], unit)
    if "goal_vs_evolution" in result:
        g = result["goal_vs_evolution"]
        md += (f"**Goal** (feasible everywhere and ≥ evolution − {GOAL_MARGIN} points at every budget, evolution with "
               f"{settings.evolution_evaluations} supernet evaluations): {'met' if g['met_everywhere'] else 'missed'}; "
               f"worst gap {g['worst_gap']:+.2f} points; infeasible budgets: {g['infeasible_budgets'] or 'none'}.\n\n")
    if profile_speed is not None:
        md += at_profile_speed_markdown(profile_speed) + "\n"
    if ablation_runs:
        nag_at = [r for r in runs if r.method == "nag" and r.seed == 0 and r.budget in ablation_budgets]
        indep_at = [r for r in runs if r.method == "independent" and r.seed == 0 and r.budget in ablation_budgets]
        rewards = [r for r in ablation_runs if r.method.startswith("reward:")]
        t2 = comparison(ctx, rewards + [Run("reward:pareto (ours)", 0, r.budget, r.arch, r.predicted_cost,
                                            r.seconds) for r in nag_at], judged, ablation_budgets,
                        reference="reward:pareto (ours)")
        t3 = comparison(ctx, [Run("frontier (NAG)", 0, r.budget, r.arch, r.predicted_cost, r.seconds) for r in nag_at]
                        + [Run(f"independent ({equal_steps} steps each)", 0, r.budget, r.arch, r.predicted_cost,
                               r.seconds) for r in indep_at]
                        + [r for r in ablation_runs if r.method == "independent-equal-samples"],
                        judged, ablation_budgets, reference="frontier (NAG)")
        t5 = comparison(ctx, [r for r in ablation_runs if r.method.startswith("K=")], judged, ablation_budgets,
                        reference=f"K={k}")
        result["table2_rewards"], result["table3_search"], result["table5_k"] = t2, t3, t5
        md += "## PNAG Table 2: rewards\n\n" + accuracy_table(t2, unit) + "\n"
        md += paired_table(t2, "reward:pareto (ours)")
        md += "\n## PNAG Table 3: frontier against independent search\n\n" + accuracy_table(t3, unit) + "\n"
        md += paired_table(t3, "frontier (NAG)")
        md += "\n## PNAG Table 5: number of budgets K\n\n" + accuracy_table(t5, unit) + "\n"
        md += summary_table(t5) + "\n" + paired_table(t5, f"K={k}")
    table4 = {m: main_data["summary"][m]["seconds_per_budget_median"] for m in main_data["methods"]}
    result["table4_seconds_per_budget"] = table4
    result["one_off_seconds"] = {**ctx.one_off_seconds, "nag_bundle_models": bundle.manifest["metrics"]
                                 .get("build_seconds", {}).get("models")}
    md += "\n## PNAG Table 4: time to produce one architecture\n\n" + markdown_table(
        ["method", "seconds per budget (median)", "ratio to NAG"],
        [[m, f"{v:.3g}", f"{v / table4['nag']:.0f}×"] for m, v in table4.items()])
    md += ("\nOne-off costs (seconds): " + ", ".join(f"{k_}: {v:.0f}" for k_, v in result["one_off_seconds"].items()
                                                   if v is not None) + ".\n")
    timings["total"] = time.perf_counter() - started
    result["stage_seconds"] = timings
    md += "\nStage wall times (s): " + ", ".join(f"{k_} {v:.0f}" for k_, v in timings.items()) + ".\n"
    md += f"\n![frontiers]({args.name}_{args.device}.png)\n"
    write_results(f"{args.name}_{args.device}", result, md, args.out)
    plot(main_data, unit, args.out / f"{args.name}_{args.device}.png",
         f"NAG and per-budget searches, bundle {bundle.bundle_id} ({args.device})")
    print(md)
    return 0


def _markdown_header(bundle: Bundle, device: str, s: Settings, test_images: int, val_images: int,
                     budgets: list[float]) -> str:
    return (f"# Frontier benchmark: bundle `{bundle.bundle_id}`, device `{device}`\n\n"
            f"{len(budgets)} budgets from {budgets[0]:.4g} to {budgets[-1]:.4g}. Every pick judged on {test_images} "
            "test images "
            f"(supernet, BN re-calibrated on {SERVING_CALIBRATION_IMAGES} images) and by latency measured in ONNX "
            f"Runtime. Searches score on {val_images} validation images. NAG: {s.nag_seeds} seeds, "
            f"{s.candidates} candidates. Random search: {s.random_evaluations} supernet evaluations per budget; "
            f"evolution (OFA: population {s.evolution_population}, parents 0.25, mutation 0.5, p 0.1): "
            f"{s.evolution_evaluations} supernet evaluations; evolution with an MLP accuracy predictor: "
            f"{s.predictor_generations} generations; BigNAS coarse-to-fine: {s.coarse} skeletons + {s.fine} "
            f"mutations; searches: {s.search_seeds} seed(s), predictor evolution {s.predictor_seeds}.\n\n")


if __name__ == "__main__":
    sys.exit(main())
