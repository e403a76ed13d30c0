"""AttentiveNAS in supernet training, the first part of `benchmarks.ablations`: the same supernet profile
trained with each middle-child sampler, scored on one fixed MACs-stratified set of architectures, with the
best and the worst child within each MACs budget judged on the test set and paired against the baseline."""

from __future__ import annotations

import json
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.frontier_stats import paired_bootstrap, verdict
from benchmarks.results_io import markdown_table
from nag.bundle.bundle import SUPERNET_FILE, SUPERNET_LOG_FILE, SUPERNET_SUMMARY_FILE
from nag.config import MIDDLE_SAMPLERS, profile
from nag.data import DataSource, load_splits
from nag.errors import NagError
from nag.export.evaluate import child_accuracy, child_correct
from nag.pipeline.distributed import Distributed
from nag.pipeline.supernet_trainer import SupernetTrainer
from nag.space import count_macs, sample_stratified
from nag.space.arch import biggest, smallest
from nag.supernet.io import load_supernet


@dataclass(frozen=True)
class AttentiveSettings:
    profile: str = "demo"
    samplers: tuple[str, ...] = MIDDLE_SAMPLERS  # the first is the baseline the others are paired against
    archs: int = 120  # the fixed, MACs-stratified set every supernet scores
    val_images: int = 1000
    calib_images: int = 250
    budgets: int = 5
    test_images: int | None = None  # all


QUICK_ATTENTIVE = AttentiveSettings(profile="tiny", archs=20, val_images=300, budgets=3, test_images=1000)




def train_variant(sampler: str, settings: AttentiveSettings, runs: Path) -> tuple[Path, dict[str, Any]]:
    out = runs / sampler
    if not (out / SUPERNET_FILE).is_file():
        cfg = profile(settings.profile).with_overrides(middle_sampler=sampler)
        code = SupernetTrainer(cfg, out, Distributed()).run(resume=True)
        if code != 0:
            raise NagError(f"training the {sampler} supernet stopped with code {code}")
    log_lines = [json.loads(line) for line in (out / SUPERNET_LOG_FILE).read_text().splitlines() if line.strip()]
    summary = json.loads((out / SUPERNET_SUMMARY_FILE).read_text())
    return out / SUPERNET_FILE, {"train_seconds": summary["train_seconds_this_run"], "summary": summary,
                                 "last_epoch": log_lines[-1]}


def run_attentive(settings: AttentiveSettings, runs: Path) -> tuple[dict[str, Any], str]:
    cfg = profile(settings.profile)
    first = None
    variants: dict[str, Any] = {}
    for sampler in settings.samplers:
        path, info = train_variant(sampler, settings, runs)
        variants[sampler] = {"path": path, **info}
        first = first or path
    assert first is not None
    trained = load_supernet(first)
    space = trained.supernet.space
    splits = load_splits(DataSource(), cfg.val_size, cfg.seed, space.input.size, space.input.channels)
    val = splits.val.subset(torch.arange(min(settings.val_images, len(splits.val))))
    test = splits.test if settings.test_images is None else splits.test.subset(torch.arange(settings.test_images))
    archs = sample_stratified(space, settings.archs, random.Random(0))
    macs = np.array([count_macs(a, space) / 1e6 for a in archs])
    lo, hi = float(macs.min()), float(macs.max())
    budgets = [float(b) for b in np.linspace(lo + (hi - lo) / settings.budgets, hi, settings.budgets)]
    result: dict[str, Any] = {"budgets_mmacs": budgets, "archs": len(archs), "variants": {}}
    correct: dict[tuple[str, str], np.ndarray] = {}
    for sampler in settings.samplers:
        trained = load_supernet(variants[sampler]["path"])
        calib = trained.calibration_float[: settings.calib_images]
        started = time.perf_counter()
        val_acc = np.array([child_accuracy(trained.supernet, a, calib, val) for a in archs])
        rows = []
        for i, b in enumerate(budgets):
            lower = budgets[i - 1] if i else -1.0
            inside = np.flatnonzero(macs <= b)
            bucket = np.flatnonzero((macs <= b) & (macs > lower))
            best = archs[int(inside[np.argmax(val_acc[inside])])]
            worst = archs[int(bucket[np.argmin(val_acc[bucket])])] if len(bucket) else best
            row = {"budget": b}
            for name, arch in (("frontier", best), ("worst", worst)):
                key = (sampler, f"{name}@{i}")
                correct[key] = child_correct(trained.supernet, arch, calib, test)
                row[name] = {"arch_id": arch.arch_id, "mmacs": count_macs(arch, space) / 1e6,
                             "val_acc": float(val_acc[archs.index(arch)]), "test_acc": 100 * float(correct[key].mean())}
            rows.append(row)
        extremes = {}
        for name, arch in (("smallest", smallest(space)), ("biggest", biggest(space))):
            correct[(sampler, name)] = child_correct(trained.supernet, arch, calib, test)
            extremes[name] = 100 * float(correct[(sampler, name)].mean())
        last = variants[sampler]["last_epoch"]
        result["variants"][sampler] = {
            "per_budget": rows, **{f"test_acc_{k}": v for k, v in extremes.items()},
            "val_acc_mean": float(val_acc.mean()), "val_acc_min": float(val_acc.min()),
            "frontier_test_acc_mean": statistics.mean(r["frontier"]["test_acc"] for r in rows),
            "worst_test_acc_mean": statistics.mean(r["worst"]["test_acc"] for r in rows),
            "train_seconds": variants[sampler]["train_seconds"],
            "attentive_mean_trials": last.get("attentive_mean_trials"),
            "attentive_miss_rate": last.get("attentive_miss_rate"),
            "scoring_seconds": time.perf_counter() - started,
        }
    paired: dict[str, list[dict[str, Any]]] = {}
    baseline = settings.samplers[0]
    for sampler in settings.samplers[1:]:
        paired[sampler] = []
        for i in range(len(budgets)):
            for name in ("frontier", "worst"):
                diff, low, high = paired_bootstrap(correct[(sampler, f"{name}@{i}")],
                                                   correct[(baseline, f"{name}@{i}")], seed=i)
                paired[sampler].append({"budget": budgets[i], "child": name, "diff": diff, "low": low, "high": high,
                                        "verdict": verdict(low, high)})
    result["baseline"] = baseline
    result["paired_minus_baseline"] = paired
    return result, attentive_markdown(result, settings, len(test))


def attentive_markdown(r: dict[str, Any], s: AttentiveSettings, test_images: int) -> str:
    v = r["variants"]
    names = s.samplers
    md = (f"## AttentiveNAS: middle children of the sandwich rule (profile `{s.profile}`)\n\n"
          f"{r['archs']} MACs-stratified architectures scored on {s.val_images} validation images in each "
          f"supernet; at each budget the best (frontier) and the worst child within the budget's MACs bucket, "
          f"judged on {test_images} test images. Test accuracy %:\n\n")
    headers = ["budget (MMACs)"] + [f"{m} frontier" for m in names] + [f"{m} worst" for m in names]
    rows = []
    for i, b in enumerate(r["budgets_mmacs"]):
        rows.append([f"{b:.2f}"] + [f"{v[m]['per_budget'][i]['frontier']['test_acc']:.2f}" for m in names]
                    + [f"{v[m]['per_budget'][i]['worst']['test_acc']:.2f}" for m in names])
    md += markdown_table(headers, rows) + "\n"
    md += markdown_table(
        ["sampler", "frontier mean", "worst mean", "smallest", "biggest", "val mean / min", "train s",
         "proposal trials per candidate"],
        [[m, f"{v[m]['frontier_test_acc_mean']:.2f}", f"{v[m]['worst_test_acc_mean']:.2f}",
          f"{v[m]['test_acc_smallest']:.2f}", f"{v[m]['test_acc_biggest']:.2f}",
          f"{v[m]['val_acc_mean']:.2f} / {v[m]['val_acc_min']:.2f}", f"{v[m]['train_seconds']:.0f}",
          "-" if v[m]["attentive_mean_trials"] is None else f"{v[m]['attentive_mean_trials']:.1f}"]
         for m in names]) + "\n"
    md += f"Paired against {r['baseline']} on the same test images (95% bootstrap interval):\n\n"
    rows = []
    for m, entries in r["paired_minus_baseline"].items():
        for e in entries:
            rows.append([m, f"{e['budget']:.2f}", e["child"], f"{e['diff']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]",
                         e["verdict"]])
    return md + markdown_table(["sampler", "budget", "child", f"minus {r['baseline']}", "verdict"], rows) + "\n"
