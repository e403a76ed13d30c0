"""Latency cost model of one device: measurement noise, predictor accuracy and predictor throughput.

    python -m benchmarks.measure_latency --bundle bundles/default --device cpu

1. Noise: `--repeat-archs` of the device's held-out architectures measured 3 times in one run (each
   pass with the drift guard of `measure_latencies`); reports how far each pass's median lies from
   the architecture's mean over the passes.
2. Predictor: held-out predicted vs measured (from `nag profile-device`), as a table and a PNG.
3. Throughput: architectures per second of `Device.predict` on batches of 1, 100 and 1,000.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

import numpy as np

from benchmarks.results_io import RESULTS, machine, markdown_table, write_results
from nag.cost import load_device, measure_latencies
from nag.cost.store import PREDICTOR_FILE, device_dir
from nag.errors import NagError
from nag.space import Architecture, load_space, sample_uniform


def noise(archs: list[Architecture], space: Any, device: Any, passes: int) -> dict[str, Any]:
    medians = np.array([[m.median for m in measure_latencies(archs, space, device.profile, seed=p)]
                        for p in range(passes)])
    dev = np.abs(medians / medians.mean(axis=0) - 1)
    return {"archs": len(archs), "passes": passes, "mean_abs_dev": float(dev.mean()),
            "p95_abs_dev": float(np.percentile(dev, 95)), "max_abs_dev": float(dev.max()),
            "pass_ratio_range": [float((medians[i] / medians[0]).mean()) for i in range(passes)]}


def throughput(device: Any, space: Any) -> list[dict[str, float]]:
    rng = random.Random(0)
    pool = [sample_uniform(space, rng) for _ in range(1000)]
    rows = []
    for batch in (1, 100, 1000):
        archs = pool[:batch]
        reps = max(3, 2000 // batch)
        device.predict(archs)
        start = time.perf_counter()
        for _ in range(reps):
            device.predict(archs)
        per_batch = (time.perf_counter() - start) / reps
        rows.append({"batch": batch, "ms_per_batch": 1e3 * per_batch, "us_per_arch": 1e6 * per_batch / batch,
                     "archs_per_s": batch / per_batch})
    return rows


def plot(predicted: list[float], measured: list[float], unit: str, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    lo, hi = min(measured) * 0.9, max(measured) * 1.1
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="exact")
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="±10%")
    ax.scatter(measured, predicted, s=12)
    ax.set_xlabel(f"measured median latency ({unit})")
    ax.set_ylabel(f"predicted latency ({unit})")
    ax.set_title(f"latency predictor, device {device}, held-out architectures")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"latency_predictor_{device}.png", dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat-archs", type=int, default=40)
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args(argv)
    try:
        space = load_space()
        device = load_device(args.bundle, args.device, space)
        import json

        fit = json.loads((device_dir(args.bundle, args.device) / PREDICTOR_FILE).read_text())["metrics"]
        from nag.cost.profiling import fit_device
        from nag.cost.store import MEASUREMENTS_FILE, read_measurements

        measurements = read_measurements(device_dir(args.bundle, args.device) / MEASUREMENTS_FILE)
        report = fit_device(measurements, space, device.profile)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    held = report.holdout
    test_ids = held["test_arch_ids"]
    by_id = {m.arch_id: m for m in measurements}
    repeat = [Architecture.from_json(by_id[i].arch_json, space) for i in test_ids[: args.repeat_archs]]
    print(f"measuring {len(repeat)} held-out architectures {args.passes} times ...", flush=True)
    noise_stats = noise(repeat, space, device, args.passes)
    speed = throughput(device, space)
    plot(held["test_predicted"], held["test_measured"], device.unit, args.device)
    pred, base = held["predictor"], held["macs_linear_baseline"]
    data = {"device": device.profile.to_dict(), "machine": machine(), "holdout": pred,
            "holdout_macs_linear_baseline": base, "stored_fit_metrics": fit, "noise": noise_stats,
            "throughput": speed, "measurements": len(measurements), "unstable": report.unstable,
            "fit_on_unstable": report.fit_on_unstable}
    rows = [[name, m["n"], f"{100 * m['within_10pct']:.1f}%", f"{100 * m['within_5pct']:.1f}%",
             f"{100 * m['mean_abs_rel_error']:.1f}%", f"{100 * m['max_abs_rel_error']:.1f}%",
             f"{m['rmse']:.4f}", f"{m['kendall_tau']:.3f}"]
            for name, m in (("ridge on layer features (shipped)", pred), ("linear in MACs (baseline)", base))]
    md = f"# Latency cost model, device `{args.device}`\n\n"
    fate = "kept (too few were stable)" if report.fit_on_unstable else "left out"
    md += f"{len(measurements)} architectures measured, {report.unstable} flagged unstable and {fate}.\n\n"
    md += "## Held-out prediction accuracy\n\n" + markdown_table(
        ["model", "n", "within ±10%", "within ±5%", "mean |error|", "max |error|", f"RMSE ({device.unit})",
         "Kendall tau"], rows)
    md += (f"\n![predicted vs measured](latency_predictor_{args.device}.png)\n\n## Measurement noise\n\n"
           f"{noise_stats['archs']} architectures measured {noise_stats['passes']} times in one run: "
           f"|pass median / mean − 1| mean {100 * noise_stats['mean_abs_dev']:.2f}%, "
           f"p95 {100 * noise_stats['p95_abs_dev']:.2f}%, max {100 * noise_stats['max_abs_dev']:.2f}%.\n\n")
    md += "## Predictor throughput\n\n" + markdown_table(
        ["batch", "ms per batch", "µs per architecture", "architectures/s"],
        [[r["batch"], f"{r['ms_per_batch']:.3f}", f"{r['us_per_arch']:.1f}", f"{r['archs_per_s']:.0f}"]
         for r in speed])
    write_results(f"latency_{args.device}", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
