"""How much specialising a child closes its gap to the same architecture trained alone, per fine-tuning length.

    python -m benchmarks.specialise_study [--supernet bundles/default/supernet.pt] [--epochs 2 --epochs 4]

The children are those of a `supernet_vs_standalone` results file (`--children`; default: the 20 small
random children of the committed bundle, 1.3-3.3 MMACs, with their standalone accuracies trained by the
same trainer for 12 epochs). Each is fine-tuned from its slice of `--supernet` by
`nag.pipeline.train_supernet --arch A --specialise-from S --epochs E` (distilling from the supernet's
biggest child, labels at the profile's student weight), one or two at a time; finished runs in `--work`
are reused. Scored on the 10k test images (BN calibrated): the specialised child against its slice (paired
per image) and against the recorded standalone accuracy (unpaired: about ±0.4 points).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.recipe_study import paired_difference
from benchmarks.results_io import RESULTS, machine, markdown_table, write_results
from nag.bundle.bundle import SUPERNET_FILE
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.export.evaluate import child_correct
from nag.pipeline.training_runs import TrainingRun, run_all
from nag.space import Architecture
from nag.supernet.io import load_supernet

DEFAULT_CHILDREN = RESULTS / "supernet_vs_standalone_frontier_below_smallest.json"


def recorded_children(path: Path, names: list[str], space: object) -> list[dict]:
    """The children of a `supernet_vs_standalone` results file with a standalone accuracy."""
    try:
        rows = [r for r in json.loads(path.read_text())["children"] if r.get("standalone_test_acc") is not None]
    except (OSError, ValueError, KeyError) as exc:
        raise NagError(f"{path} is no supernet_vs_standalone results file: {exc}") from exc
    if names:
        rows = [r for r in rows if r["label"] in names]
    return [{**r, "architecture": Architecture.from_dict(r["arch"], space)} for r in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--supernet", default="bundles/default/supernet.pt")
    p.add_argument("--children", type=Path, default=DEFAULT_CHILDREN)
    p.add_argument("--child", action="append", default=[], help="only this label (repeatable)")
    p.add_argument("--epochs", type=int, action="append", help="fine-tuning epochs (repeatable; default 3)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate of the fine-tuning")
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--work", type=Path, default=Path("runs/specialise_study"))
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="specialise_study")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    epochs_list = args.epochs or [3]
    try:
        trained = load_supernet(args.supernet)
        space = trained.supernet.space
        profile = str(trained.meta.get("config", {}).get("profile", "default"))
        children = recorded_children(args.children, args.child, space)
        if not children:
            raise NagError(f"no child with a standalone accuracy in {args.children}")
        runs = {(c["label"], e): TrainingRun(
            f"{c['arch_id']}-spec-e{e}-lr{args.lr:g}",
            ("--profile", profile, "--epochs", str(e), "--arch", c["architecture"].to_json(), "--specialise-from",
             str(args.supernet), "--lr", str(args.lr), "--warmup-steps", str(args.warmup_steps),
             "--teacher-targets", str(args.work.resolve() / "teacher_targets.pt")))
            for e in epochs_list for c in children}
        # The first run computes the teacher's predictions that the others read.
        status = run_all(list(runs.values()), args.work, args.parallel, args.threads, first_alone=True)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    test = load_test_set(DataSource(), space.input.size, space.input.channels)
    rows = []
    for c in children:
        sliced = child_correct(trained.supernet, c["architecture"], trained.calibration_float, test).astype(float)
        for e in epochs_list:
            run = runs[(c["label"], e)]
            if status[run.name]["status"] not in ("finished", "done before"):
                continue
            spec = load_supernet(args.work / run.name / SUPERNET_FILE)
            correct = child_correct(spec.supernet, c["architecture"], spec.calibration_float, test).astype(float)
            gain, se = paired_difference(correct[None], sliced[None])
            acc = round(100 * float(correct.mean()), 2)
            rows.append({"label": c["label"], "arch_id": c["arch_id"], "mmacs": c["mmacs"], "epochs": e,
                         "alone_acc": c["standalone_test_acc"], "slice_acc": round(100 * float(sliced.mean()), 2),
                         "specialised_acc": acc, "gain_over_slice": round(gain, 2), "gain_se": round(se, 2),
                         "specialised_minus_alone": round(acc - c["standalone_test_acc"], 2),
                         "slice_minus_alone": round(100 * float(sliced.mean()) - c["standalone_test_acc"], 2),
                         "wall_s": status[run.name].get("wall_s")})
    summary = {str(e): {"children": len([r for r in rows if r["epochs"] == e]),
                        "mean_specialised_minus_alone": round(float(np.mean(
                            [r["specialised_minus_alone"] for r in rows if r["epochs"] == e] or [np.nan])), 2),
                        "mean_slice_minus_alone": round(float(np.mean(
                            [r["slice_minus_alone"] for r in rows if r["epochs"] == e] or [np.nan])), 2)}
               for e in epochs_list}
    data = {"supernet": args.supernet, "lr": args.lr, "warmup_steps": args.warmup_steps, "rows": rows,
            "summary": summary, "machine": machine()}
    table = markdown_table(["child", "MMACs", "epochs", "alone %", "slice %", "specialised %", "gain over slice",
                            "specialised − alone", "wall s"],
                           [[r["label"], r["mmacs"], r["epochs"], r["alone_acc"], r["slice_acc"], r["specialised_acc"],
                             f"{r['gain_over_slice']:+.2f} ± {r['gain_se']:.2f}",
                             f"{r['specialised_minus_alone']:+.2f}", r["wall_s"]] for r in rows])
    md = "\n\n".join([
        "# Specialising small children: fine-tuned from the slice, distilled from the biggest child",
        f"Supernet `{args.supernet}`; peak LR {args.lr:g}, {args.warmup_steps} warm-up steps; the standalone "
        f"accuracies from `{args.children.name}` (12 epochs, same trainer).", table,
        "Mean specialised − alone per fine-tuning length: " + "; ".join(
            f"{e} epochs: {s['mean_specialised_minus_alone']:+.2f} over {s['children']} children (the slices: "
            f"{s['mean_slice_minus_alone']:+.2f})" for e, s in summary.items()) + "."])
    write_results(args.name, data, md + "\n", args.out)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
