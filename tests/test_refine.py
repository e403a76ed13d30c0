"""On-policy refinement: the generators' picks are measured, appended with provenance, and learned from."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from nag.bundle.bundle import TRIPLETS_FILE, load_bundle
from nag.config import pipeline
from nag.errors import NagError
from nag.export.evaluate import child_accuracy
from nag.pipeline.collect_triplets import triplet_measuring
from nag.pipeline.refine import refine
from nag.pipeline.train_generator import build
from nag.pipeline.train_generator import main as train_generator_main
from nag.pnag.triplets import SAMPLED, Triplet, read_triplets, refine_source
from nag.policy.frontier import FrontierEntry, build_frontier, pareto_front, proposal_pool, propose_ranked
from nag.policy.inference import generate

# The tiny profile's images budget is spent on the validation scale and the proposals alone.
REFINING = dataclasses.replace(pipeline("tiny"), refine_rounds=3, refine_generator_steps=5, refine_min_gain=-100.0,
                               refine_budget=2.0)


@pytest.fixture(scope="module")
def refined(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Triplet]]:
    root = tmp_path_factory.mktemp("refined") / "tiny"
    shutil.copytree(tiny_bundle, root)
    before = read_triplets(root / TRIPLETS_FILE)
    build(root, REFINING, run_dir=root.parent / "run", progress=False)
    return root, before


def test_refinement_measures_the_fronts_proposals_with_their_provenance_within_its_images(refined) -> None:
    root, before = refined
    after = read_triplets(root / TRIPLETS_FILE)
    # The first triplets are kept, on the whole validation split's scale: re-scored, or shifted.
    report = load_bundle(root).metrics["refinement"]  # sealed: the bundle verifies
    scale = report["validation_scale"]
    assert scale["children"] >= 1
    for old, now in zip(before, after, strict=False):
        assert now.arch_id == old.arch_id and now.source == SAMPLED
        if now.val_images < report["confirm_images"]:
            assert now.val_acc == pytest.approx(old.val_acc + scale["shift"]) and now.val_shift == scale["shift"]
        else:
            assert now.val_shift == 0.0
    new = after[len(before):]
    assert new, "refinement measured nothing"
    assert {t.source for t in before} == {SAMPLED}
    assert {t.source for t in new} <= {refine_source("flops", r) for r in (1, 2, 3, 4)}  # 4: the last pass
    assert len({t.arch_id for t in after}) == len(after)  # nothing measured twice
    cfg = REFINING
    assert report["sampled_images"] == len(before) * (cfg.triplet_val_images + cfg.triplet_calib_images)
    assert report["images_cap"] == int(cfg.refine_budget * report["sampled_images"])
    assert 0 < report["images"] <= report["images_cap"]
    assert report["evaluations"] == len(new)
    assert report["confirmed"] >= 1 and report["confirm_images"] > cfg.triplet_val_images
    first = report["rounds"][0]
    assert first["device"] == "flops" and first["measured"] >= 1 and first["proposed_on_front"] >= first["measured"]
    assert 0 <= first["picks_val_acc"] <= 100 and 0 <= first["front_val_acc"] <= 100
    assert first["agreement_on_new"] is None or 0 <= first["agreement_on_new"] <= 1
    last = report["last_pass"]["flops"]
    assert 0 <= last["measured"] <= last["proposed_on_front"] and report["last_pass_rescored"] >= 0
    assert sum(t.source == refine_source("flops", len(report["rounds"]) + 1) for t in new) == last["measured"]


def test_a_rescored_triplet_holds_its_accuracy_on_the_whole_split(refined) -> None:
    """Pooling the first images' score with the rest's is the score on all of them (same BN calibration)."""
    root, _ = refined
    report = load_bundle(root).metrics["refinement"]
    rescored = [t for t in read_triplets(root / TRIPLETS_FILE) if t.val_images == report["confirm_images"]]
    assert rescored
    cfg = REFINING
    whole = triplet_measuring(root, report["confirm_images"], cfg.triplet_calib_images)
    space = load_bundle(root).space
    for t in rescored[:3]:
        direct = child_accuracy(whole.supernet, t.arch(space), whole.calibration, whole.val)
        assert t.val_acc == pytest.approx(direct, abs=1e-9)


def test_after_refinement_the_served_front_holds_what_was_measured(refined) -> None:
    """Every measured triplet competes on the serving front; a proposed entry stays only where the predictor
    puts it above everything measured within its cost."""
    root, _ = refined
    bundle = load_bundle(root)
    models = bundle.devices["flops"]
    triplets = read_triplets(root / TRIPLETS_FILE)
    frontier = build_frontier(models.generator, models.evaluator, models.device, bundle.accuracy, triplets)
    archs = [t.arch(bundle.space) for t in triplets]
    measured = pareto_front([FrontierEntry(a, float(c), t.val_acc, True)
                             for a, c, t in zip(archs, models.device.predict(archs), triplets, strict=True)])
    for e in measured:
        best = frontier.best_within(e.cost)
        assert best is not None and best.expected_accuracy >= e.expected_accuracy


def test_a_refined_bundle_serves_and_its_picks_come_from_the_new_triplets_where_they_win(refined) -> None:
    root, _ = refined
    bundle = load_bundle(root)
    g = generate(bundle, 1e12, "flops", candidates=8, seed=0)  # beyond every child: the best entry known
    best = max(read_triplets(root / TRIPLETS_FILE), key=lambda t: t.val_acc)
    assert g.predicted_accuracy >= best.val_acc - 1e-9


def test_refinement_runs_once_and_again_only_after_a_rebuild(refined) -> None:
    root, _ = refined
    count = len(read_triplets(root / TRIPLETS_FILE))
    cfg = dataclasses.replace(pipeline("tiny"), refine_rounds=3, refine_generator_steps=5)
    manifest = build(root, cfg, run_dir=root.parent / "run", progress=False)  # already refined: nothing to do
    assert len(read_triplets(root / TRIPLETS_FILE)) == count
    assert manifest["bundle_id"] == load_bundle(root).bundle_id


def test_a_resumed_refinement_counts_what_it_measured_before(refined, tiny_bundle: Path, tmp_path: Path) -> None:
    """A run killed after measuring (its triplets written, the manifest not yet) resumes within its images."""
    root, before = refined
    resumed = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, resumed)
    shutil.copy(root / TRIPLETS_FILE, resumed / TRIPLETS_FILE)
    measured = read_triplets(resumed / TRIPLETS_FILE)
    report = refine(resumed, REFINING, progress=False)
    assert report["images"] <= report["images_cap"]
    cfg = REFINING
    spent_before = (len(measured) - len(before)) * (cfg.triplet_val_images + cfg.triplet_calib_images)
    assert report["images"] >= spent_before
    after = read_triplets(resumed / TRIPLETS_FILE)
    assert [t.arch_id for t in after[: len(measured)]] == [t.arch_id for t in measured]
    assert len({t.arch_id for t in after}) == len(after)


def test_ranked_proposals_are_feasible_and_distinct_and_the_pool_holds_every_draw(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    models = bundle.devices["flops"]
    budgets = [models.min_cost * 2, models.min_cost * 10]
    ranked = propose_ranked(models.generator, models.evaluator, models.device, budgets, keep=3)
    for b, r in zip(budgets, ranked, strict=True):
        assert len({a.arch_id for a in r}) == len(r) <= 3
        assert all(c <= b for c in models.device.predict(r))
    pool = proposal_pool(models.generator, models.evaluator, models.device, budgets, seeds=2, keep=3)
    ids = [a.arch_id for a in pool]
    assert len(ids) == len(set(ids))
    for seed in (0, 1):
        for r in propose_ranked(models.generator, models.evaluator, models.device, budgets, seed=seed, keep=3):
            assert {a.arch_id for a in r} <= set(ids)


def test_old_triplet_files_read_as_sampled(tmp_path: Path) -> None:
    raw = {"arch_json": "{}", "arch_id": "x", "macs": 1, "params": 1, "val_acc": 50.0, "cost": {}, "measured": {}}
    (tmp_path / "t.jsonl").write_text(json.dumps(raw) + "\n")
    assert read_triplets(tmp_path / "t.jsonl")[0].source == SAMPLED


def test_bad_refinement_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NagError, match="refine"):
        dataclasses.replace(pipeline("tiny"), refine_rounds=-1)
    with pytest.raises(NagError, match="refine_confirm_images"):
        dataclasses.replace(pipeline("tiny"), refine_confirm_images=100)
    assert train_generator_main(["--profile", "tiny", "--bundle", str(tmp_path / "b"), "--refine-rounds", "-2"]) == 2
