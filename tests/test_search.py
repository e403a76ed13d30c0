"""Per-budget search baselines, their fitness accounting, the reward ablations and the frontier statistics."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.frontier_stats import hypervolume, paired_bootstrap, regrets, verdict
from nag.bundle import load_bundle
from nag.config import EvaluatorConfig, GeneratorConfig
from nag.errors import NagError
from nag.pnag.budgets import BudgetEmbedding
from nag.pnag.dominance import dominance_tensor
from nag.pnag.encoding import TokenEncoder
from nag.pnag.generator import Generator, train_generator
from nag.pnag.rewards import PredictedObjectives, mnasnet_reward, tunas_reward
from nag.policy.inference import pick_architecture
from nag.search.baselines import (
    EvolutionConfig,
    FeasibleSampler,
    coarse_to_fine_search,
    evolutionary_search,
    random_search,
    skeletons,
)
from nag.search.fitness import EvaluationCache, Fitness, SupernetFitness
from nag.search.mlp_predictor import MLPPredictorConfig, fit_mlp_predictor
from nag.space import SearchSpace, count_macs, sample_uniform
from nag.space.arch import biggest, smallest, to_tokens, validate


class MacsFitness(Fitness):
    """Maximise MACs: under a MACs budget the optimum sits on the budget, so progress is measurable."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space

    def _score(self, archs: list) -> list[float]:
        return [count_macs(a, self.space) / 1e6 for a in archs]


def _macs_cost(space: SearchSpace):
    def cost(archs: Sequence) -> np.ndarray:
        return np.array([count_macs(a, space) / 1e6 for a in archs])

    return cost


def _mid_budget(space: SearchSpace) -> float:
    cost = _macs_cost(space)
    lo, hi = float(cost([smallest(space)])[0]), float(cost([biggest(space)])[0])
    return lo + 0.3 * (hi - lo)


def test_random_search_is_bounded_feasible_and_seeded(space: SearchSpace) -> None:
    cost, budget = _macs_cost(space), _mid_budget(space)
    result = random_search(space, cost, budget, MacsFitness(space), 40, random.Random(3))
    assert result.evaluations == 40 and not result.fallback
    assert result.predicted_cost <= budget and result.fitness == pytest.approx(result.predicted_cost)
    again = random_search(space, cost, budget, MacsFitness(space), 40, random.Random(3))
    assert again.arch == result.arch


def test_evolution_respects_bounds_and_beats_its_first_population(space: SearchSpace) -> None:
    cost, budget = _macs_cost(space), _mid_budget(space)
    cfg = EvolutionConfig(population=20)
    first = random_search(space, cost, budget, MacsFitness(space), cfg.population, random.Random(5))
    fitness = MacsFitness(space)
    result = evolutionary_search(space, cost, budget, fitness, 300, random.Random(5), cfg)
    assert fitness.evaluations <= 300 and result.evaluations == fitness.evaluations
    assert result.predicted_cost <= budget
    assert result.fitness > first.fitness  # mutation and crossover climb towards the budget
    assert result.fitness >= 0.9 * budget
    assert evolutionary_search(space, cost, budget, MacsFitness(space), 300, random.Random(5), cfg).arch == result.arch


def test_searches_fall_back_to_the_smallest_child_below_the_cheapest(space: SearchSpace) -> None:
    cost = _macs_cost(space)
    impossible = 0.5 * float(cost([smallest(space)])[0])
    for result in (random_search(space, cost, impossible, MacsFitness(space), 10, random.Random(0)),
                   evolutionary_search(space, cost, impossible, MacsFitness(space), 50, random.Random(0)),
                   coarse_to_fine_search(space, cost, impossible, MacsFitness(space), random.Random(0))):
        assert result.fallback and result.arch == smallest(space)


def test_feasible_sampler_tilts_towards_small_budgets(space: SearchSpace) -> None:
    cost = _macs_cost(space)
    lo, hi = float(cost([smallest(space)])[0]), float(cost([biggest(space)])[0])
    budget = lo + 0.03 * (hi - lo)  # uniform sampling almost never lands here
    sampler = FeasibleSampler(space, cost, budget, random.Random(0), batch=64, max_batches=20)
    drawn = sampler.draw(5)
    assert len(drawn) == 5 and all(c <= budget for _, c in drawn)
    assert sampler.sampled <= 64 * 20


def test_coarse_to_fine_evaluates_skeletons_then_mutations(space: SearchSpace) -> None:
    grid = skeletons(space)
    for arch in grid:
        validate(arch, space)
    assert len(grid) == len({a.arch_id for a in grid}) and smallest(space) in grid and biggest(space) in grid
    cost, budget = _macs_cost(space), _mid_budget(space)
    fitness = MacsFitness(space)
    result = coarse_to_fine_search(space, cost, budget, fitness, random.Random(0), coarse=8, fine=10)
    assert result.predicted_cost <= budget and fitness.evaluations <= 8 + 10
    best_skeleton = max(c for c in cost(grid) if c <= budget)
    assert result.fitness >= best_skeleton


def test_supernet_fitness_shares_evaluations_and_charges_their_cost(tiny_bundle: Path, splits) -> None:
    bundle = load_bundle(tiny_bundle)
    val = splits.val.subset(torch.arange(64))
    calib = bundle.trained.calibration_float[:32]
    cache = EvaluationCache()
    archs = [sample_uniform(bundle.space, random.Random(i)) for i in range(3)]
    first = SupernetFitness(bundle.trained.supernet, calib, val, cache)
    scores = first(archs + archs[:1])
    assert first.evaluations == 3 and all(0 <= s <= 100 for s in scores) and scores[0] == scores[3]
    second = SupernetFitness(bundle.trained.supernet, calib, val, cache)
    assert second(archs) == scores[:3]  # from the cache, bit for bit
    assert second.evaluations == 3 and second.seconds == pytest.approx(first.seconds)
    assert second.wall < first.wall


def test_mlp_predictor_ranks_a_learnable_accuracy(space: SearchSpace) -> None:
    rng = random.Random(0)
    archs = [sample_uniform(space, rng) for _ in range(300)]
    enc = TokenEncoder(space).encode_archs(archs)
    weights = torch.randn(enc.shape[1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    acc = (80 + enc.double() @ weights * 0.3).numpy()
    predictor = fit_mlp_predictor(enc, acc, MLPPredictorConfig(hidden=64, epochs=60, seed=0))
    assert predictor.metrics["heldout_kendall_tau"] > 0.6
    assert predictor.predict(enc[:4]).shape == (4,)


# ---------------------------------------------------------------------------------------------
# NAG variants used by the ablations
# ---------------------------------------------------------------------------------------------


def test_a_single_budget_embedding_is_constant() -> None:
    emb = BudgetEmbedding([2.0], dim=8)
    out = emb(torch.tensor([0.5, 2.0, 9.0]))
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])
    with pytest.raises(ValueError):
        BudgetEmbedding([], dim=8)


def test_cost_only_rule_ignores_accuracy() -> None:
    from nag.pnag.dominance import dominance_cost_only

    cost1, cost2 = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])
    acc1, acc2 = torch.tensor([50.0, 90.0]), torch.tensor([90.0, 50.0])
    budget = torch.tensor([5.0, 5.0])
    assert dominance_cost_only(cost1, acc1, cost2, acc2, budget).tolist() == [1.0, -1.0]
    assert dominance_tensor(cost1, acc1, cost2, acc2, budget).tolist() == [-1.0, 1.0]  # Eq. 6: accuracy decides
    with pytest.raises(NagError, match="rule"):
        EvaluatorConfig(rule="fastest")


def test_baseline_rewards_penalise_overshoot_and_train_a_policy(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    models = bundle.devices["flops"]
    encoder = TokenEncoder(bundle.space)
    objectives = PredictedObjectives(encoder, bundle.accuracy, models.device)
    lo, hi = models.device.cost_range
    budgets = [lo + 0.3 * (hi - lo), lo + 0.7 * (hi - lo)]
    rng = random.Random(0)
    archs = [sample_uniform(bundle.space, rng) for _ in range(16)]
    tokens = torch.tensor([to_tokens(a, bundle.space) for a in archs])
    acc, cost = objectives(tokens)
    assert torch.all((acc >= 0) & (acc <= 1.5))
    assert torch.allclose(cost, torch.as_tensor(models.device.predict(archs), dtype=torch.float64))
    for make in (mnasnet_reward, tunas_reward):
        reward = make(objectives)
        at = reward(tokens, cost)  # exactly on budget
        over = reward(tokens, cost / 2)  # twice over budget
        assert torch.all(over < at)
    torch.manual_seed(0)
    generator = Generator(bundle.space, budgets, hidden=32, budget_dim=16)
    history = train_generator(generator, tunas_reward(objectives), GeneratorConfig(steps=8, log_every=4,
                              samples_per_budget=8, seed=0), progress=False)
    assert len(history) >= 2
    score = lambda t, c, b: tunas_reward(objectives)(t, torch.full((len(t),), b, dtype=torch.float64))  # noqa: E731
    pick = pick_architecture(generator, models.device, score, budgets[0], 16, torch.Generator().manual_seed(0))
    assert pick.cost <= budgets[0] and pick.feasible >= 1


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def test_paired_bootstrap_calls_ties_and_wins() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(5000) < 0.9).astype(float)
    diff, low, high = paired_bootstrap(a, a.copy())
    assert diff == 0 and low == 0 and high == 0 and verdict(low, high) == "tie"
    b = a.copy()
    b[rng.choice(np.flatnonzero(a == 1), 300, replace=False)] = 0  # b loses 6 points on the same images
    diff, low, high = paired_bootstrap(a, b, seed=1)
    assert diff == pytest.approx(6.0) and low < 6.0 < high and verdict(low, high) == "win"
    assert verdict(-high, -low) == "loss"
    with pytest.raises(ValueError):
        paired_bootstrap(a, b[:10])


def test_hypervolume_and_regret_by_hand() -> None:
    # Points (cost, acc) with reference (10, 50): [1,4)×(80−50) + [4,10)×(90−50) = 90 + 240.
    assert hypervolume([(1, 80), (4, 90), (5, 85)], 10, 50) == pytest.approx(330)
    assert hypervolume([(11, 99), (2, 40)], 10, 50) == 0  # too costly, or below the reference
    assert regrets({"a": [90.0, None], "b": [88.5, 70.0]}) == {"a": [0.0, None], "b": [1.5, 0.0]}


def test_frontier_benchmark_writes_its_tables(tiny_bundle: Path, tmp_path: Path) -> None:
    from benchmarks import frontier

    code = frontier.main(["--bundle", str(tiny_bundle), "--device", "flops", "--quick", "--budgets", "3",
                          "--out", str(tmp_path), "--name", "t"])
    assert code == 0
    data = json.loads((tmp_path / "t_flops.json").read_text())
    assert (tmp_path / "t_flops.md").exists() and (tmp_path / "t_flops.png").stat().st_size > 0
    comparison = data["comparison"]
    assert set(comparison["methods"]) == {"nag", "independent", "random", "evolution", "evolution-predictor", "bignas"}
    assert len(comparison["per_budget"]) == 3 and data["bundle_id"] == load_bundle(tiny_bundle).bundle_id
    for row in comparison["per_budget"]:
        for m in comparison["methods"]:
            assert 0 <= row[m]["test_acc"] <= 100
    for table in ("table2_rewards", "table3_search", "table5_k"):
        assert data[table]["per_budget"]
    assert set(data["table5_k"]["methods"]) == {"K=2", "K=5"}
    assert data["table4_seconds_per_budget"]["nag"] > 0 and "met_everywhere" in data["goal_vs_evolution"]
    assert frontier.main(["--bundle", str(tmp_path / "missing"), "--quick"]) == 2


def test_feasibility_at_the_profile_speed_divides_out_a_slow_machine(tmp_path: Path) -> None:
    from benchmarks import frontier

    result = {"measured_over_profiled_anchors": {"a": 1.1, "b": 1.2, "c": 1.3},
              "comparison": {"methods": ["nag", "evolution"], "per_budget": [
                  {"budget": 1.0, "nag": {"measured": [1.25, 1.1]}, "evolution": {"measured": [1.4]}},
                  {"budget": 2.0, "nag": {"measured": [2.0]}, "evolution": {"measured": [None]}}]},
              "goal_vs_evolution": {"per_budget": [{"gap": -0.1}, {"gap": 0.4}]}}
    data = frontier.at_profile_speed(result)
    assert data is not None and data["speed"] == pytest.approx(1.2)
    assert data["methods"]["nag"] == {"feasible_share": 1.0, "infeasible_budgets": []}  # 1.25 / 1.2 <= 1.05
    assert data["methods"]["evolution"]["infeasible_budgets"] == [1.0, 2.0]  # 1.4 / 1.2 > 1.05; unmeasured
    assert data["goal_met_everywhere"] is True
    result["goal_vs_evolution"]["per_budget"][0]["gap"] = -0.5
    assert frontier.at_profile_speed(result)["goal_met_everywhere"] is False
    assert frontier.at_profile_speed({**result, "measured_over_profiled_anchors": {}}) is None

    saved = tmp_path / "frontier_goal_cpu.json"
    saved.write_text(json.dumps(result))
    (tmp_path / "frontier_goal_cpu.md").write_text("# header\n")
    assert frontier.main(["--rejudge", str(saved)]) == 0
    assert frontier.main(["--rejudge", str(saved)]) == 0  # idempotent: the section is replaced, not repeated
    assert json.loads(saved.read_text())["at_profile_speed"]["speed"] == pytest.approx(1.2)
    md = (tmp_path / "frontier_goal_cpu.md").read_text()
    assert md.startswith("# header") and md.count("## Feasibility at the profile's speed") == 1
    assert frontier.main(["--rejudge", str(tmp_path / "missing.json")]) == 2
    for bad in ("{not json", json.dumps({"measured_over_profiled_anchors": {"a": 1.0}})):
        (tmp_path / "bad.json").write_text(bad)
        assert frontier.main(["--rejudge", str(tmp_path / "bad.json")]) == 2
