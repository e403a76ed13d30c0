"""BigNAS Table 3 on our data: the biggest and smallest children trained alone for the same epochs
vs sliced out of the supernet without retraining.

    python -m benchmarks.supernet_vs_standalone --supernet bundles/default/supernet.pt --profile default

The two standalone runs use the same trainer, schedule, augmentation and regularisation as the
supernet (only the sandwich is replaced by the one child), and run side by side with one thread each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.results_io import machine, markdown_table, write_results
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.space import biggest, count_macs, smallest
from nag.supernet.evaluate import child_accuracy
from nag.supernet.io import load_supernet

MODES = {"biggest": "biggest-only", "smallest": "smallest-only"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--profile", default="default")
    p.add_argument("--work", type=Path, default=Path("runs/standalone"))
    p.add_argument("--epochs", type=int, help="override the profile's epochs (for a quick look)")
    args = p.parse_args(argv)
    try:
        trained = load_supernet(args.supernet)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    space = trained.supernet.space
    started = time.perf_counter()
    procs = {}
    for name, mode in MODES.items():
        cmd = [sys.executable, "-m", "nag.training.train_supernet", "--profile", args.profile, "--train-mode", mode,
               "--threads", "1", "--out", str(args.work / name), "--resume"]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        log = (args.work / f"{name}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        procs[name] = (subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT), log)
    for name, (proc, log) in procs.items():
        if proc.wait() != 0:
            print(f"error: standalone training of the {name} child failed; see {log}", file=sys.stderr)
            return 1
    wall = time.perf_counter() - started
    test_set = load_test_set(DataSource(), space.input.size, space.input.channels)
    rows, data = [], {}
    for name, arch in (("biggest", biggest(space)), ("smallest", smallest(space))):
        standalone = json.loads((args.work / name / "summary.json").read_text())
        alone = standalone[f"test_acc_{name}"]
        sliced = round(child_accuracy(trained.supernet, arch, trained.calibration_float, test_set), 2)
        data[name] = {"mmacs": round(count_macs(arch, space) / 1e6, 3), "standalone_test_acc": alone,
                      "supernet_test_acc": sliced, "difference_points": round(sliced - alone, 2),
                      "standalone_train_seconds": standalone["train_seconds_this_run"]}
        rows.append([name, data[name]["mmacs"], alone, sliced, data[name]["difference_points"]])
    data.update({"supernet": args.supernet, "profile": args.profile,
                 "epochs": args.epochs or trained.meta.get("config", {}).get("epochs"),
                 "wall_seconds": round(wall, 1), "machine": machine()})
    md = ("# Supernet children vs the same architectures trained alone (BigNAS Table 3)\n\n"
          f"Profile `{args.profile}`, same epochs, schedule and augmentation; test set (10k), BN calibrated. "
          "Standard error of one accuracy is about 0.3 points.\n\n")
    md += markdown_table(["child", "MMACs", "trained alone %", "sliced from supernet %", "difference"], rows)
    write_results("supernet_vs_standalone", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
