"""NAG against per-budget searches, and PNAG's Tables 2-5, on one bundle (`make bench-frontier`).

    python -m benchmarks.frontier --bundle bundles/default --device cpu
    python -m benchmarks.frontier --bundle bundles/demo --quick

At each budget every method picks one architecture under the device's latency predictor, for the budget
less the latency margin NAG serves with (`GenerationConfig.latency_margin`). Each pick is
then judged the same way: test accuracy (supernet, BN re-calibrated on the served number of images,
all test images) and latency measured in ONNX Runtime (one drift-guarded pass over every pick).
Searches score candidates on validation images only. Method times are wall times on this machine;
a supernet evaluation that another search already ran is charged at what it cost then. `lookup` is
the bundle's best measured triplet within the target (no generator), `sampled` the evaluator's best of
the request's own samples (what `generate` served before its serving frontier); `--top 2` extends the
budgets to twice the dearest child.
"""


import argparse
import logging
import math
import sys
import time
from pathlib import Path

import torch

from benchmarks.frontier_context import EXTRA_METHODS, QUICK, SEARCHES, Context, Settings
from benchmarks.frontier_judge import assemble, at_profile_speed
from benchmarks.frontier_methods import benchmark_budgets, run_methods
from benchmarks.frontier_report import plot, rejudge, render
from benchmarks.results_io import RESULTS, write_results
from nag.bundle import load_bundle
from nag.data import DataSource, load_splits
from nag.errors import NagError

__all__ = ["at_profile_speed", "main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="few budgets, evaluations and images (demo bundle, CI)")
    p.add_argument("--budgets", type=int, help="number of budgets across the device's range")
    p.add_argument("--random-evaluations", type=int)
    p.add_argument("--evolution-evaluations", type=int)
    p.add_argument("--search-seeds", type=int)
    p.add_argument("--methods", default="nag,independent," + ",".join(SEARCHES),
                   help="comma-separated: nag, independent, " + ", ".join(SEARCHES + EXTRA_METHODS))
    p.add_argument("--top", type=float, default=1.0,
                   help="the highest budget as a multiple of the device's dearest child (default 1)")
    p.add_argument("--no-ablations", action="store_true", help="skip PNAG's Tables 2, 3 and 5")
    p.add_argument("--name", default="frontier", help="results file name (without suffix)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results/)")
    p.add_argument("--rejudge", type=Path, metavar="JSON",
                   help="only add the at-profile-speed feasibility to a saved result and rewrite its files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.rejudge:
        if not args.rejudge.is_file():
            print(f"error: {args.rejudge} does not exist", file=sys.stderr)
            return 2
        return rejudge(args.rejudge)
    settings = QUICK if args.quick else Settings()
    overrides = {"budgets": args.budgets, "random_evaluations": args.random_evaluations,
                 "evolution_evaluations": args.evolution_evaluations, "search_seeds": args.search_seeds}
    settings = Settings(**{**settings.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"nag", "independent", *SEARCHES, *EXTRA_METHODS}
    try:
        if unknown or "nag" not in methods:
            raise NagError(f"--methods must include nag and only name known methods; unknown: {sorted(unknown)}")
        if not math.isfinite(args.top) or args.top <= 0:
            raise NagError(f"--top must be a positive number, got {args.top}")
        bundle = load_bundle(args.bundle)
        if args.device not in bundle.devices:
            raise NagError(f"unknown device {args.device!r}; the bundle has {sorted(bundle.devices)}")
        cfg = bundle.trained.meta.get("config", {})
        splits = load_splits(DataSource(), int(cfg.get("val_size", 5000)), int(cfg.get("seed", 0)),
                             bundle.space.input.size, bundle.space.input.channels)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    started = time.perf_counter()
    val = splits.val.subset(torch.arange(min(settings.search_val_images, len(splits.val))))
    test = splits.test if settings.test_images is None else splits.test.subset(
        torch.arange(min(settings.test_images, len(splits.test))))
    ctx = Context(bundle, args.device, settings, val, test)
    budgets, ablation_budgets = benchmark_budgets(ctx, args.top)
    timings: dict[str, float] = {}
    runs, ablation_runs, reference_runs = run_methods(ctx, methods, budgets, ablation_budgets, not args.no_ablations,
                                                      timings)
    result = assemble(ctx, methods, budgets, ablation_budgets, runs, ablation_runs, reference_runs, timings)
    timings["total"] = time.perf_counter() - started
    result["stage_seconds"] = timings
    md = render(ctx, result, args.name)
    write_results(f"{args.name}_{args.device}", result, md, args.out)
    plot(result["comparison"], result["unit"], args.out / f"{args.name}_{args.device}.png",
         f"NAG and per-budget searches, bundle {bundle.bundle_id} ({args.device})")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
