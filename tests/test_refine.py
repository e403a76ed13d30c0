"""On-policy refinement: the generators' picks are measured, appended with provenance, and learned from."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from nag.bundle.bundle import TRIPLETS_FILE, load_bundle
from nag.config import pipeline
from nag.core.triplets import SAMPLED, Triplet, read_triplets, refine_source
from nag.errors import NagError
from nag.serving.frontier import FrontierEntry, pareto_front, propose, propose_ranked
from nag.serving.inference import generate
from nag.training.train_generator import build
from nag.training.train_generator import main as train_generator_main


@pytest.fixture(scope="module")
def refined(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Triplet]]:
    root = tmp_path_factory.mktemp("refined") / "tiny"
    shutil.copytree(tiny_bundle, root)
    before = read_triplets(root / TRIPLETS_FILE)
    cfg = dataclasses.replace(pipeline("tiny"), refine_rounds=3, refine_generator_steps=5, refine_min_gain=-100.0)
    build(root, cfg, run_dir=root.parent / "run", progress=False)
    return root, before


def test_refinement_appends_the_picks_with_their_provenance_within_the_cap(refined) -> None:
    root, before = refined
    after = read_triplets(root / TRIPLETS_FILE)
    # The first triplets are kept, on the whole validation split's scale: re-measured, or shifted.
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
    assert {t.source for t in new} <= {refine_source("flops", r) for r in (1, 2, 3)}
    assert len({t.arch_id for t in after}) == len(after)  # nothing measured twice
    assert len(new) <= 0.5 * len(before)  # refine_fraction of the sampled triplets' count
    assert report["evaluations"] == len(new) and report["cap"] == len(before) // 2
    assert report["confirmed"] >= 1 and report["confirm_images"] > max(t.val_images for t in before)
    bundle = load_bundle(root)
    archs = [t.arch(bundle.space) for t in after]
    costs = bundle.devices["flops"].device.predict(archs)
    entries = [FrontierEntry(a, float(c), t.val_acc, True) for a, c, t in zip(archs, costs, after, strict=True)]
    front = pareto_front(entries)
    by_id = {t.arch_id: t for t in after}
    assert all(by_id[e.arch.arch_id].val_images == report["confirm_images"] for e in front)  # every member confirmed
    first = report["rounds"][0]
    assert first["device"] == "flops" and first["measured"] >= 1 and 0 <= first["picks_val_acc"] <= 100
    assert first["agreement_on_new"] is None or 0 <= first["agreement_on_new"] <= 1


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


def test_ranked_proposals_start_with_the_pick(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)
    models = bundle.devices["flops"]
    budgets = [models.min_cost * 2, models.min_cost * 10]
    ranked = propose_ranked(models.generator, models.evaluator, models.device, budgets, keep=3)
    assert [r[0] for r in ranked if r] == propose(models.generator, models.evaluator, models.device, budgets)
    for b, r in zip(budgets, ranked, strict=True):
        assert len({a.arch_id for a in r}) == len(r) <= 3
        assert all(c <= b for c in models.device.predict(r))


def test_old_triplet_files_read_as_sampled(tmp_path: Path) -> None:
    raw = {"arch_json": "{}", "arch_id": "x", "macs": 1, "params": 1, "val_acc": 50.0, "cost": {}, "measured": {}}
    (tmp_path / "t.jsonl").write_text(json.dumps(raw) + "\n")
    assert read_triplets(tmp_path / "t.jsonl")[0].source == SAMPLED


def test_bad_refinement_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NagError, match="refine"):
        dataclasses.replace(pipeline("tiny"), refine_rounds=-1)
    assert train_generator_main(["--profile", "tiny", "--bundle", str(tmp_path / "b"), "--refine-rounds", "-2"]) == 2
