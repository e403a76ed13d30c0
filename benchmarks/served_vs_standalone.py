"""The models the server sends vs the same architectures trained alone, per device, cheap end included.

    python -m benchmarks.served_vs_standalone [--bundle bundles/default] [--work runs/served_vs_standalone]

Per device (`--device`, repeatable; default `cpu` and `flops`) a real `nag serve` on the bundle is asked
for budgets at `CHEAP_FRACTIONS` of the device's serving range (its cheapest third) and at
`UPPER_FRACTIONS` (above it); the range runs from the cheapest serving-frontier member to the best one.
Each architecture served is trained alone by `nag.pipeline.train_supernet --arch` with the bundle's
supernet profile, epochs, schedule and augmentation, two at a time with one thread each; an
architecture served more than once trains once, and finished runs in `--work` are reused (resumable;
`--train-only` trains and stops; `--score-finished --deadline-s 0` scores the rows whose runs finished, say
while another process still trains the rest in the same `--work`, and lists the others; `--cheap-only`: the
cheapest-third budgets alone). The served ONNX model (its bytes as sent) is scored in ONNX Runtime and the
standalone child (BN calibrated) too, both on the 10k test images, paired per image.

Writes benchmarks/results/served_vs_standalone.{json,md}: `bundle_id`, `ranges` ({device: [min, max]})
and `rows`, each {device, budget, arch_id, macs, served_acc, alone_acc, difference_points} plus the
standard error of the difference, the frontier member and whether the budget is in the cheapest third.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.deterministic_serving import Server
from benchmarks.recipe_study import paired_difference
from benchmarks.results_io import RESULTS, machine, markdown_table, write_results
from benchmarks.supernet_vs_standalone import run_name
from nag.bundle.bundle import SUPERNET_FILE, load_bundle
from nag.client import channel
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.export.evaluate import child_correct, onnx_predictions
from nag.pipeline.training_runs import TrainingRun, run_all
from nag.policy.frontier import serving_frontier
from nag.space import Architecture, count_macs
from nag.supernet.io import load_supernet
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

CHEAP_FRACTIONS = (0.04, 0.15, 0.28)
UPPER_FRACTIONS = (0.45, 0.7, 0.95)


@dataclass(frozen=True)
class Served:
    device: str
    budget: float
    cheap: bool
    arch: Architecture
    member: int
    model: bytes


def serving_ranges(bundle_path: str, devices: list[str]) -> dict[str, tuple[float, float]]:
    """Per device, the costs of its cheapest and its best serving-frontier member."""
    bundle = load_bundle(bundle_path)
    ranges = {}
    for name in devices:
        if name not in bundle.devices:
            raise NagError(f"bundle {bundle_path} has no device {name!r}; it has {sorted(bundle.devices)}")
        frontier = serving_frontier(bundle, bundle.devices[name])
        ranges[name] = (frontier.entries[0].cost, frontier.best.cost)
    return ranges


def ask_server(bundle_path: str, ranges: dict[str, tuple[float, float]]) -> list[Served]:
    """The server's answers at the cheap and upper fractions of each device's range, over real gRPC."""
    bundle = load_bundle(bundle_path)
    server = Server(bundle_path)
    served = []
    try:
        with channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            for device, (lo, hi) in ranges.items():
                for fraction in (*CHEAP_FRACTIONS, *UPPER_FRACTIONS):
                    budget = lo + fraction * (hi - lo)
                    reply = stub.GenerateForBudget(pb.GenerateForBudgetRequest(device=device, cost=budget),
                                                   timeout=120)
                    arch = Architecture.from_json(reply.architecture_json, bundle.space)
                    served.append(Served(device, budget, fraction <= 1 / 3, arch, reply.frontier_member,
                                         reply.onnx_model))
    finally:
        server.stop()
    return served


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", action="append", help="a device of the bundle (repeatable; default cpu and flops)")
    p.add_argument("--work", type=Path, default=Path("runs/served_vs_standalone"))
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-device", default="cpu", help="where the standalone runs train (cpu or cuda)")
    p.add_argument("--deadline-s", type=float, help="stop (with checkpoints) the runs still going after this long")
    p.add_argument("--data-root", help="folder of the Fashion-MNIST IDX files (default: Debian's)")
    p.add_argument("--cheap-only", action="store_true", help="only the budgets in each device's cheapest third")
    p.add_argument("--train-only", action="store_true", help="train, do not score")
    p.add_argument("--score-finished", action="store_true",
                   help="score the rows whose standalone runs finished (list the others) instead of refusing")
    p.add_argument("--name", default="served_vs_standalone")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    args = p.parse_args(argv)
    devices = args.device or ["cpu", "flops"]
    try:
        bundle = load_bundle(args.bundle)
        config = bundle.trained.meta.get("config", {})
        profile, epochs = str(config.get("profile", "default")), int(config.get("epochs", 0))
        if not epochs:
            raise NagError(f"the supernet of {args.bundle} does not say its epochs")
        ranges = serving_ranges(args.bundle, devices)
        served = [s for s in ask_server(args.bundle, ranges) if s.cheap or not args.cheap_only]
        for s in served:
            print(f"{s.device} budget {s.budget:.4g} ({'cheap' if s.cheap else 'upper'}): member {s.member}, "
                  f"{s.arch.arch_id}", flush=True)
        runs = {s.arch.arch_id: TrainingRun(run_name(s.arch, epochs), ("--profile", profile, "--epochs",
                                                                        str(epochs), "--arch", s.arch.to_json()))
                for s in served}
        extra = ("--data-root", args.data_root) if args.data_root else ()
        started = time.perf_counter()
        status = run_all(list(runs.values()), args.work, args.parallel, args.threads, args.train_device,
                         args.deadline_s, extra)
        wall = time.perf_counter() - started
        failed = [n for n, s in status.items() if s["status"] not in ("finished", "done before")]
        if failed and (not args.score_finished or len(failed) == len(runs)):
            raise NagError(f"standalone runs not finished: {failed}; run again to resume (logs in {args.work})")
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.train_only:
        return 0
    space = bundle.space
    test = load_test_set(DataSource(root=args.data_root) if args.data_root else DataSource(), space.input.size,
                         space.input.channels)
    labels = test.labels.numpy()
    alone: dict[str, np.ndarray] = {}
    rows = []
    for s in served:
        if runs[s.arch.arch_id].name in failed:
            continue
        if s.arch.arch_id not in alone:
            trained = load_supernet(args.work / runs[s.arch.arch_id].name / SUPERNET_FILE)
            alone[s.arch.arch_id] = child_correct(trained.supernet, s.arch, trained.calibration_float,
                                                  test).astype(np.float64)
        served_correct = (onnx_predictions(s.model, test) == labels).astype(np.float64)
        diff, se = paired_difference(served_correct[None], alone[s.arch.arch_id][None])
        rows.append({"device": s.device, "budget": round(s.budget, 6), "cheap": s.cheap,
                     "frontier_member": s.member, "arch_id": s.arch.arch_id, "macs": count_macs(s.arch, space),
                     "served_acc": round(100 * float(served_correct.mean()), 2),
                     "alone_acc": round(100 * float(alone[s.arch.arch_id].mean()), 2),
                     "difference_points": round(diff, 2), "difference_se": round(se, 2)})
    unscored = [{"device": s.device, "budget": round(s.budget, 6), "arch_id": s.arch.arch_id} for s in served
                if runs[s.arch.arch_id].name in failed]
    units = {d: bundle.devices[d].device.unit for d in ranges}
    return report(args, bundle.bundle_id, ranges, units, rows, unscored, profile, epochs, wall)


def report(args: argparse.Namespace, bundle_id: str, ranges: dict[str, tuple[float, float]], units: dict[str, str],
           rows: list[dict], unscored: list[dict], profile: str, epochs: int, wall: float) -> int:
    cheap = [r["difference_points"] for r in rows if r["cheap"]]
    summary = {"rows": len(rows), "cheap_rows": len(cheap),
               "cheap_mean_difference_points": round(float(np.mean(cheap)), 2) if cheap else None,
               "worst_difference_points": min(r["difference_points"] for r in rows),
               "rows_at_least_minus_0_5": sum(r["difference_points"] >= -0.5 for r in rows)}
    data = {"bundle": args.bundle, "bundle_id": bundle_id, "profile": profile, "epochs": epochs,
            "ranges": {d: [lo, hi] for d, (lo, hi) in ranges.items()}, "rows": rows, "not_scored": unscored,
            "summary": summary,
            "training_wall_seconds": round(wall, 1), "machine": machine()}
    table = markdown_table(
        ["device", "budget", "third", "member", "MMACs", "served %", "trained alone %", "served − alone"],
        [[r["device"], f"{r['budget']:.4g} {units[r['device']]}", "cheapest" if r["cheap"] else "above",
          r["frontier_member"], f"{r['macs'] / 1e6:.2f}", r["served_acc"], r["alone_acc"],
          f"{r['difference_points']:+.2f} ± {r['difference_se']:.2f}"] for r in rows])
    md = "\n\n".join([
        f"# Served models vs the same architectures trained alone (bundle `{bundle_id}`)",
        f"Supernet profile `{profile}`, {epochs} epochs both ways, same trainer; the served ONNX model in ONNX "
        "Runtime against the standalone child (BN calibrated), paired on the 10k test images (± one standard "
        "error).",
        "Ranges (cheapest to best serving-frontier member): "
        + "; ".join(f"`{d}` {lo:.4g}–{hi:.4g} {units[d]}" for d, (lo, hi) in ranges.items()) + ".",
        table,
        *(["Not scored yet (their standalone runs have not finished): " + ", ".join(
            f"`{u['device']}` {u['budget']:.4g} ({u['arch_id']})" for u in unscored) + "."] if unscored else []),
        f"Rows with served − alone ≥ −0.5: {summary['rows_at_least_minus_0_5']} of {len(rows)}; worst "
        f"{summary['worst_difference_points']:+.2f}; mean over the cheapest-third rows "
        f"{summary['cheap_mean_difference_points']:+.2f}."])
    path = write_results(args.name, data, md + "\n", args.out)
    print(md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
