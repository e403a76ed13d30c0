"""What each serving-frontier member gains from the BN statistics stored in the bundle (calibrated by the
pipeline on all of its calibration images) over the per-request calibration served before (the first 128).

    python -m benchmarks.stored_bn [--bundle bundles/default]

Per device and member: test accuracy of both ONNX models in ONNX Runtime on the 10k test images, their
paired difference and its standard error (per-image outcomes). Writes benchmarks/results/stored_bn.{json,md}.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks.results_io import machine, markdown_table, write_results
from nag.bundle.bundle import load_bundle
from nag.config import SERVING_CALIBRATION_IMAGES
from nag.data import DataSource, load_test_set
from nag.export.evaluate import onnx_predictions
from nag.policy.frontier import serving_frontier
from nag.policy.materialize import export_child


def paired(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean of b - a in points, and its standard error, over per-image 0/1 outcomes."""
    d = b.astype(np.float64) - a.astype(np.float64)
    return 100 * float(d.mean()), 100 * float(d.std(ddof=1) / np.sqrt(len(d)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--name", default="stored_bn")
    args = p.parse_args(argv)
    bundle = load_bundle(args.bundle)
    # The slices' statistics are measured: specialised children carry statistics of their own.
    bundle.specialised = {}
    space = bundle.space
    test = load_test_set(DataSource(), space.input.size, space.input.channels)
    labels = test.labels.numpy()
    correct: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # per architecture: (128 images, stored)
    rows, result_rows, summary = [], [], {}
    for name, models in sorted(bundle.devices.items()):
        if models.stored is None:
            print(f"device {name}: no current stored frontier; skipped", file=sys.stderr)
            continue
        frontier = serving_frontier(bundle, models)
        lo, hi = frontier.entries[0].cost, frontier.best.cost
        third = lo + (hi - lo) / 3
        gains_cheap = []
        for i, e in enumerate(frontier.entries):
            key = e.arch.arch_id
            if key not in correct:
                before = export_child(bundle, e.arch, SERVING_CALIBRATION_IMAGES).onnx
                after = export_child(bundle, e.arch, bn=e.bn).onnx
                correct[key] = (onnx_predictions(before, test) == labels, onnx_predictions(after, test) == labels)
            a, b = correct[key]
            gain, se = paired(a, b)
            cheap = e.cost <= third
            if cheap:
                gains_cheap.append(gain)
            result_rows.append({"device": name, "member": i, "arch_id": key, "cost": e.cost, "cheap_third": cheap,
                                "acc_128": 100 * float(a.mean()), "acc_stored": 100 * float(b.mean()),
                                "gain_points": gain, "se_points": se})
            rows.append([name, i, key, f"{e.cost:.4g} {models.device.unit}", "yes" if cheap else "",
                         f"{100 * a.mean():.2f}", f"{100 * b.mean():.2f}", f"{gain:+.2f} ± {se:.2f}"])
            print(f"{name} member {i} ({e.cost:.4g} {models.device.unit}): {100 * a.mean():.2f} -> "
                  f"{100 * b.mean():.2f} ({gain:+.2f} ± {se:.2f})", flush=True)
        summary[name] = {"members": len(frontier.entries), "cheap_members": len(gains_cheap),
                         "mean_gain_cheap_third": float(np.mean(gains_cheap)) if gains_cheap else None,
                         "mean_gain_all": float(np.mean([r["gain_points"] for r in result_rows
                                                         if r["device"] == name]))}
    images = {n: m.stored.calibration_images for n, m in bundle.devices.items() if m.stored}
    text = [f"# Stored BN statistics vs per-request calibration (bundle `{bundle.bundle_id}`)", "",
            f"Test accuracy (10k images, ONNX Runtime) of each serving-frontier member with BN calibrated on the "
            f"first {SERVING_CALIBRATION_IMAGES} calibration images (as served before) and with the statistics "
            f"stored in the bundle ({images}); gain = stored − {SERVING_CALIBRATION_IMAGES}, paired, ± its "
            "standard error.", ""]
    text += [f"- `{n}`: mean gain {s['mean_gain_cheap_third']:+.2f} points over the {s['cheap_members']} members "
             f"in the cheapest third of the range, {s['mean_gain_all']:+.2f} over all {s['members']}."
             for n, s in summary.items()]
    text += ["", markdown_table(["device", "member", "architecture", "cost", "cheapest third",
                                 f"acc % ({SERVING_CALIBRATION_IMAGES} images)", "acc % (stored)", "gain (points)"],
                                rows)]
    write_results(args.name, {"bundle_id": bundle.bundle_id, "summary": summary, "rows": result_rows,
                              "machine": machine()}, "\n".join(text) + "\n")
    print("\n".join(text[:len(summary) + 5]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
