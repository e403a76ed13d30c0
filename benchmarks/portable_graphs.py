"""Graph forms of served children: OpenCV DNN agreement, ONNX Runtime latency and optimisation levels.

    python -m benchmarks.portable_graphs --bundle bundles/default
    # and a second OpenCV alongside the installed one (here 5.x, installed into a folder of its own):
    pip install --no-deps --target /tmp/cv5 opencv-python-headless==5.0.0.93
    python -m benchmarks.portable_graphs --extra-opencv /tmp/cv5

Five children of the bundle across the cpu device's cost range: the smallest (resolution 16), the
biggest and the picks of `generate(bundle, budget, "cpu", seed=0)` at 25/50/75% of the range, each
exported by `export_child` in every `GraphForm`. Reports:

(a) top-1 agreement of OpenCV DNN (`readNetFromONNX`, setInput/forward, batches of 500) with ONNX
    Runtime's standard form on all 10,000 test images, for the standard and the portable form, per
    OpenCV installation (each runs in a subprocess of its own);
(b) ONNX Runtime latency (1 intra-op thread, batch 1, ORT_ENABLE_ALL) of the portable and the mobile
    form over the standard form: the forms of a child are measured in the same rounds, in shuffled
    order, each round re-warming a session before timing it; the ratio is of the medians over all runs,
    with the spread of the per-round ratios;
(c) top-1 agreement and the largest logit difference at each ONNX Runtime optimisation level against
    the standard form at ORT_ENABLE_ALL: standard and portable on all test images, mobile (batch 1) on
    the first `--mobile-images`;
(d) ONNX Runtime's mobile usability checker on the standard and the mobile form: the nodes NNAPI,
    CoreML NeuralNetwork and CoreML MLProgram take as the model is (no shapes fixed), and in how many
    partitions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.portable_opencv import opencv_worker, run_opencv
from benchmarks.portable_ort import LEVELS, latency, mobile_usability, ort_logits
from benchmarks.portable_report import markdown
from benchmarks.results_io import machine, write_results
from nag.bundle import load_bundle
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.export import GraphForm
from nag.policy.inference import generate
from nag.policy.materialize import export_child
from nag.space import Architecture, biggest, count_macs, smallest


def pick_children(bundle: Any, device: str) -> list[tuple[str, Architecture]]:
    models = bundle.devices[device]
    lo, hi = models.min_cost, models.device.cost_range[1]
    picks = [("smallest", smallest(bundle.space))]
    for share in (0.25, 0.5, 0.75):
        picks.append((f"generate {int(100 * share)}%", generate(bundle, lo + share * (hi - lo), device, seed=0).arch))
    picks.append(("biggest", biggest(bundle.space)))
    if not any(a.resolution == min(bundle.space.resolutions) for _, a in picks):
        raise NagError("no child at the lowest resolution")  # smallest() has it; kept as a guard
    return picks


def agreement(got: np.ndarray, expected: np.ndarray) -> float:
    return float((got.argmax(1) == expected[: len(got)].argmax(1)).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=60, help="latency: interleaved rounds per child")
    p.add_argument("--runs", type=int, default=20, help="latency: timed runs per form and round")
    p.add_argument("--mobile-images", type=int, default=1000, help="(c): test images for the mobile form")
    p.add_argument("--extra-opencv", action="append", default=[], metavar="DIR",
                   help="another OpenCV installation (pip install --target DIR ...) to run alongside")
    p.add_argument("--opencv-worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.opencv_worker:
        opencv_worker(args.opencv_worker)
        return 0
    try:
        bundle = load_bundle(args.bundle)
        if args.device not in bundle.devices:
            raise NagError(f"unknown device {args.device!r}; the bundle has {sorted(bundle.devices)}")
        space = bundle.space
        test = load_test_set(DataSource(), space.input.size, space.input.channels)
        children = pick_children(bundle, args.device)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = test.images.float().div(255.0).numpy()
    labels = test.labels.numpy()
    one = images[:1].copy()
    records = []
    models: dict[str, dict[GraphForm, bytes]] = {}
    for label, arch in children:
        forms = {f: export_child(bundle, arch, form=f).onnx for f in GraphForm}
        models[arch.arch_id] = forms
        expected = ort_logits(forms[GraphForm.STANDARD], images)
        rec: dict[str, Any] = {"child": label, "arch_id": arch.arch_id, "arch_json": arch.to_json(),
                               "resolution": arch.resolution, "mmacs": count_macs(arch, space) / 1e6,
                               "ort_test_acc": float(100 * (expected.argmax(1) == labels).mean()),
                               "levels": {}, "opencv": {}}
        print(f"{label}: {arch.arch_id}, resolution {arch.resolution}, {rec['mmacs']:.2f} MMACs", flush=True)
        for f in GraphForm:
            chosen = images if f is not GraphForm.MOBILE else images[: args.mobile_images]
            rec["levels"][f.value] = {}
            for level in LEVELS:
                got = ort_logits(forms[f], chosen, level)
                rec["levels"][f.value][level] = {"images": len(chosen), "agreement": agreement(got, expected),
                                                 "max_abs_logit_diff": float(np.abs(got - expected[: len(got)]).max())}
        for extra in [None, *args.extra_opencv]:
            version, out = run_opencv({f.value: forms[f] for f in (GraphForm.STANDARD, GraphForm.PORTABLE)},
                                      images, extra)
            rec["opencv"][version] = {
                form: ({"error": r} if isinstance(r, str) else
                       {"agreement": agreement(r, expected), "test_acc": float(100 * (r.argmax(1) == labels).mean()),
                        "max_abs_logit_diff": float(np.abs(r - expected).max())})
                for form, r in out.items()}
        rec["mobile_usability"] = {f.value: mobile_usability(forms[f]) for f in (GraphForm.STANDARD, GraphForm.MOBILE)}
        records.append(rec)
    for rec, seed in zip(records, range(len(records)), strict=True):  # after the rest: nothing else runs now
        print(f"latency: {rec['child']} ...", flush=True)
        rec["latency"] = latency(models[rec["arch_id"]], one, args.rounds, args.runs, seed)
    data = {"bundle_id": bundle.bundle_id, "machine": machine(), "test_images": len(images),
            "latency_settings": {"threads": 1, "batch": 1, "level": "ORT_ENABLE_ALL", "rounds": args.rounds,
                                 "runs_per_round": args.runs},
            "children": records}
    write_results("portable_graphs", data, markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
