"""On-policy refinement (issue 18): measure what the generators pick, learn from it, pick again.

PNAG trains its evaluator once, on triplets drawn before any generator exists, and the policy then
exploits the evaluator wherever those triplets are thin. Here the pipeline goes on after the first
evaluators and generators. Once per bundle, every triplet is put on the scale of the whole validation
split (`_calibrate_scale`). Then, in rounds:

1. every device's generator proposes, at each budget of its serving ladder (`nag.serving.frontier`),
   its pick and `keep - 1` runners-up (the evaluator's best feasible samples);
2. those not measured yet are measured through the supernet on the validation split, exactly like the
   first triplets, and appended to the triplets with their provenance (`refine:<device>:<round>`);
3. every triplet near a device's measured front is re-scored on the whole split (`_confirm_fronts`);
4. the accuracy predictor is refitted, each evaluator retrained on all triplets and each generator
   fine-tuned against its new evaluator.

A round reports, per device, the mean validation accuracy of the generator's picks and the
evaluator's pairwise agreement on the new points before it saw them. Refinement stops when the picks'
mean validation accuracy (over devices) rises by less than `refine_min_gain` points, after
`refine_rounds` rounds, or when the new children reach `refine_fraction` of the sampled triplets' count.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from nag.artifacts import atomic_write_bytes
from nag.bundle.bundle import (
    ACCURACY_FILE,
    EVALUATOR_FILE,
    EVALUATOR_REPORT_FILE,
    GENERATOR_FILE,
    TRIPLETS_FILE,
    Bundle,
    DeviceModels,
    load_bundle,
    save_evaluator,
    save_generator,
    write_manifest,
)
from nag.config import PipelineConfig
from nag.core.accuracy import AccuracyPredictor
from nag.core.encoding import TokenEncoder
from nag.core.evaluator import pairwise_agreement, train_evaluator
from nag.core.generator import token_cost, train_generator
from nag.core.triplets import SAMPLED, Triplet, read_triplets, refine_source, write_triplets
from nag.cost.store import device_dir
from nag.serving.frontier import ladder_budgets, propose_ranked
from nag.space.arch import Architecture, biggest, smallest
from nag.space.space import SearchSpace
from nag.training.collect_triplets import TripletMeasuring, triplet_measuring

log = logging.getLogger("refine")

AGREEMENT_PAIRS = 5000  # pairs per budget when scoring an evaluator on a round's new points


@dataclass(frozen=True)
class RefineRound:
    round: int
    device: str
    measured: int  # children measured for this device in this round
    picks: int  # ladder budgets with a pick (one pick per budget)
    distinct_picks: int
    picks_val_acc: float  # the picks' validation accuracy (%, measured through the supernet), mean over budgets
    agreement_on_new: float | None  # the evaluator's pairwise agreement on the new points before training on them
    heldout_agreement: float  # the retrained evaluator's agreement on its held-out triplets


def _ladder(models: DeviceModels, space: SearchSpace, triplets: list[Triplet]) -> list[float]:
    """The serving frontier's ladder for this device (same range rule as `build_frontier`)."""
    lo, hi = (float(c) for c in models.device.predict([smallest(space), biggest(space)]))
    costs = models.device.predict([t.arch(space) for t in triplets])
    return ladder_budgets(lo, max(hi, lo, float(np.max(costs))))


def _propose(models: DeviceModels, space: SearchSpace, triplets: list[Triplet], keep: int
             ) -> tuple[list[Architecture], list[Architecture]]:
    """The pick at each budget of the device's ladder (where one is feasible), and every distinct proposal
    (picks first, then runners-up)."""
    ranked = propose_ranked(models.generator, models.evaluator, models.device, _ladder(models, space, triplets),
                            keep=keep)
    picks = [r[0] for r in ranked if r]
    proposals = {a.arch_id: a for a in picks}
    for rank in range(1, keep):
        for r in ranked:
            if len(r) > rank:
                proposals.setdefault(r[rank].arch_id, r[rank])
    return picks, list(proposals.values())


def _rescored(triplet: Triplet, arch: Architecture, measuring: TripletMeasuring) -> Triplet:
    """`triplet` with its validation accuracy measured again on `measuring`'s images (no shift needed)."""
    full = measuring.triplet(arch, triplet.source)
    return replace(triplet, val_acc=full.val_acc, val_images=full.val_images, val_shift=0.0)


def _near_front(costs: np.ndarray, acc: np.ndarray, margin: float) -> np.ndarray:
    """Indices of the entries whose accuracy is within `margin` points of the best accuracy at their cost or
    below (the Pareto front itself at margin 0, with ties)."""
    order = np.argsort(costs, kind="stable")
    best = np.maximum.accumulate(acc[order])
    return order[acc[order] >= best - margin]


def _confirm_fronts(bundle: Bundle, names: list[str], triplets: list[Triplet], measuring: TripletMeasuring,
                    margin: float, progress: bool) -> int:
    """Re-measure, on `measuring`'s (larger) validation set, every triplet within `margin` points of a
    device's measured front (predicted cost, validation accuracy) that was measured on fewer images, until
    none is left; `triplets` is updated in place. Returns the children re-measured.

    The front of many noisy scores is where the lucky ones gather: on 1,500 images one score's standard
    error is about 0.75 points, and a refined bundle served children up to 0.47 points worse on the test
    set than the sampled lookup table chose. Re-measuring the front alone corrects the lucky ones but
    never the unlucky ones just below it, hence the margin."""
    images = len(measuring.val)
    archs = [t.arch(bundle.space) for t in triplets]
    costs = {name: np.asarray(bundle.devices[name].device.predict(archs), dtype=float) for name in names}
    confirmed = 0
    for _ in range(len(triplets)):
        acc = np.array([t.val_acc for t in triplets])
        todo = sorted({int(i) for name in names for i in _near_front(costs[name], acc, margin)
                       if triplets[int(i)].val_images < images})
        if not todo:
            break
        for i in tqdm(todo, desc="confirming the fronts", unit="arch", disable=not progress):
            triplets[i] = _rescored(triplets[i], archs[i], measuring)
        confirmed += len(todo)
    return confirmed


def _calibrate_scale(bundle: Bundle, triplets: list[Triplet], measuring: TripletMeasuring, children: int,
                     seed: int, progress: bool) -> dict[str, Any]:
    """Put every triplet on the scale of the whole validation split: re-measure `children` random ones
    on it, and shift the others by the mean difference. The first 1,500 images of the default bundle's
    split are harder than all 5,000 (+0.84 points, sd 0.38, over 40 children): without the shift a
    re-measured child would gain about a point over the rest for no reason. Done once per bundle;
    `triplets` is updated in place."""
    images = len(measuring.val)
    if any(t.val_images >= images for t in triplets):  # calibrated before (a resumed or repeated run)
        shifts = [t.val_shift for t in triplets if t.val_shift]
        return {"shift": shifts[0] if shifts else 0.0, "children": 0}
    order = [i for i in range(len(triplets)) if triplets[i].source == SAMPLED]
    np.random.default_rng(seed).shuffle(order)
    chosen = order[:children]
    diffs = []
    for i in tqdm(chosen, desc="validation scale", unit="arch", disable=not progress):
        full = _rescored(triplets[i], triplets[i].arch(bundle.space), measuring)
        diffs.append(full.val_acc - triplets[i].val_acc)
        triplets[i] = full
    shift = float(np.mean(diffs)) if diffs else 0.0
    for i, t in enumerate(triplets):
        if t.val_images < images:
            triplets[i] = replace(t, val_acc=t.val_acc + shift, val_shift=shift)
    return {"shift": shift, "children": len(diffs), "sd": float(np.std(diffs)) if diffs else 0.0}


def _agreement(models: DeviceModels, encoder: TokenEncoder, new: list[Triplet], space: SearchSpace, rule: str
               ) -> float | None:
    if len(new) < 2:
        return None
    archs = [t.arch(space) for t in new]
    enc = encoder.encode_archs(archs)
    cost = torch.tensor(models.device.predict(archs), dtype=torch.float64)
    acc = torch.tensor([t.val_acc for t in new], dtype=torch.float64)
    budgets = [float(b) for b in models.generator.budget.budgets]
    return float(pairwise_agreement(models.evaluator, enc, cost, acc, budgets, AGREEMENT_PAIRS, 7, rule)["overall"])


def _retrain(bundle: Bundle, names: list[str], triplets: list[Triplet], cfg: PipelineConfig, round_number: int,
             progress: bool) -> dict[str, dict[str, Any]]:
    """Refit the accuracy predictor, retrain each device's evaluator on all triplets and fine-tune its
    generator; write them into the bundle and swap them into `bundle` in memory."""
    space = bundle.space
    encoder = TokenEncoder(space)
    archs = [t.arch(space) for t in triplets]
    enc = encoder.encode_archs(archs)
    acc = torch.tensor([t.val_acc for t in triplets], dtype=torch.float64)
    bundle.accuracy = AccuracyPredictor.fit(enc, acc.numpy(), seed=cfg.seed)
    atomic_write_bytes(bundle.root / ACCURACY_FILE, json.dumps(bundle.accuracy.to_dict()).encode())
    reports = {}
    for name in names:
        models = bundle.devices[name]
        folder = device_dir(bundle.root, name)
        cost = torch.tensor(models.device.predict(archs), dtype=torch.float64)
        budgets = [float(b) for b in models.generator.budget.budgets]
        ecfg = cfg.evaluator_config()
        evaluator, report = train_evaluator(enc, cost, acc, budgets, ecfg, progress)
        save_evaluator(folder / EVALUATOR_FILE, evaluator, encoder.dim, ecfg.hidden, ecfg.budget_dim, report)
        atomic_write_bytes(folder / EVALUATOR_REPORT_FILE, json.dumps(report, indent=1).encode())
        gcfg = cfg.generator_config(steps=cfg.refine_generator_steps, seed=cfg.seed + round_number)
        torch.manual_seed(gcfg.seed)
        history = train_generator(models.generator, evaluator, gcfg, token_cost(models.device.predict, space), None,
                                  progress)
        models.generator.eval()
        save_generator(folder / GENERATOR_FILE, models.generator, cfg.generator_config().__dict__)
        models.evaluator, models.frontier = evaluator, None
        last = history[-1] if history else {}
        reports[name] = {**report, "generator_final": {k: last.get(k) for k in ("mean_reward", "feasible", "entropy")}}
    return reports


def refine(root: str | Path, cfg: PipelineConfig, progress: bool = True) -> dict[str, Any]:
    """Run on-policy refinement on a built bundle (see the module's docstring); returns the report that
    the manifest's metrics keep under "refinement" (the manifest is sealed again)."""
    bundle = load_bundle(root)
    names = [n for n in cfg.devices if n in bundle.devices] or sorted(bundle.devices)
    space = bundle.space
    encoder = TokenEncoder(space)
    path = bundle.root / TRIPLETS_FILE
    triplets = read_triplets(path)
    known = {t.arch_id: t for t in triplets}
    cap = int(cfg.refine_fraction * sum(t.source == SAMPLED for t in triplets))
    spent = sum(t.source != SAMPLED for t in triplets)  # a resumed run counts what it measured before
    per_round = max(1, cap // max(1, cfg.refine_rounds * len(names)))
    measuring: TripletMeasuring | None = None
    confirming: TripletMeasuring | None = None
    confirmed = 0
    rounds: list[RefineRound] = []
    previous: float | None = None
    last_reports: dict[str, dict[str, Any]] = {}
    stop_reason = f"{cfg.refine_rounds} rounds"
    scale: dict[str, Any] = {"shift": 0.0, "children": 0}
    if cfg.refine_confirm_images > 0:
        confirming = triplet_measuring(bundle.root, cfg.refine_confirm_images, cfg.triplet_calib_images)
        scale = _calibrate_scale(bundle, triplets, confirming, cfg.refine_scale_children, cfg.seed, progress)
        known = {t.arch_id: t for t in triplets}
        write_triplets(path, triplets)
        log.info("validation scale: %+.2f points from %d children re-measured on %d images", scale["shift"],
                 scale["children"], len(confirming.val))
    for number in range(1, cfg.refine_rounds + 1):
        new_by_device: dict[str, list[Triplet]] = {}
        picks_by_device: dict[str, list[Architecture]] = {}
        agreements: dict[str, float | None] = {}
        for name in names:
            models = bundle.devices[name]
            picks, proposals = _propose(models, space, triplets, cfg.refine_keep)
            todo = [a for a in proposals if a.arch_id not in known][:max(0, min(per_round, cap - spent))]
            if todo and measuring is None:
                measuring = triplet_measuring(bundle.root, cfg.triplet_val_images, cfg.triplet_calib_images)
            new = []
            for arch in tqdm(todo, desc=f"refinement round {number}, {name}", unit="arch", disable=not progress):
                assert measuring is not None
                t = measuring.triplet(arch, refine_source(name, number))
                new.append(replace(t, val_acc=t.val_acc + scale["shift"], val_shift=scale["shift"]))
            for t in new:
                known[t.arch_id] = t
            triplets += new
            spent += len(new)
            write_triplets(path, triplets)
            new_by_device[name], picks_by_device[name] = new, picks
            # Scored by the evaluator that chose these points, before `_retrain` replaces it.
            agreements[name] = _agreement(models, encoder, new, space, cfg.evaluator_config().rule)
        if confirming is not None:
            confirmed += _confirm_fronts(bundle, names, triplets, confirming, cfg.refine_confirm_margin, progress)
            known = {t.arch_id: t for t in triplets}
            write_triplets(path, triplets)
        reports = last_reports = _retrain(bundle, names, triplets, cfg, number, progress)
        for name in names:
            picks = [p for p in picks_by_device[name] if p.arch_id in known]
            rounds.append(RefineRound(
                number, name, len(new_by_device[name]), len(picks), len({p.arch_id for p in picks}),
                float(np.mean([known[p.arch_id].val_acc for p in picks])) if picks else float("nan"),
                agreements[name], float(reports[name]["heldout"]["overall"])))
        mean = float(np.nanmean([r.picks_val_acc for r in rounds[-len(names):]]))
        log.info("refinement round %d: %s; picks' mean validation accuracy %.2f%%; %d/%d evaluations; %d front "
                 "members confirmed", number, ", ".join(f"{r.device} +{r.measured}" for r in rounds[-len(names):]),
                 mean, spent, cap, confirmed)
        if previous is not None and mean < previous + cfg.refine_min_gain:
            stop_reason = f"picks' validation accuracy rose {mean - previous:+.2f} points (< {cfg.refine_min_gain})"
            break
        previous = mean
        if spent >= cap:
            stop_reason = f"all {cap} evaluations spent"
            break
    report = {"rounds": [asdict(r) for r in rounds], "evaluations": spent, "cap": cap, "stopped": stop_reason,
              "confirmed": confirmed, "confirm_images": len(confirming.val) if confirming else 0,
              "validation_scale": scale}
    metrics = dict(bundle.manifest["metrics"])
    devices = dict(metrics.get("devices", {}))
    for name, rep in last_reports.items():
        devices[name] = {**devices.get(name, {}), "evaluator_heldout_agreement": rep["heldout"]["overall"],
                         "evaluator_heldout_per_budget": rep["heldout"]["per_budget"],
                         **{f"generator_final_{k}": v for k, v in rep["generator_final"].items()}}
    metrics.update({"refinement": report, "devices": devices, "triplets": len(triplets),
                    "accuracy_predictor": bundle.accuracy.metrics})
    configs = {**bundle.manifest["configs"], "pipeline": cfg.to_dict()}  # the refinement settings it ran with
    write_manifest(bundle.root, bundle.manifest["name"], space, bundle.default_device, configs, metrics)
    return report
