"""On-policy refinement (issue 18): measure what serving would pick, learn from it, pick again.

PNAG trains its evaluator once, on triplets drawn before any generator exists, and the policy then
exploits the evaluator wherever those triplets are thin. Here the pipeline goes on after the first
evaluators and generators. Once per bundle, every triplet is put on the scale of the whole validation
split (`_calibrate_scale`). Then, in rounds:

1. every device's serving frontier is built exactly as the server builds it (`nag.policy.frontier`);
   its **proposed** entries (the generator's children that the accuracy predictor puts on the front,
   never measured) are measured through the supernet on the validation split, exactly like the first
   triplets, and appended with their provenance (`refine:<device>:<round>`);
2. every triplet near a device's measured front is re-scored on the rest of the split, the two scores
   pooled (`_confirm_fronts`);
3. the accuracy predictor is refitted, each evaluator retrained on all triplets and each generator
   fine-tuned against its new evaluator.

A round reports, per device: the proposed entries measured, the ladder picks' expected accuracy before
and their validation accuracy after measuring, the measured front's mean validation accuracy over the
ladder, and the evaluator's pairwise agreement on the new points before it saw them. Refinement stops
when no front holds a proposed entry, when the measured fronts' mean validation accuracy (over devices)
rises by less than `refine_min_gain` points, after `refine_rounds` rounds, or when the images it passed
through children (validation and BN calibration) reach `refine_budget` times what measuring the sampled
triplets passed. Each round may spend its share of what is left (measuring proposals first), and a
share is kept for a last pass: the fronts that the last retraining produced have their proposed entries
measured too, without learning from them, so that serving picks measured children, and whatever images
are left re-score the fronts, nearest first.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_right
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
from nag.cost.store import device_dir
from nag.errors import NagError
from nag.pipeline.collect_triplets import TripletMeasuring, triplet_measuring
from nag.pnag.accuracy import AccuracyPredictor
from nag.pnag.encoding import TokenEncoder
from nag.pnag.evaluator import pairwise_agreement, train_evaluator
from nag.pnag.generator import token_cost, train_generator
from nag.pnag.triplets import SAMPLED, Triplet, read_triplets, refine_source, write_triplets
from nag.policy.frontier import FrontierEntry, ServingFrontier, build_frontier, pareto_front
from nag.space.arch import Architecture
from nag.space.space import SearchSpace

log = logging.getLogger("refine")

AGREEMENT_PAIRS = 5000  # pairs per budget when scoring an evaluator on a round's new points
# Files refinement rewrites before it seals the manifest again: a run resumed after a kill finds them changed.
REWRITTEN = frozenset({TRIPLETS_FILE, ACCURACY_FILE, EVALUATOR_FILE, EVALUATOR_REPORT_FILE, GENERATOR_FILE})
SCALE_SHARE = 4  # the validation scale's children spend at most 1/SCALE_SHARE of refinement's images


@dataclass(frozen=True)
class RefineRound:
    round: int
    device: str
    measured: int  # proposed front entries measured for this device in this round
    proposed_on_front: int  # proposed entries on the device's serving front before measuring
    picks: int  # ladder budgets with a pick (the front's best entry within the budget)
    distinct_picks: int
    picks_expected_acc: float  # the picks' expected accuracy before measuring, mean over the ladder (%)
    picks_val_acc: float  # the same picks' validation accuracy once measured (the measured ones' mean, %)
    front_val_acc: float  # after the round: the best measured triplet within each ladder budget, mean (%)
    agreement_on_new: float | None  # the evaluator's pairwise agreement on the new points before training on them
    heldout_agreement: float  # the retrained evaluator's agreement on its held-out triplets


class Spending:
    """Images passed through children (validation and BN calibration) by refinement, against its cap."""

    def __init__(self, cap: int, spent: int = 0) -> None:
        self.cap, self.spent = cap, spent

    @property
    def left(self) -> int:
        return max(0, self.cap - self.spent)

    def affordable(self, count: int, each: int, allowance: int) -> int:
        """How many of `count` measurements of `each` images fit in what is left and in `allowance`."""
        return max(0, min(count, min(self.left, allowance) // max(1, each)))

    def spend(self, images: int) -> None:
        self.spent += images


def _measuring_cost(m: TripletMeasuring) -> int:
    return len(m.val) + len(m.calibration)


def _pooled(triplet: Triplet, arch: Architecture, rest: TripletMeasuring, first_images: int) -> Triplet:
    """`triplet` re-scored on the whole split: its first `first_images` images' score (its stored score less
    its shift) pooled with a new measurement on `rest`, the images after them (same BN calibration, so the
    same model). No shift is needed after."""
    n_first = triplet.val_images or first_images
    if n_first != first_images:
        raise NagError(f"triplet {triplet.arch_id} was scored on {n_first} validation images, not the "
                       f"{first_images} the pipeline config says; re-scoring would count images twice")
    raw_first = triplet.val_acc - triplet.val_shift
    n_rest = len(rest.val)
    acc_rest = rest.triplet(arch, triplet.source).val_acc
    pooled = (raw_first * n_first + acc_rest * n_rest) / (n_first + n_rest)
    return replace(triplet, val_acc=pooled, val_images=n_first + n_rest, val_shift=0.0)


def _near_front(costs: np.ndarray, acc: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the entries whose accuracy is within `margin` points of the best accuracy at their cost or
    below (the Pareto front itself at margin 0, with ties), nearest first, and how far below each is."""
    order = np.argsort(costs, kind="stable")
    gap = np.maximum.accumulate(acc[order]) - acc[order]
    keep = gap <= margin
    chosen, gaps = order[keep], gap[keep]
    nearest = np.argsort(gaps, kind="stable")
    return chosen[nearest], gaps[nearest]


def _confirm_fronts(bundle: Bundle, names: list[str], triplets: list[Triplet], rest: TripletMeasuring,
                    first_images: int, margin: float, spending: Spending, allowance: int, progress: bool) -> int:
    """Re-score, on `rest` (the validation images after the first `first_images`), every triplet within
    `margin` points of a device's measured front (predicted cost, validation accuracy) that was scored on
    the first images alone, nearest the front first, until none is left or `allowance` images are spent;
    `triplets` is updated in place. Returns the children re-scored.

    The front of many noisy scores is where the lucky ones gather: on 1,500 images one score's standard
    error is about 0.75 points, and a refined bundle served children up to 0.47 points worse on the test
    set than the sampled lookup table chose. Re-scoring the front alone corrects the lucky ones but never
    the unlucky ones just below it, hence the margin."""
    whole = first_images + len(rest.val)
    archs = [t.arch(bundle.space) for t in triplets]
    costs = {name: np.asarray(bundle.devices[name].device.predict(archs), dtype=float) for name in names}
    each = _measuring_cost(rest)
    confirmed = 0
    for _ in range(len(triplets)):
        acc = np.array([t.val_acc for t in triplets])
        gaps: dict[int, float] = {}
        for name in names:
            for i, g in zip(*_near_front(costs[name], acc, margin), strict=True):
                if triplets[int(i)].val_images < whole:
                    gaps[int(i)] = min(float(g), gaps.get(int(i), np.inf))
        todo = sorted(gaps, key=lambda i: (gaps[i], i))[: spending.affordable(len(gaps), each, allowance)]
        if not todo:
            break
        for i in tqdm(todo, desc="re-scoring the fronts", unit="arch", disable=not progress):
            triplets[i] = _pooled(triplets[i], archs[i], rest, first_images)
        spending.spend(each * len(todo))
        allowance -= each * len(todo)
        confirmed += len(todo)
    return confirmed


def _calibrate_scale(bundle: Bundle, triplets: list[Triplet], rest: TripletMeasuring, first_images: int,
                     children: int, seed: int, spending: Spending, progress: bool) -> dict[str, Any]:
    """Put every triplet on the scale of the whole validation split: re-score `children` random sampled ones
    on it (at most a `SCALE_SHARE`th of refinement's images), and shift the others by the mean difference.
    The first 1,500 images of the default bundle's split are harder than all 5,000 (+0.84 points, sd 0.38,
    over 40 children): without the shift a re-scored child would gain about a point over the rest for no
    reason. Done once per bundle; `triplets` is updated in place."""
    whole = first_images + len(rest.val)
    if any(t.val_images >= whole for t in triplets):  # calibrated before (a resumed or repeated run)
        shifts = [t.val_shift for t in triplets if t.val_shift]
        return {"shift": shifts[0] if shifts else 0.0, "children": 0}
    order = [i for i in range(len(triplets)) if triplets[i].source == SAMPLED]
    np.random.default_rng(seed).shuffle(order)
    chosen = order[: spending.affordable(children, _measuring_cost(rest), spending.cap // SCALE_SHARE)]
    diffs = []
    for i in tqdm(chosen, desc="validation scale", unit="arch", disable=not progress):
        full = _pooled(triplets[i], triplets[i].arch(bundle.space), rest, first_images)
        diffs.append(full.val_acc - triplets[i].val_acc)
        triplets[i] = full
    spending.spend(_measuring_cost(rest) * len(chosen))
    shift = float(np.mean(diffs)) if diffs else 0.0
    for i, t in enumerate(triplets):
        if t.val_images < whole:
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


def _measured_front_mean(models: DeviceModels, space: SearchSpace, triplets: list[Triplet], ladder: list[float]
                         ) -> float:
    """The best measured validation accuracy within each ladder budget, averaged over the budgets that have
    one: what serving picks once every front entry is measured."""
    archs = [t.arch(space) for t in triplets]
    front = pareto_front([FrontierEntry(a, float(c), t.val_acc, True)
                          for a, c, t in zip(archs, models.device.predict(archs), triplets, strict=True)])
    costs = [e.cost for e in front]
    best = [front[i].expected_accuracy for b in ladder if (i := bisect_right(costs, b) - 1) >= 0]
    return float(np.mean(best)) if best else float("nan")


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
        models.evaluator, models.frontier, models.stored = evaluator, None, None
        last = history[-1] if history else {}
        reports[name] = {**report, "generator_final": {k: last.get(k) for k in ("mean_reward", "feasible", "entropy")}}
    return reports


def _measure_front(bundle: Bundle, name: str, triplets: list[Triplet], measuring: TripletMeasuring, shift: float,
                   number: int, spending: Spending, allowance: int, progress: bool
                   ) -> tuple[list[Triplet], ServingFrontier, list[FrontierEntry]]:
    """Measure (within `allowance` images) the proposed entries of the device's serving front, cheapest
    first (a proposed entry is never a triplet: `build_frontier` keeps a triplet's measurement); returns
    the new triplets, the frontier as it was, and its ladder picks."""
    models = bundle.devices[name]
    frontier = build_frontier(models.generator, models.evaluator, models.device, bundle.accuracy, triplets)
    picks = [e for b in frontier.ladder if (e := frontier.best_within(b)) is not None]
    proposed = [e.arch for e in frontier.entries if not e.measured]
    todo = proposed[: spending.affordable(len(proposed), _measuring_cost(measuring), allowance)]
    new = []
    for arch in tqdm(todo, desc=f"refinement round {number}, {name}", unit="arch", disable=not progress):
        t = measuring.triplet(arch, refine_source(name, number))
        new.append(replace(t, val_acc=t.val_acc + shift, val_shift=shift))
    spending.spend(_measuring_cost(measuring) * len(todo))
    return new, frontier, picks


def refine(root: str | Path, cfg: PipelineConfig, progress: bool = True) -> dict[str, Any]:
    """Run on-policy refinement on a built bundle (see the module's docstring); returns the report that
    the manifest's metrics keep under "refinement" (the manifest is sealed again)."""
    bundle = load_bundle(root, unsealed=REWRITTEN)
    names = [n for n in cfg.devices if n in bundle.devices] or sorted(bundle.devices)
    space = bundle.space
    encoder = TokenEncoder(space)
    path = bundle.root / TRIPLETS_FILE
    triplets = read_triplets(path)
    measuring = triplet_measuring(bundle.root, cfg.triplet_val_images, cfg.triplet_calib_images)
    first_images = len(measuring.val)
    sampled_cost = sum(t.source == SAMPLED for t in triplets) * _measuring_cost(measuring)
    rest: TripletMeasuring | None = None
    if cfg.refine_confirm_images > first_images:
        rest = triplet_measuring(bundle.root, cfg.refine_confirm_images, cfg.triplet_calib_images, first_images)
        if len(rest.val) == 0:  # a validation split no longer than the first measurement's
            rest = None
    # A run resumed after a kill counts what the triplets show it measured before.
    before = sum(t.source != SAMPLED for t in triplets) * _measuring_cost(measuring)
    if rest is not None:
        before += sum(t.val_images >= first_images + len(rest.val) for t in triplets) * _measuring_cost(rest)
    spending = Spending(int(cfg.refine_budget * sampled_cost), before)
    scale: dict[str, Any] = {"shift": 0.0, "children": 0}
    if rest is not None:
        scale = _calibrate_scale(bundle, triplets, rest, first_images, cfg.refine_scale_children, cfg.seed,
                                 spending, progress)
        write_triplets(path, triplets)
        log.info("validation scale: %+.2f points from %d children re-scored on %d more images", scale["shift"],
                 scale["children"], len(rest.val))
    confirmed = 0
    rounds: list[RefineRound] = []
    previous: float | None = None
    last_reports: dict[str, dict[str, Any]] = {}
    stop_reason = f"{cfg.refine_rounds} rounds"
    for number in range(1, cfg.refine_rounds + 1):
        allowance = spending.left // (cfg.refine_rounds - number + 2)  # a share is kept for the last pass
        at_start = spending.spent
        found: dict[str, tuple[list[Triplet], ServingFrontier, list[FrontierEntry]]] = {}
        agreements: dict[str, float | None] = {}
        for name in names:
            share = (allowance - (spending.spent - at_start)) // max(1, len(names) - len(found))
            new, frontier, picks = _measure_front(bundle, name, triplets, measuring, scale["shift"], number,
                                                  spending, share, progress)
            triplets += new
            write_triplets(path, triplets)
            found[name] = (new, frontier, picks)
            # Scored by the evaluator that chose these points, before `_retrain` replaces it.
            agreements[name] = _agreement(bundle.devices[name], encoder, new, space, cfg.evaluator_config().rule)
        if number > 1 and not any(new for new, _, _ in found.values()):
            proposed_left = any(not e.measured for _, f, _ in found.values() for e in f.entries)
            stop_reason = "no images left for the proposed entries" if proposed_left else \
                "the serving fronts hold no proposed entry"
            break
        if rest is not None:
            confirmed += _confirm_fronts(bundle, names, triplets, rest, first_images, cfg.refine_confirm_margin,
                                         spending, allowance - (spending.spent - at_start), progress)
            write_triplets(path, triplets)
        reports = last_reports = _retrain(bundle, names, triplets, cfg, number, progress)
        known = {t.arch_id: t for t in triplets}
        for name in names:
            new, frontier, picks = found[name]
            measured_picks = [known[p.arch.arch_id].val_acc for p in picks if p.arch.arch_id in known]
            rounds.append(RefineRound(
                number, name, len(new), sum(not e.measured for e in frontier.entries), len(picks),
                len({p.arch.arch_id for p in picks}),
                float(np.mean([p.expected_accuracy for p in picks])) if picks else float("nan"),
                float(np.mean(measured_picks)) if measured_picks else float("nan"),
                _measured_front_mean(bundle.devices[name], space, triplets, list(frontier.ladder)),
                agreements[name], float(reports[name]["heldout"]["overall"])))
        mean = float(np.nanmean([r.front_val_acc for r in rounds[-len(names):]]))
        log.info("refinement round %d: %s; measured fronts' mean validation accuracy %.2f%%; %d re-scored so far; "
                 "%.2f M of %.2f M images", number,
                 ", ".join(f"{r.device} +{r.measured} of {r.proposed_on_front} proposed" for r in rounds[-len(names):]),
                 mean, confirmed, spending.spent / 1e6, spending.cap / 1e6)
        if previous is not None and mean < previous + cfg.refine_min_gain:
            stop_reason = f"the measured fronts' validation accuracy rose {mean - previous:+.2f} points (< " \
                          f"{cfg.refine_min_gain})"
            break
        previous = mean
        if spending.left < _measuring_cost(measuring):
            stop_reason = "all images spent"
            break
    # The last retraining moved the fronts: measure what they propose now, without learning from it, so
    # that serving picks measured children wherever the images allow.
    last_pass: dict[str, dict[str, int]] = {}
    last_rescored = 0
    if rounds:
        final = rounds[-1].round + 1
        for name in names:
            new, frontier, _ = _measure_front(bundle, name, triplets, measuring, scale["shift"], final, spending,
                                              spending.left, progress)
            triplets += new
            write_triplets(path, triplets)
            last_pass[name] = {"measured": len(new), "proposed_on_front": sum(not e.measured for e in frontier.entries)}
        if rest is not None:  # and what is left re-scores the fronts, nearest first
            last_rescored = _confirm_fronts(bundle, names, triplets, rest, first_images, cfg.refine_confirm_margin,
                                            spending, spending.left, progress)
            confirmed += last_rescored
            write_triplets(path, triplets)
        log.info("last pass: %s; %d re-scored", ", ".join(f"{n} +{v['measured']} of {v['proposed_on_front']} proposed"
                                                          for n, v in last_pass.items()), last_rescored)
    new_count = sum(t.source != SAMPLED for t in triplets)
    report = {"rounds": [asdict(r) for r in rounds], "last_pass": last_pass, "last_pass_rescored": last_rescored,
              "evaluations": new_count, "confirmed": confirmed,
              "images": spending.spent, "images_cap": spending.cap, "sampled_images": sampled_cost,
              "stopped": stop_reason, "confirm_images": first_images + (len(rest.val) if rest else 0),
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
