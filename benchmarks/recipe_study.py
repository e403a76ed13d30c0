"""Supernet recipe study: each lever against today's recipe on one short proxy, paired on the same images.

    python -m benchmarks.recipe_study train --work runs/recipe --parallel 2      # CPU: hours; a GPU: minutes
    python -m benchmarks.recipe_study report --work runs/recipe --bundle bundles/default

`train` runs every variant of `VARIANTS` (the proxy: `PROXY_EPOCHS` epochs, seed 0) side by side.
`report` scores the same children in every variant's supernet: the frontier benchmark's 50 random
children (seed 0), the server's picks at 25%, 50% and 75% of the `cpu` range of `--bundle`, and the
biggest and smallest. Differences to the `today` variant are paired per test image over the 53 children
(50 random and 3 picks), with the standard error over images.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.results_io import machine, markdown_table, spearman, write_results
from nag.bundle.bundle import SUPERNET_FILE, SUPERNET_SUMMARY_FILE, load_bundle
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.export.evaluate import child_correct
from nag.pipeline.training_runs import TrainingRun, finished, run_all
from nag.policy.inference import generate, resolve_device
from nag.space import Architecture, SearchSpace, biggest, count_macs, sample_uniform, smallest
from nag.supernet.io import load_supernet

PROXY_EPOCHS = 3
TODAY = ("--middle-sampler", "uniform", "--no-kernel-transform")  # the recipe before this study
VARIANTS: dict[str, tuple[str, ...]] = {
    "today": TODAY,
    "elastic-kernel": ("--middle-sampler", "uniform", "--kernel-transform"),
    "stratified-middle": ("--middle-sampler", "stratified", "--no-kernel-transform"),
    "both": ("--middle-sampler", "stratified", "--kernel-transform"),
    "both-4-middle": ("--middle-sampler", "stratified", "--kernel-transform", "--num-middle-children", "4"),
    "today-2x-steps": (*TODAY, "--epochs", str(2 * PROXY_EPOCHS)),
    "both-2x-steps": ("--middle-sampler", "stratified", "--kernel-transform", "--epochs", str(2 * PROXY_EPOCHS)),
    # Four middle children on half a batch each: twice the middle children for about the same compute.
    "stratified-4-middle-halves": ("--middle-sampler", "stratified", "--no-kernel-transform",
                                   "--num-middle-children", "4", "--middle-slices", "2"),
    # Distillation settings: the students also see the labels (half the weight), or softer targets.
    "stratified-labels-half": ("--middle-sampler", "stratified", "--no-kernel-transform",
                               "--student-label-weight", "0.5"),
    "stratified-temperature-2": ("--middle-sampler", "stratified", "--no-kernel-transform",
                                 "--distill-temperature", "2"),
    # Labels at half weight, and one middle child drawn uniformly over the choices (what a random child is)
    # in place of, or next to, the stratified ones.
    "labels-half-uniform-first": ("--middle-sampler", "stratified", "--no-kernel-transform",
                                  "--student-label-weight", "0.5", "--uniform-middle-children", "1"),
    "labels-half-3-middle-uniform-first": ("--middle-sampler", "stratified", "--no-kernel-transform",
                                           "--student-label-weight", "0.5", "--num-middle-children", "3",
                                           "--uniform-middle-children", "1"),
}
PICK_FRACTIONS = (0.25, 0.5, 0.75)


def study_runs(names: list[str] | None = None, profile: str = "default") -> list[TrainingRun]:
    chosen = names or list(VARIANTS)
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise NagError(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    runs = []
    for name in chosen:
        args = VARIANTS[name]
        epochs = () if "--epochs" in args else ("--epochs", str(PROXY_EPOCHS))
        runs.append(TrainingRun(name, ("--profile", profile, *epochs, *args)))
    return runs


def served_picks(bundle_path: str, device: str = "cpu") -> list[tuple[str, Architecture]]:
    """The server's picks at `PICK_FRACTIONS` of the device's cost range, as named architectures."""
    bundle = load_bundle(bundle_path)
    models = resolve_device(bundle, device)
    lo, hi = models.min_cost, models.device.cost_range[1]
    picks = []
    for fraction in PICK_FRACTIONS:
        budget = lo + fraction * (hi - lo)
        picks.append((f"pick at {fraction:.0%} ({budget:.3g} {models.device.unit})",
                      generate(bundle, budget, device, seed=0).arch))
    return picks


def study_children(space: SearchSpace, picks: list[tuple[str, Architecture]], count: int = 50
                   ) -> list[tuple[str, Architecture]]:
    rng = random.Random(0)  # the frontier benchmark's children
    children = [(f"random{i}", sample_uniform(space, rng)) for i in range(count)]
    return [("smallest", smallest(space)), ("biggest", biggest(space)), *children, *picks]


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean accuracy difference (points) of a − b over children [C, N] and its standard error over images."""
    per_image = a.mean(axis=0) - b.mean(axis=0)
    return 100.0 * float(per_image.mean()), 100.0 * float(per_image.std(ddof=1) / np.sqrt(len(per_image)))


def report(work: Path, bundle: str, baseline: str, name: str) -> int:
    done = [n for n in VARIANTS if finished(work / n)]
    if not done:
        raise NagError(f"no variant has a finished run in {work}")
    first = load_supernet(work / done[0] / SUPERNET_FILE)
    space = first.supernet.space
    test_set = load_test_set(DataSource(), space.input.size, space.input.channels)
    children = study_children(space, served_picks(bundle))
    macs = [count_macs(a, space) / 1e6 for _, a in children]
    correct: dict[str, np.ndarray] = {}
    started = time.perf_counter()
    ids = [a.arch_id for _, a in children]
    for variant in done:
        # Scores are kept beside the supernet, keyed by the children, so a later report only scores what is new.
        cache = work / variant / "study_scores.npz"
        if cache.is_file():
            saved = np.load(cache)
            if list(saved["ids"]) == ids:
                correct[variant] = saved["correct"].astype(np.float64)
                continue
        trained = load_supernet(work / variant / SUPERNET_FILE)
        correct[variant] = np.stack([child_correct(trained.supernet, arch, trained.calibration_float, test_set)
                                     for _, arch in children]).astype(np.float64)
        np.savez(cache, ids=np.array(ids), correct=correct[variant].astype(np.bool_))
        print(f"{variant}: scored {len(children)} children", flush=True)
    scored = slice(2, len(children))  # 50 random children and the 3 picks
    rows, data = [], {}
    if baseline not in done:
        print(f"scored {done}; the baseline {baseline!r} has no finished run yet: no table", flush=True)
        return 1
    for variant in done:
        acc = 100.0 * correct[variant].mean(axis=1)
        diff, se = paired_difference(correct[variant][scored], correct[baseline][scored])
        random_acc = acc[2:52]
        entry = {
            "args": list(VARIANTS[variant]), "mean_acc_53": round(float(acc[scored].mean()), 2),
            "difference_points": round(diff, 2), "difference_se": round(se, 2),
            "biggest": round(float(acc[1]), 2), "smallest": round(float(acc[0]), 2),
            "picks": [round(float(v), 2) for v in acc[52:]],
            "below_smallest": int((random_acc < acc[0]).sum()),
            "spearman_macs_acc": round(spearman(macs[2:52], list(random_acc)), 3),
            "train_seconds": _train_seconds(work / variant),
        }
        data[variant] = entry
        rows.append([variant, " ".join(VARIANTS[variant]) or "-", entry["mean_acc_53"],
                     f"{diff:+.2f} ± {se:.2f}", entry["biggest"], entry["smallest"],
                     " / ".join(f"{v:.2f}" for v in entry["picks"]), entry["below_smallest"],
                     entry["spearman_macs_acc"]])
    summary = {"work": str(work), "baseline": baseline, "proxy_epochs": PROXY_EPOCHS, "bundle": bundle,
               "children": [{"name": n, "arch_id": a.arch_id, "mmacs": round(m, 3)}
                            for (n, a), m in zip(children, macs, strict=True)],
               "variants": data, "seconds": round(time.perf_counter() - started, 1), "machine": machine()}
    md = (f"# Supernet recipe study ({PROXY_EPOCHS}-epoch proxy, seed 0)\n\nEvery variant's supernet scores the "
          "same 53 children (the frontier benchmark's 50 random children and the server's picks at 25/50/75% of "
          "the `cpu` range) on the 10k test images, BN calibrated; the difference to "
          f"`{baseline}` is paired per image, ± one standard error over images.\n\n")
    md += markdown_table(["variant", "arguments", "mean of 53 %", f"vs {baseline}", "biggest %", "smallest %",
                          "picks 25/50/75 %", "random below smallest", "Spearman(MACs, acc)"], rows)
    write_results(name, summary, md)
    print(md)
    return 0


def _train_seconds(folder: Path) -> float | None:
    try:
        return float(json.loads((folder / SUPERNET_SUMMARY_FILE).read_text())["train_seconds_this_run"])
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the variants' supernets")
    t.add_argument("--work", type=Path, default=Path("runs/recipe"))
    t.add_argument("--only", help="comma-separated variant names (default: all)")
    t.add_argument("--profile", default="default", help="the profile the variants start from (tests: tiny)")
    t.add_argument("--parallel", type=int, default=2)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--device", default="cpu")
    t.add_argument("--deadline-s", type=float, help="stop (with checkpoints) what still runs after this long")
    t.add_argument("--data-root", help="folder of the Fashion-MNIST IDX files (default: Debian's)")
    r = sub.add_parser("report", help="score the same children in every finished variant")
    r.add_argument("--work", type=Path, default=Path("runs/recipe"))
    r.add_argument("--bundle", default="bundles/default", help="the bundle whose server picks are scored")
    r.add_argument("--baseline", default="today")
    r.add_argument("--name", default="recipe_study")
    args = p.parse_args(argv)
    try:
        if args.command == "report":
            return report(args.work, args.bundle, args.baseline, args.name)
        extra = ("--data-root", args.data_root) if args.data_root else ()
        runs = study_runs(args.only.split(",") if args.only else None, args.profile)
        status = run_all(runs, args.work, args.parallel, args.threads, args.device, args.deadline_s, extra)
        return 0 if all(s["status"] in ("finished", "done before") for s in status.values()) else 1
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
