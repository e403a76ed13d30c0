"""The NAG core: Eq. 6 dominance, budget interpolation, encodings, evaluator, generator, generate()."""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nag.artifacts import load_artifact, save_artifact
from nag.bundle import BundleError, load_bundle, load_evaluator, save_evaluator
from nag.config import GENERATION, EvaluatorConfig, GeneratorConfig, pipeline
from nag.cost.device import DeviceError, packaged_profile
from nag.pnag.budgets import BudgetEmbedding, even_budgets
from nag.pnag.dominance import dominance, dominance_tensor
from nag.pnag.encoding import TokenEncoder
from nag.pnag.evaluator import Evaluator, train_evaluator
from nag.pnag.generator import Generator, TokenCost, train_generator
from nag.policy.inference import BudgetOutOfRangeError, InvalidBudgetError, generate, target_budget
from nag.space import SearchSpace, count_macs, from_tokens, sample_stratified, sample_uniform

values = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


@given(values, values, values, values, values)
def test_dominance_is_antisymmetric_for_distinct_architectures(c1, a1, c2, a2, budget) -> None:
    if c1 == c2 or a1 == a2:
        return  # distinct architectures differ in cost and accuracy here
    assert dominance(c1, a1, c2, a2, budget) == -dominance(c2, a2, c1, a1, budget)


@given(values, values, values, values, values)
def test_dominance_follows_eq6(c1, a1, c2, a2, budget) -> None:
    d = dominance(c1, a1, c2, a2, budget)
    if c1 <= budget and c2 <= budget:
        assert d == (1 if a1 >= a2 else -1)  # both feasible: the more accurate wins
    else:
        assert d == (1 if c1 <= c2 else -1)  # otherwise the cheaper wins
    t = dominance_tensor(*(torch.tensor([v], dtype=torch.float64) for v in (c1, a1, c2, a2, budget)))
    assert int(t.item()) == d


def test_budget_embedding_interpolates_linearly() -> None:
    emb = BudgetEmbedding(even_budgets(1.0, 5.0, 5), dim=8)
    table = emb.table.weight.detach()
    got = emb(torch.tensor([1.0, 2.0, 2.25, 5.0, 0.1, 9.0])).detach()
    assert torch.allclose(got[0], table[0]) and torch.allclose(got[1], table[1]) and torch.allclose(got[3], table[4])
    xi = (3.0 - 2.25) / (3.0 - 2.0)  # weight of B1 = 2
    assert torch.allclose(got[2], xi * table[1] + (1 - xi) * table[2])
    assert torch.allclose(got[4], table[0]) and torch.allclose(got[5], table[4])  # nearest end outside


def test_encoding_marks_only_active_layers(space: SearchSpace) -> None:
    enc = TokenEncoder(space)
    archs = [sample_uniform(space, random.Random(i)) for i in range(20)]
    x = enc.encode_archs(archs)
    for arch, row in zip(archs, x, strict=True):
        assert int(row.sum()) == 2 + sum(2 + 2 * s.depth for s in arch.stages)
    assert torch.equal(enc.encode_archs(archs[:1]), x[:1])


def _synthetic(space: SearchSpace, n: int = 300):
    archs = sample_stratified(space, n, random.Random(0))
    enc = TokenEncoder(space).encode_archs(archs)
    cost = torch.tensor([count_macs(a, space) / 1e6 for a in archs], dtype=torch.float64)
    acc = 85 + 2 * torch.log(cost) + torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return archs, enc, cost, acc


@pytest.mark.parametrize("cost_features", [True, False])
def test_evaluator_learns_dominance(space: SearchSpace, cost_features: bool) -> None:
    _, enc, cost, acc = _synthetic(space)
    budgets = even_budgets(float(cost.min()), float(cost.max()), 5)
    cfg = EvaluatorConfig(steps=600, eval_every=100, seed=0, cost_features=cost_features)
    evaluator, report = train_evaluator(enc, cost, acc, budgets, cfg, progress=False)
    assert report["heldout"]["overall"] > 0.8
    assert len(report["heldout"]["per_budget"]) == 5
    assert evaluator.cost_features is cost_features


def test_cost_features_rank_by_feasibility_at_the_budget(space: SearchSpace) -> None:
    """Eq. 6 is a step at c = B: with the cost features the evaluator places it there, so at a budget
    between two architectures' costs the cheaper one wins, and just above both the more accurate."""
    _, enc, cost, acc = _synthetic(space)
    budgets = even_budgets(float(cost.min()), float(cost.max()), 5)
    evaluator, _ = train_evaluator(enc, cost, acc, budgets, EvaluatorConfig(steps=600, seed=0), progress=False)
    order = torch.argsort(cost)
    wins = total = 0
    with torch.no_grad():
        for lo, hi in zip(order[100:200:10].tolist(), order[200:300:10].tolist(), strict=True):
            pair = torch.tensor([lo, hi])
            if acc[hi] <= acc[lo]:
                continue
            between = torch.full((2,), float(cost[lo] + cost[hi]) / 2, dtype=torch.float64)
            above = torch.full((2,), float(cost[hi]) * 1.01, dtype=torch.float64)
            s_between = evaluator(enc[pair], between, cost[pair])
            s_above = evaluator(enc[pair], above, cost[pair])
            wins += int(s_between[0] > s_between[1]) + int(s_above[1] > s_above[0])
            total += 2
    assert total >= 10 and wins / total >= 0.8
    with pytest.raises(ValueError, match="predicted cost"):
        evaluator(enc[:2], torch.full((2,), budgets[1], dtype=torch.float64))
    with pytest.raises(ValueError, match="TokenCost"):
        train_generator(Generator(space, budgets), evaluator, GeneratorConfig(steps=1), progress=False)


def test_saved_evaluator_keeps_its_inputs(space: SearchSpace, tmp_path: Path) -> None:
    budgets = [1.0, 2.0]
    dim = TokenEncoder(space).dim
    with_cost = Evaluator(dim, budgets, hidden=16, budget_dim=8)
    save_evaluator(tmp_path / "e.pt", with_cost, dim, 16, 8, {})
    loaded = load_evaluator(tmp_path / "e.pt")
    enc = torch.zeros(3, dim)
    budget, cost = torch.full((3,), 1.5, dtype=torch.float64), torch.tensor([1.0, 1.5, 2.0], dtype=torch.float64)
    assert loaded.cost_features and torch.equal(loaded(enc, budget, cost), with_cost.eval()(enc, budget, cost))
    # An evaluator saved before the cost features existed loads as one without them.
    legacy = Evaluator(dim, budgets, hidden=16, budget_dim=8, cost_features=False)
    save_evaluator(tmp_path / "old.pt", legacy, dim, 16, 8, {})
    raw = load_artifact(tmp_path / "old.pt")
    del raw["cost_features"]
    save_artifact(tmp_path / "old.pt", raw)
    old = load_evaluator(tmp_path / "old.pt")
    assert not old.cost_features and torch.equal(old(enc, budget), legacy.eval()(enc, budget))


def test_generator_sampling_is_seeded_and_training_raises_reward(space: SearchSpace, macs_cost: TokenCost
                                                                   ) -> None:
    _, enc, cost, acc = _synthetic(space)
    budgets = even_budgets(float(cost.min()), float(cost.max()), 4)
    evaluator, _ = train_evaluator(enc, cost, acc, budgets, EvaluatorConfig(steps=300, seed=0), progress=False)
    torch.manual_seed(0)
    gen = Generator(space, budgets)
    b = torch.full((6,), budgets[1])
    first = gen.sample(b, torch.Generator().manual_seed(5)).tokens
    assert torch.equal(first, gen.sample(b, torch.Generator().manual_seed(5)).tokens)
    for row in first.tolist():
        from_tokens(row, space)  # every sample decodes to a valid architecture
    history = train_generator(gen, evaluator, GeneratorConfig(steps=60, log_every=10, samples_per_budget=16),
                              progress=False, cost=macs_cost)
    start, end = history[0]["mean_reward"], history[-1]["mean_reward"]
    assert sum(end) > sum(start)


def test_generate_is_feasible_seeded_and_validated(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    models = bundle.devices["flops"]
    lo, hi = models.device.cost_range
    budget = lo + 0.5 * (hi - lo)
    g = generate(bundle, budget, "flops", candidates=32, seed=7)
    assert g.target == budget  # analytic costs get no latency margin
    assert g.predicted_cost <= budget and g.macs / 1e6 == pytest.approx(g.predicted_cost)
    kept = generate(bundle, budget, "flops", candidates=32, seed=7, margin=0.25)
    assert kept.target == pytest.approx(0.75 * budget) and kept.predicted_cost <= 0.75 * budget
    # The margin never pushes the target below the cheapest child, which stays feasible.
    cheapest = models.min_cost
    assert generate(bundle, cheapest * 1.01, "flops", candidates=8, seed=1, margin=0.5).target == cheapest
    with pytest.raises(InvalidBudgetError):
        generate(bundle, budget, "flops", margin=1.0)
    # A device whose costs are measured latencies keeps the configured margin by default.
    measured = replace(models, device=replace(models.device, profile=packaged_profile("cpu")))
    assert target_budget(budget, measured) == pytest.approx(budget * (1 - GENERATION.latency_margin))
    assert generate(bundle, budget, "flops", candidates=32, seed=7).arch == g.arch
    assert 0 <= g.predicted_accuracy <= 100 and g.timings["sample"] > 0
    for bad in (math.nan, math.inf, -math.inf, 0.0, -1.0):
        with pytest.raises(InvalidBudgetError):
            generate(bundle, bad, "flops")
    with pytest.raises(InvalidBudgetError, match="candidates"):
        generate(bundle, budget, "flops", candidates=0)
    with pytest.raises(BudgetOutOfRangeError, match=f"minimum is {models.min_cost:.4g}"):
        generate(bundle, models.min_cost * 0.5, "flops")
    with pytest.raises(DeviceError, match=r"unknown device 'tpu'.*\['flops'\]"):
        generate(bundle, budget, "tpu")
    # Just above the cheapest child: still feasible (resampling, then the cheapest child itself).
    tight = generate(bundle, models.min_cost * 1.0001, "flops", candidates=8, seed=1)
    assert tight.predicted_cost <= models.min_cost * 1.0001


def test_bundle_manifest_is_verified(tiny_bundle: Path, tmp_path: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["devices"] == ["flops"]
    assert "triplets.jsonl" in manifest["files"] and "devices/flops/generator.pt" in manifest["files"]
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    with (copy / "triplets.jsonl").open("a") as fh:
        fh.write("\n")
    with pytest.raises(BundleError, match=r"triplets\.jsonl does not match its hash"):
        load_bundle(copy)
    (copy / "triplets.jsonl").unlink()
    with pytest.raises(BundleError, match=r"triplets\.jsonl is missing"):
        load_bundle(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"manifest\.json is missing"):
        load_bundle(copy)


def test_a_bundle_maps_its_saved_pipeline_to_the_configs_it_was_trained_with(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    assert bundle.pipeline == pipeline("tiny")
    saved = load_artifact(tiny_bundle / "devices" / "flops" / "generator.pt", "generator")["config"]
    assert json.loads(saved) == asdict(bundle.pipeline.generator_config())
    broken = replace(bundle, manifest={**bundle.manifest, "configs": {"pipeline": {"triplet": 3}}})
    with pytest.raises(BundleError, match="unknown pipeline config fields"):
        _ = broken.pipeline


def test_a_device_dropped_into_the_bundle_is_trained_and_served(tiny_bundle: Path, tmp_path: Path) -> None:
    from nag.cost.device import DeviceProfile
    from nag.pipeline.train_generator import build

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    other = copy / "devices" / "macs2"
    other.mkdir()
    (other / "device.json").write_text(DeviceProfile(name="macs2", kind="flops").to_json())
    manifest = build(copy, pipeline("tiny"), progress=False)
    assert manifest["devices"] == ["flops", "macs2"]
    bundle = load_bundle(copy)
    assert generate(bundle, 8.0, "macs2", seed=0).predicted_cost <= 8.0
