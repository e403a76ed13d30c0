"""The generator on a bundle: feasibility (predicted and measured), pick quality and generation time.

    python -m benchmarks.generator_quality --bundle bundles/default --device cpu --budgets 20

At each budget (evenly spread over the device's range) the generator's pick (seed 0, 64 candidates)
is checked against the budget by predicted latency and by latency measured in ONNX Runtime (drift
guarded, one pass over all picks, with 8 of the profile's architectures measured alongside to tell
the machine's speed now against the profile's: feasibility is reported as measured and at the
profile's speed), and its validation accuracy (supernet, BN-calibrated, on the triplets' scale: the
whole validation split once refinement has put them on it) is compared with the best collected triplet
within that budget (triplets costed by the device's current predictor).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from benchmarks.results_io import RESULTS, machine, markdown_table, write_results
from nag.bundle import load_bundle
from nag.bundle.bundle import TRIPLETS_FILE
from nag.cost.speed import measure_against_profile
from nag.cost.store import device_dir
from nag.data import DataSource, load_splits
from nag.errors import NagError
from nag.export.evaluate import child_accuracy
from nag.pnag.triplets import read_triplets
from nag.policy.inference import generate


def generation_time_ms(bundle: Any, device: str, budget: float, repeats: int) -> list[float]:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        generate(bundle, budget, device, candidates=64, seed=i)
        times.append(1e3 * (time.perf_counter() - start))
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--budgets", type=int, default=20)
    p.add_argument("--val-images", type=int, help="validation images per pick (default: the scale of the bundle's "
                   "triplets: the whole split after refinement, else the pipeline's triplet images)")
    p.add_argument("--calib-images", type=int, default=250)
    p.add_argument("--timing-repeats", type=int, default=50)
    args = p.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        models = bundle.devices.get(args.device)
        if models is None:
            raise NagError(f"unknown device {args.device!r}; the bundle has {sorted(bundle.devices)}")
        triplets = read_triplets(bundle.root / TRIPLETS_FILE)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    space = bundle.space
    lo, hi = models.min_cost, models.device.cost_range[1]
    budgets = [float(b) for b in np.linspace(lo + 0.02 * (hi - lo), hi, args.budgets)]
    picks = [generate(bundle, b, args.device, candidates=64, seed=0) for b in budgets]
    measured: list[float | None] = [None] * len(picks)
    at_profile: list[float | None] = [None] * len(picks)
    speed: dict[str, Any] = {}
    if models.device.profile.device_kind.measured:
        print(f"measuring {len(picks)} picks in ONNX Runtime ...", flush=True)
        now = measure_against_profile([g.arch for g in picks], space, models.device.profile,
                                      device_dir(bundle.root, args.device))
        measured = [m.median for m in now.measurements]
        at_profile = list(now.at_profile_speed())
        speed = {"now_over_profiled": now.speed, "per_reference": now.reference_ratios}
    cfg = bundle.trained.meta.get("config", {})
    splits = load_splits(DataSource(), int(cfg.get("val_size", 5000)), int(cfg.get("seed", 0)), space.input.size,
                         space.input.channels)
    refinement = bundle.metrics.get("refinement", {})
    val_images = args.val_images or refinement.get("confirm_images") or bundle.pipeline.triplet_val_images
    val = splits.val.subset(torch.arange(min(val_images, len(splits.val))))
    calib = bundle.trained.calibration_float[: args.calib_images]
    rows, records = [], []
    # The device's current predictor, not the triplets' stored costs (those may predate a re-profile).
    cost = models.device.predict([t.arch(space) for t in triplets])
    accs = np.array([t.val_acc for t in triplets])
    for b, g, m, mp in zip(budgets, picks, measured, at_profile, strict=True):
        acc = child_accuracy(bundle.trained.supernet, g.arch, calib, val)
        within = accs[cost <= b]
        best = float(within.max()) if len(within) else float("nan")
        rec = {"budget": b, "arch_id": g.arch.arch_id, "predicted": g.predicted_cost, "measured": m,
               "feasible_predicted": g.predicted_cost <= b, "feasible_measured": None if m is None else m <= b,
               "feasible_measured_5pct": None if m is None else m <= 1.05 * b,
               "measured_at_profile_speed": mp, "feasible_at_profile_speed": None if mp is None else mp <= b,
               "val_acc": acc,
               "predicted_acc": g.predicted_accuracy, "best_triplet_acc_within_budget": best,
               "gap_to_best_triplet": acc - best, "macs": g.macs, "fallback": g.fallback}
        records.append(rec)
        rows.append([f"{b:.4g}", f"{g.predicted_cost:.4g}", "-" if m is None else f"{m:.4g}",
                     "-" if mp is None else f"{mp:.4g}", "yes" if rec["feasible_predicted"] else "NO",
                     "-" if m is None else ("yes" if m <= b else ("≤5%" if m <= 1.05 * b else "NO")),
                     "-" if mp is None else ("yes" if mp <= b else "NO"),
                     f"{g.macs / 1e6:.2f}", f"{acc:.2f}", f"{best:.2f}", f"{acc - best:+.2f}"])
    mid = budgets[len(budgets) // 2]
    times = generation_time_ms(bundle, args.device, mid, args.timing_repeats)
    n = len(records)
    summary = {
        "feasible_by_predicted": sum(r["feasible_predicted"] for r in records) / n,
        "feasible_by_measured": None if measured[0] is None else sum(bool(r["feasible_measured"]) for r in records) / n,
        "feasible_by_measured_within_5pct": None if measured[0] is None
        else sum(bool(r["feasible_measured_5pct"]) for r in records) / n,
        "feasible_at_profile_speed": None if measured[0] is None
        else sum(bool(r["feasible_at_profile_speed"]) for r in records) / n,
        "machine_speed": speed,
        "mean_gap_to_best_triplet": statistics.mean(r["gap_to_best_triplet"] for r in records),
        "generation_ms_median": statistics.median(times), "generation_ms_p90": float(np.percentile(times, 90)),
    }
    unit = models.device.unit
    md = (f"# Generator quality, bundle `{bundle.bundle_id}`, device `{args.device}`\n\n"
          f"{n} budgets; pick = generate(budget, candidates=64, seed=0). Validation accuracy on "
          f"{len(val)} images (the triplets' scale), BN calibrated on {len(calib)}.\n\n")
    md += markdown_table([f"budget ({unit})", "predicted", "measured", "at profile speed", "feasible (pred.)",
                          "feasible (meas.)", "feasible (profile speed)", "MMACs", "val acc %",
                          "best triplet ≤ budget %", "gap"], rows)
    md += (f"\nFeasible by predicted cost: {100 * summary['feasible_by_predicted']:.0f}%"
           + ("" if summary["feasible_by_measured"] is None else
              f"; by measured latency: {100 * summary['feasible_by_measured']:.0f}% "
              f"({100 * summary['feasible_by_measured_within_5pct']:.0f}% within budget × 1.05); at the "
              f"profile's speed: {100 * summary['feasible_at_profile_speed']:.0f}% (this machine ran "
              f"{speed['now_over_profiled']:.3f}× the profiled latency on {len(speed['per_reference'])} of the "
              "profile's architectures measured alongside)")
           + f". Mean gap to the best triplet within budget: {summary['mean_gap_to_best_triplet']:+.2f} points.\n\n"
           f"Generation time (sample + predict + choose, no export), {args.timing_repeats} calls at "
           f"{mid:.4g} {unit}: median {summary['generation_ms_median']:.1f} ms, "
           f"p90 {summary['generation_ms_p90']:.1f} ms.\n\n![frontier](generator_frontier_{args.device}.png)\n")
    write_results(f"generator_quality_{args.device}", {"bundle_id": bundle.bundle_id, "machine": machine(),
                                                       "summary": summary, "picks": records}, md)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(cost, accs, s=5, c="0.7", label=f"{len(triplets)} triplets")
    ax.plot([r["predicted"] for r in records], [r["val_acc"] for r in records], "o-", c="C3",
            label="generator's pick per budget")
    ax.set_xlabel(f"predicted cost ({unit}) on {args.device}")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("generated frontier over the collected triplets")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"generator_frontier_{args.device}.png", dpi=120)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
