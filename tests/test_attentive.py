"""AttentiveNAS (proposal sampler, BestUp/WorstUp middle children) and FP-NAS (adaptive K, coarse-to-fine)."""

from __future__ import annotations

import random
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nag.bundle.bundle import load_generator, save_generator
from nag.config import EvaluatorConfig, GeneratorConfig, profile
from nag.errors import NagError
from nag.pipeline.distributed import Distributed
from nag.pipeline.supernet_trainer import SupernetTrainer
from nag.pnag.budgets import even_budgets
from nag.pnag.encoding import TokenEncoder
from nag.pnag.evaluator import train_evaluator
from nag.pnag.generator import Generator, TokenCost, adaptive_sample_count, train_generator
from nag.recipe.attentive import AttentiveSampler
from nag.recipe.proposal import MacsProposal
from nag.space import SearchSpace, count_macs, sample_stratified
from nag.supernet import Supernet


@pytest.fixture(scope="module")
def proposal(space: SearchSpace) -> MacsProposal:
    return MacsProposal(space, table_size=3000, seed=0)


def test_proposal_hits_its_macs_window_in_a_few_trials(proposal: MacsProposal, space: SearchSpace) -> None:
    rng = random.Random(0)
    draws = [proposal.draw(rng.uniform(proposal.lo, proposal.hi), rng) for _ in range(200)]
    hits = [d for d in draws if d.hit]
    assert len(hits) >= 190
    for d in draws[:50]:
        assert d.macs == count_macs(d.arch, space)
    mean_trials = statistics.mean(d.trials for d in draws)
    assert mean_trials <= 15, mean_trials
    # Targets at either end of the range, where uniform sampling almost never lands, are reached too.
    for target in (proposal.lo + 0.02 * (proposal.hi - proposal.lo), proposal.hi - 0.02 * (proposal.hi - proposal.lo)):
        d = proposal.draw(target, rng)
        assert d.hit and abs(d.macs - target) <= proposal.width / 2


def test_proposal_is_bounded_and_seeded(proposal: MacsProposal) -> None:
    target = (proposal.lo + proposal.hi) / 2
    miss = proposal.draw(target, random.Random(0), window=1e-9)
    assert not miss.hit and miss.trials == proposal.max_trials
    assert proposal.draw(target, random.Random(4)).arch == proposal.draw(target, random.Random(4)).arch


def test_attentive_best_and_worst_pick_by_minibatch_loss(space: SearchSpace, perturbed_supernet: Supernet,
                                                        splits) -> None:
    images, labels = splits.train.as_float(slice(0, 32)), splits.train.labels[:32]
    best = AttentiveSampler(perturbed_supernet, space, "best", candidates=3, seed=0)
    worst = AttentiveSampler(perturbed_supernet, space, "worst", candidates=3, seed=0)
    perturbed_supernet.eval()  # batch statistics would move between the two calls otherwise
    b = best.choose(images, labels, random.Random(7), 1)[0]
    w = worst.choose(images, labels, random.Random(7), 1)[0]
    with torch.no_grad():
        loss_b = float(F.cross_entropy(perturbed_supernet(images, b), labels))
        loss_w = float(F.cross_entropy(perturbed_supernet(images, w), labels))
    assert loss_b <= loss_w
    assert best.stats()["attentive_mean_trials"] >= 1
    with pytest.raises(NagError, match="predictor"):
        AttentiveSampler(perturbed_supernet, space, "best", proxy="predictor", predictor_path=None)


def test_attentive_training_steps_are_deterministic(tmp_path: Path) -> None:
    cfg = profile("tiny").with_overrides(middle_sampler="attentive-worst")
    runs = []
    for name in ("a", "b"):
        trainer = SupernetTrainer(cfg, tmp_path / name, Distributed())
        for _ in range(2):
            trainer.train_step()
        runs.append(trainer)
    a, b = (t.supernet.state_dict() for t in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert runs[0].attentive is not None and runs[0].attentive.draws == 2 * 2 * 3
    with pytest.raises(NagError, match="attentive_predictor"):
        profile("tiny").with_overrides(middle_sampler="attentive-best", attentive_proxy="predictor")


# ---------------------------------------------------------------------------------------------
# FP-NAS
# ---------------------------------------------------------------------------------------------


def _evaluator(space: SearchSpace):
    """An evaluator trained on synthetic triplets: accuracy grows with log MACs, plus noise."""
    archs = sample_stratified(space, 200, random.Random(0))
    enc = TokenEncoder(space).encode_archs(archs)
    cost = torch.tensor([count_macs(a, space) / 1e6 for a in archs], dtype=torch.float64)
    acc = 85 + 2 * torch.log(cost) + torch.randn(len(archs), generator=torch.Generator().manual_seed(0),
                                                 dtype=torch.float64)
    budgets = even_budgets(float(cost.min()), float(cost.max()), 3)
    evaluator, _ = train_evaluator(enc, cost, acc, budgets, EvaluatorConfig(steps=200, seed=0), progress=False)
    return evaluator, budgets


def test_adaptive_sample_count_follows_entropy() -> None:
    counts = adaptive_sample_count(torch.tensor([200.0, 40.0, 20.0, 1.0]), 0.5, 4, 64)
    assert counts.tolist() == [64, 20, 10, 4]


def test_adaptive_sampling_draws_fewer_as_entropy_falls(space: SearchSpace, macs_cost: TokenCost) -> None:
    evaluator, budgets = _evaluator(space)
    torch.manual_seed(0)
    generator = Generator(space, budgets, hidden=32, budget_dim=16)
    cfg = GeneratorConfig(steps=80, log_every=10, samples_per_budget=16, lr=1e-2, entropy_weight=0.0,
                          adaptive_lambda=0.6, min_samples=4, max_samples=48, seed=0)
    history = train_generator(generator, evaluator, cfg, progress=False, cost=macs_cost)
    first, last = history[0], history[-1]
    assert sum(last["entropy"]) < sum(first["entropy"])
    assert sum(last["samples"]) < sum(first["samples"])
    assert last["sampled_total"] < 80 * 48 * len(budgets)


def test_coarse_to_fine_switch_keeps_the_distribution(space: SearchSpace, tmp_path: Path, macs_cost: TokenCost
                                                     ) -> None:
    evaluator, budgets = _evaluator(space)
    torch.manual_seed(0)
    generator = Generator(space, budgets, hidden=32, budget_dim=16, factorized=True)
    train_generator(generator, evaluator, GeneratorConfig(steps=6, factorized_steps=6, samples_per_budget=8,
                                                          log_every=3), progress=False, cost=macs_cost)
    b = torch.full((16,), budgets[1])
    generator.coarse = True
    coarse = generator.sample(b, torch.Generator().manual_seed(3))
    generator.coarse = False
    joint = generator.sample(b, torch.Generator().manual_seed(3))
    assert torch.equal(coarse.tokens, joint.tokens) and torch.allclose(coarse.log_prob, joint.log_prob)
    history = train_generator(generator, evaluator, GeneratorConfig(steps=6, factorized_steps=3, samples_per_budget=8,
                                                                    log_every=1), progress=False,
                              cost=macs_cost)
    assert [h["stage"] for h in history] == ["factorized"] * 3 + ["joint"] * 3
    assert any(float(h.weight.detach().abs().sum()) > 0 for h in generator.heads)  # the LSTM joined in
    save_generator(tmp_path / "g.pt", generator, {})
    loaded = load_generator(tmp_path / "g.pt", space)
    assert loaded.factorized
    assert torch.equal(loaded.sample(b, torch.Generator().manual_seed(3)).tokens,
                       generator.eval().sample(b, torch.Generator().manual_seed(3)).tokens)
    with pytest.raises(ValueError, match="factorized"):
        train_generator(Generator(space, budgets), evaluator, GeneratorConfig(steps=1, factorized_steps=1),
                        progress=False)


def test_ablation_benchmark_writes_both_tables(tiny_bundle: Path, tmp_path: Path) -> None:
    import json

    from benchmarks import ablations

    code = ablations.main(["--quick", "--bundle", str(tiny_bundle), "--device", "flops", "--runs", str(tmp_path / "r"),
                           "--out", str(tmp_path), "--name", "a"])
    assert code == 0
    data = json.loads((tmp_path / "a.json").read_text())
    attentive = data["attentive"]["variants"]
    assert set(attentive) == {"uniform", "stratified", "attentive-best", "attentive-worst"}
    assert attentive["uniform"]["attentive_mean_trials"] is None
    assert attentive["attentive-best"]["attentive_mean_trials"] >= 1
    assert data["attentive"]["baseline"] == "uniform"
    assert set(data["attentive"]["paired_minus_baseline"]) == {"stratified", "attentive-best", "attentive-worst"}
    for v in attentive.values():
        assert len(v["per_budget"]) == 3 and 0 <= v["frontier_test_acc_mean"] <= 100
    fpnas = data["fpnas"]["variants"]
    assert len(fpnas) == 4 and all(v["sampled"] > 0 for v in fpnas.values())
    assert (tmp_path / "a.md").read_text().count("|") > 20
