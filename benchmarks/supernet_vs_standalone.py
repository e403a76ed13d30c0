"""BigNAS Table 3 on our data: children sliced out of the supernet vs the same architectures trained alone.

    python -m benchmarks.supernet_vs_standalone --supernet bundles/default/supernet.pt --standard
    python -m benchmarks.supernet_vs_standalone --supernet S.pt --arch biggest --arch my_child.json

Each architecture (`--arch biggest|smallest|JSON|FILE`, repeatable; `--standard`: the biggest, the
smallest and the server's picks at 25%, 50% and 75% of the `cpu` range of `--bundle`) is trained alone
by `nag.training.train_supernet --arch` with the supernet's profile, epochs, schedule, augmentation
and regularisation (only the sandwich is replaced by the one child), two at a time with one thread
each. Finished runs in `--work` are reused. Both models are scored on the 10k test images (BN
calibrated), paired per image.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.recipe_study import paired_difference, served_picks
from benchmarks.results_io import machine, markdown_table, write_results
from benchmarks.training_runs import TrainingRun, run_all
from nag.bundle.bundle import SUPERNET_FILE
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.export.evaluate import child_correct
from nag.space import Architecture, biggest, count_macs, resolve_arch, smallest
from nag.supernet.io import load_supernet


def run_name(arch: Architecture, epochs: int) -> str:
    return f"{arch.arch_id}-e{epochs}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--arch", action="append", default=[],
                   help="[LABEL=]biggest|smallest|JSON|FILE.json: an architecture to compare (repeatable)")
    p.add_argument("--standard", action="store_true", help="the biggest, the smallest and three server picks")
    p.add_argument("--bundle", default="bundles/default", help="the bundle whose picks --standard takes")
    p.add_argument("--work", type=Path, default=Path("runs/standalone"))
    p.add_argument("--epochs", type=int, help="default: the supernet's own epochs")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where the standalone runs train (cpu or cuda)")
    p.add_argument("--deadline-s", type=float, help="stop (with checkpoints) the runs still going after this long")
    p.add_argument("--data-root", help="folder of the Fashion-MNIST IDX files (default: Debian's)")
    p.add_argument("--train-only", action="store_true", help="train, do not score")
    p.add_argument("--name", default="supernet_vs_standalone")
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
        if not archs:
            raise NagError("nothing to compare: give --arch (repeatable) or --standard")
        runs = [TrainingRun(run_name(a, epochs), ("--profile", profile_name, "--epochs", str(epochs),
                                                  "--arch", a.to_json())) for _, a in archs]
        extra = ("--data-root", args.data_root) if args.data_root else ()
        started = time.perf_counter()
        status = run_all(runs, args.work, args.parallel, args.threads, args.device, args.deadline_s, extra)
        wall = time.perf_counter() - started
        if args.train_only:
            return 0
        failed = [n for n, s in status.items() if s["status"] not in ("finished", "done before")]
        if failed:
            raise NagError(f"standalone runs not finished: {failed}; see their logs in {args.work}")
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test_set = load_test_set(DataSource(), space.input.size, space.input.channels)
    rows, children = [], []
    for (label, arch), run in zip(archs, runs, strict=True):
        alone = load_supernet(args.work / run.name / SUPERNET_FILE)
        alone_correct = child_correct(alone.supernet, arch, alone.calibration_float, test_set).astype(np.float64)
        sliced_correct = child_correct(trained.supernet, arch, trained.calibration_float, test_set).astype(np.float64)
        diff, se = paired_difference(sliced_correct[None], alone_correct[None])
        entry = {"label": label, "arch_id": arch.arch_id, "mmacs": round(count_macs(arch, space) / 1e6, 3),
                 "standalone_test_acc": round(100 * alone_correct.mean(), 2),
                 "supernet_test_acc": round(100 * sliced_correct.mean(), 2),
                 "difference_points": round(diff, 2), "difference_se": round(se, 2),
                 "standalone_train_seconds": status[run.name].get("wall_s"), "arch": arch.to_dict()}
        children.append(entry)
        rows.append([label, entry["mmacs"], entry["standalone_test_acc"], entry["supernet_test_acc"],
                     f"{diff:+.2f} ± {se:.2f}"])
    data = {"supernet": args.supernet, "profile": profile_name, "epochs": epochs, "children": children,
            "wall_seconds": round(wall, 1), "machine": machine()}
    md = ("# Supernet children vs the same architectures trained alone (BigNAS Table 3)\n\n"
          f"Supernet `{args.supernet}`; profile `{profile_name}`, {epochs} epochs for both, same schedule and "
          "augmentation; test set (10k), BN calibrated, paired per image (± one standard error).\n\n")
    md += markdown_table(["child", "MMACs", "trained alone %", "sliced from supernet %", "difference"], rows)
    write_results(args.name, data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
