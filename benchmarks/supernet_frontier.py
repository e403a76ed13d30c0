"""Accuracy vs MACs of random children sliced from a trained supernet (BN-calibrated, test set).

Besides 50 random children it scores the smallest and the biggest child with one dimension (resolution,
widths, depths, kernels or expansions) taken from the other end of the space: whether a child one
choice away from the smallest beats it shows how far the children trained at every step are ahead of
their neighbours.

    python -m benchmarks.supernet_frontier --supernet bundles/default/supernet.pt --children 50
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from tqdm import tqdm

from benchmarks.results_io import RESULTS, machine, markdown_table, spearman, write_results
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.export.evaluate import child_accuracy
from nag.space import DIMENSIONS, biggest, count_macs, count_params, sample_uniform, smallest, with_dimension_of
from nag.supernet.io import load_supernet


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--supernet", required=True)
    p.add_argument("--children", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="supernet_frontier")
    args = p.parse_args(argv)
    try:
        trained = load_supernet(args.supernet)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    space = trained.supernet.space
    test_set = load_test_set(DataSource(), space.input.size, space.input.channels)
    rng = random.Random(args.seed)
    low, high = smallest(space), biggest(space)
    archs = [("smallest", low), ("biggest", high)]
    archs += [(f"random{i}", sample_uniform(space, rng)) for i in range(args.children)]
    for dim in DIMENSIONS:
        archs.append((f"smallest with the biggest's {dim}", with_dimension_of(low, high, dim, space)))
        archs.append((f"biggest with the smallest's {dim}", with_dimension_of(high, low, dim, space)))
    rows = []
    started = time.perf_counter()
    for name, arch in tqdm(archs, desc="children"):
        acc = child_accuracy(trained.supernet, arch, trained.calibration_float, test_set)
        rows.append({"name": name, "arch_id": arch.arch_id, "resolution": arch.resolution,
                     "mmacs": round(count_macs(arch, space) / 1e6, 3),
                     "kparams": round(count_params(arch, space) / 1e3, 1), "test_acc": round(acc, 2),
                     "arch": arch.to_dict()})
    first_neighbour = 2 + args.children
    random_rows, neighbour_rows = rows[2:first_neighbour], rows[first_neighbour:]
    rho = spearman([r["mmacs"] for r in random_rows], [r["test_acc"] for r in random_rows])
    big, small = rows[1]["test_acc"], rows[0]["test_acc"]
    summary = {
        "supernet": args.supernet, "supernet_meta": trained.meta.get("summary"), "children": args.children,
        "biggest_acc": big, "smallest_acc": small, "spread_points": round(big - small, 2),
        "spearman_acc_vs_macs": round(rho, 3),
        "below_smallest": sum(r["test_acc"] < small for r in random_rows),
        "smallest_neighbours_below_smallest": sum(r["test_acc"] < small for r in neighbour_rows
                                                  if r["name"].startswith("smallest")),
        "seconds": round(time.perf_counter() - started, 1), "machine": machine(),
    }
    md = (f"# Supernet children: accuracy vs MACs\n\nSupernet `{args.supernet}`; test set (10k), BN calibrated "
          f"per child on the stored calibration images.\n\nBiggest {big}%, smallest {small}%, spread "
          f"{summary['spread_points']} points; Spearman(acc, MACs) over {args.children} random children = "
          f"{summary['spearman_acc_vs_macs']}; random children below the smallest: {summary['below_smallest']}.\n\n")
    md += markdown_table(["child", "id", "resolution", "MMACs", "kparams", "test acc %"],
                         [[r["name"], r["arch_id"], r["resolution"], r["mmacs"], r["kparams"], r["test_acc"]]
                          for r in sorted(rows[:first_neighbour], key=lambda r: r["mmacs"])])
    md += ("\n\n## One dimension from the other end of the space\n\nThe smallest child with one dimension of the "
           "biggest, and the other way round; the difference is to the unchanged child.\n\n")
    md += markdown_table(["child", "MMACs", "test acc %", "difference"],
                         [[r["name"], r["mmacs"], r["test_acc"],
                           round(r["test_acc"] - (small if r["name"].startswith("smallest") else big), 2)]
                          for r in neighbour_rows])
    write_results(args.name, {"summary": summary, "children": rows}, md)
    _plot(rows, RESULTS / f"{args.name}.png", summary)
    print(md.split("\n\n")[2])
    return 0


def _plot(rows: list[dict], path, summary: dict) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    rand = [r for r in rows if r["name"].startswith("random")]
    ax.scatter([r["mmacs"] for r in rand], [r["test_acc"] for r in rand], s=18, label="random children")
    for r, color in ((rows[0], "tab:red"), (rows[1], "tab:green")):
        ax.scatter([r["mmacs"]], [r["test_acc"]], s=60, color=color, marker="D", label=r["name"])
    ax.set_xscale("log")
    ax.set_xlabel("MACs (millions, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Supernet children (Spearman {summary['spearman_acc_vs_macs']})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
