"""Would re-ranking the serving frontier with the specialised children serve users better? Per budget, the model
the server sends (from the frontier of slices; a specialised member is sent with its own weights) against the
one a re-ranked frontier would send: each specialised member's expected accuracy raised by its validation gain
over its slice (both measured by the specialise stage), and the members a cheaper one then matches dropped.
Scored on the 10k test images.

    python -m benchmarks.specialised_frontier [--bundle bundles/default]

Budgets: every member cost of each device's serving frontier (where its picks change). Per budget both picks,
their MMACs and test accuracy in ONNX Runtime, and the paired difference (re-ranked − before) with its standard
error over per-image outcomes. Writes benchmarks/results/specialised_frontier.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from benchmarks.results_io import machine, markdown_table, write_results
from benchmarks.stored_bn import paired
from nag.bundle.bundle import load_bundle
from nag.bundle.specialised import SpecialisedChild
from nag.data import DataSource, load_test_set
from nag.export.evaluate import onnx_predictions
from nag.policy.frontier import FrontierEntry, ServingFrontier, pareto_front, serving_frontier
from nag.policy.materialize import export_child
from nag.space import count_macs


def re_ranked(frontier: ServingFrontier, specialised: Mapping[str, SpecialisedChild]) -> ServingFrontier:
    """`frontier` with each specialised member's expected accuracy raised by its validation gain, re-pruned."""
    entries = []
    for e in frontier.entries:
        child = specialised.get(e.arch.arch_id)
        gain = child.info["specialised_val_acc"] - child.info["slice_val_acc"] if child is not None else 0.0
        entries.append(replace(e, expected_accuracy=e.expected_accuracy + gain))
    return replace(frontier, entries=pareto_front(entries))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--name", default="specialised_frontier")
    args = p.parse_args(argv)
    bundle = load_bundle(args.bundle)
    if not bundle.specialised:
        print(f"error: bundle {args.bundle} holds no specialised children", file=sys.stderr)
        return 2
    space = bundle.space
    test = load_test_set(DataSource(), space.input.size, space.input.channels)
    labels = test.labels.numpy()
    correct: dict[str, np.ndarray] = {}

    def outcomes(e: FrontierEntry) -> np.ndarray:
        if e.arch.arch_id not in correct:
            correct[e.arch.arch_id] = onnx_predictions(export_child(bundle, e.arch, bn=e.bn).onnx, test) == labels
        return correct[e.arch.arch_id]

    rows, data, summary = [], [], {}
    for name, models in sorted(bundle.devices.items()):
        before = serving_frontier(bundle, models)
        after = re_ranked(before, bundle.specialised)
        diffs, where_changed = [], []
        for e in before.entries:
            new = after.best_within(e.cost) or after.entries[0]  # the cheapest member is never dropped
            diff, se = paired(outcomes(e), outcomes(new))
            diffs.append(diff)
            if new.arch.arch_id != e.arch.arch_id:
                where_changed.append(diff)
            row = {"device": name, "budget": e.cost, "before": e.arch.arch_id, "after": new.arch.arch_id,
                   "before_mmacs": round(count_macs(e.arch, space) / 1e6, 3),
                   "after_mmacs": round(count_macs(new.arch, space) / 1e6, 3),
                   "before_specialised": e.arch.arch_id in bundle.specialised,
                   "after_specialised": new.arch.arch_id in bundle.specialised,
                   "before_acc": round(100 * float(outcomes(e).mean()), 2),
                   "after_acc": round(100 * float(outcomes(new).mean()), 2),
                   "difference_points": round(diff, 2), "difference_se": round(se, 2)}
            data.append(row)
            if row["before"] != row["after"]:
                rows.append([name, f"{e.cost:.4g}", f"`{row['before']}` ({row['before_mmacs']:.2f})",
                             f"`{row['after']}` ({row['after_mmacs']:.2f}){' S' if row['after_specialised'] else ''}",
                             f"{row['before_acc']:.2f}", f"{row['after_acc']:.2f}", f"{diff:+.2f} ± {se:.2f}"])
        summary[name] = {"budgets": len(before.entries), "changed": len(where_changed),
                         "members_before": len(before.entries), "members_after": len(after.entries),
                         "mean_difference_points": round(float(np.mean(diffs)), 3),
                         "mean_difference_where_changed": round(float(np.mean(where_changed)), 3)
                         if where_changed else 0.0}
    md = (f"# Re-ranking the serving frontier with specialised children\n\nBundle `{bundle.bundle_id}`: at every "
          "member cost of each device's serving frontier, the model served now (before) against the one a re-ranked "
          "frontier would serve (after; S: specialised), test accuracy on the 10k test images, paired per image.\n\n")
    md += markdown_table(["device", "members before → after", "budgets", "picks changed",
                          "mean difference (all budgets)", "mean where changed"],
                         [[n, f"{s['members_before']} → {s['members_after']}", s["budgets"], s["changed"],
                           f"{s['mean_difference_points']:+.3f}", f"{s['mean_difference_where_changed']:+.3f}"]
                          for n, s in summary.items()])
    md += "\n" + markdown_table(["device", "budget", "before (MMACs)", "after (MMACs)", "before %", "after %",
                                 "after − before"], rows)
    write_results(args.name, {"bundle_id": bundle.bundle_id, "summary": summary, "rows": data,
                              "machine": machine()}, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
