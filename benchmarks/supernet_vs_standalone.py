"""BigNAS Table 3 on our data: children sliced out of the supernet vs the same architectures trained alone.

    python -m benchmarks.supernet_vs_standalone --supernet bundles/default/supernet.pt --standard
    python -m benchmarks.supernet_vs_standalone --supernet S.pt --arch biggest --arch my_child.json
    python -m benchmarks.supernet_vs_standalone --supernet S.pt --frontier supernet_frontier.json --below-smallest

Each architecture (`--arch biggest|smallest|JSON|FILE`, repeatable; `--standard`: the biggest, the
smallest and the server's picks at 25%, 50% and 75% of the `cpu` range of `--bundle`) is trained alone
by `nag.pipeline.train_supernet --arch` with the supernet's profile, epochs, schedule, augmentation
and regularisation (only the sandwich is replaced by the one child), two at a time with one thread
each. `--frontier FILE` adds the random children of a `supernet_frontier` results file (cheapest first;
`--below-smallest`: only those it scored below the smallest), so the frontier's count below the smallest
can be compared with the same children trained alone. Finished runs in `--work` are reused;
`--score-finished` scores the runs that finished and lists the others. Both models are scored on the 10k
test images (BN calibrated), paired per image, and the report counts the children below the sliced
smallest, sliced and trained alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.recipe_study import paired_difference, served_picks
from benchmarks.results_io import RESULTS, machine, markdown_table, write_results
from nag.bundle.bundle import SUPERNET_FILE
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.export.evaluate import child_correct
from nag.pipeline.training_runs import TrainingRun, run_all
from nag.space import Architecture, SearchSpace, biggest, count_macs, resolve_arch, smallest
from nag.supernet.io import load_supernet


def run_name(arch: Architecture, epochs: int) -> str:
    return f"{arch.arch_id}-e{epochs}"


def frontier_children(path: Path, space: SearchSpace, below_smallest: bool) -> list[tuple[str, Architecture]]:
    """The random children of a `supernet_frontier` results file, by resolution then MACs (cheapest first)."""
    try:
        results = json.loads(path.read_text())
        smallest_acc = float(results["summary"]["smallest_acc"])
        rows = [r for r in results["children"] if str(r["name"]).startswith("random")]
        keep = [r for r in rows if not below_smallest or float(r["test_acc"]) < smallest_acc]
        keep.sort(key=lambda r: (int(r["resolution"]), float(r["mmacs"])))
        return [(str(r["name"]), Architecture.from_dict(r["arch"], space)) for r in keep]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NagError(f"{path} is no supernet_frontier results file: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--arch", action="append", default=[],
                   help="[LABEL=]biggest|smallest|JSON|FILE.json: an architecture to compare (repeatable)")
    p.add_argument("--standard", action="store_true", help="the biggest, the smallest and three server picks")
    p.add_argument("--bundle", default="bundles/default", help="the bundle whose picks --standard takes")
    p.add_argument("--frontier", type=Path, help="a supernet_frontier results file: add its random children")
    p.add_argument("--below-smallest", action="store_true",
                   help="with --frontier: only the random children it scored below the smallest")
    p.add_argument("--work", type=Path, default=Path("runs/standalone"))
    p.add_argument("--epochs", type=int, help="default: the supernet's own epochs")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the standalone runs train (cpu or cuda)")
    p.add_argument("--deadline-s", type=float, help="stop (with checkpoints) the runs still going after this long")
    p.add_argument("--data-root", help="folder of the Fashion-MNIST IDX files (default: Debian's)")
    p.add_argument("--train-only", action="store_true", help="train, do not score")
    p.add_argument("--score-finished", action="store_true",
                   help="score the runs that finished (say which did not) instead of refusing")
    p.add_argument("--name", default="supernet_vs_standalone")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the results files")
    args = p.parse_args(argv)
    try:
        trained = load_supernet(args.supernet)
        space = trained.supernet.space
        config = trained.meta.get("config", {})
        profile_name = config.get("profile", "default")
        epochs = args.epochs or int(config.get("epochs", 0)) or None
        if epochs is None:
            raise NagError(f"{args.supernet} does not say its epochs; give --epochs")
        archs: list[tuple[str, Architecture]] = []
        if args.standard:
            archs += [("biggest", biggest(space)), ("smallest", smallest(space)), *served_picks(args.bundle)]
        for spec in args.arch:
            label, _, rest = spec.partition("=") if not spec.lstrip().startswith("{") else ("", "", spec)
            arch = resolve_arch(rest or label, space)
            archs.append((label if rest else (spec if len(spec) < 40 else arch.arch_id), arch))
        if args.below_smallest and args.frontier is None:
            raise NagError("--below-smallest needs --frontier")
        if args.frontier is not None:
            archs += frontier_children(args.frontier, space, args.below_smallest)
        if not archs:
            raise NagError("nothing to compare: give --arch (repeatable), --standard or --frontier")
        runs = [TrainingRun(run_name(a, epochs), ("--profile", profile_name, "--epochs", str(epochs),
                                                  "--arch", a.to_json())) for _, a in archs]
        extra = ("--data-root", args.data_root) if args.data_root else ()
        started = time.perf_counter()
        unique_runs = list(dict.fromkeys(runs))  # an architecture asked for twice trains once
        status = run_all(unique_runs, args.work, args.parallel, args.threads, args.device, args.deadline_s, extra)
        wall = time.perf_counter() - started
        if args.train_only:
            return 0
        failed = [n for n, s in status.items() if s["status"] not in ("finished", "done before")]
        if failed and not args.score_finished:
            raise NagError(f"standalone runs not finished: {failed}; see their logs in {args.work}")
        if len(failed) == len(unique_runs):
            raise NagError(f"no standalone run finished; see their logs in {args.work}")
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test_set = load_test_set(DataSource(), space.input.size, space.input.channels)
    scored: dict[str, np.ndarray] = {}

    def sliced(arch: Architecture) -> np.ndarray:
        """Per-image correctness of the supernet's slice, once per architecture (the smallest may be listed)."""
        if arch.arch_id not in scored:
            scored[arch.arch_id] = child_correct(trained.supernet, arch, trained.calibration_float,
                                                 test_set).astype(np.float64)
        return scored[arch.arch_id]

    smallest_sliced = round(100 * float(sliced(smallest(space)).mean()), 2)
    rows, children = [], []
    for (label, arch), run in zip(archs, runs, strict=True):
        if run.name in failed:
            continue
        alone = load_supernet(args.work / run.name / SUPERNET_FILE)
        alone_correct = child_correct(alone.supernet, arch, alone.calibration_float, test_set).astype(np.float64)
        sliced_correct = sliced(arch)
        diff, se = paired_difference(sliced_correct[None], alone_correct[None])
        entry = {"label": label, "arch_id": arch.arch_id, "resolution": arch.resolution,
                 "mmacs": round(count_macs(arch, space) / 1e6, 3),
                 "standalone_test_acc": round(100 * alone_correct.mean(), 2),
                 "supernet_test_acc": round(100 * sliced_correct.mean(), 2),
                 "difference_points": round(diff, 2), "difference_se": round(se, 2),
                 "standalone_train_seconds": status[run.name].get("wall_s"), "arch": arch.to_dict()}
        children.append(entry)
        rows.append([label, arch.resolution, entry["mmacs"], entry["standalone_test_acc"], entry["supernet_test_acc"],
                     f"{diff:+.2f} ± {se:.2f}"])
    below = {"sliced_smallest_test_acc": smallest_sliced, "children": len(children),
             "sliced": int(sum(c["supernet_test_acc"] < smallest_sliced for c in children)),
             "trained_alone": int(sum(c["standalone_test_acc"] < smallest_sliced for c in children))}
    not_finished = [label for (label, _), run in zip(archs, runs, strict=True) if run.name in failed]
    data = {"supernet": args.supernet, "profile": profile_name, "epochs": epochs, "children": children,
            "below_sliced_smallest": below, "not_finished": not_finished,
            "wall_seconds": round(wall, 1), "machine": machine()}
    md = ("# Supernet children vs the same architectures trained alone (BigNAS Table 3)\n\n"
          f"Supernet `{args.supernet}`; profile `{profile_name}`, {epochs} epochs for both, same schedule and "
          "augmentation; test set (10k), BN calibrated, paired per image (± one standard error).\n\n"
          f"Below the sliced smallest ({below['sliced_smallest_test_acc']}%): {below['sliced']} of "
          f"{below['children']} children sliced, {below['trained_alone']} trained alone.\n\n")
    if not_finished:
        md += f"Not finished, not scored: {', '.join(not_finished)}.\n\n"
    md += markdown_table(["child", "resolution", "MMACs", "trained alone %", "sliced from supernet %", "difference"],
                         rows)
    write_results(args.name, data, md, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
