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
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import machine, markdown_table, write_results
from nag.bundle import load_bundle
from nag.data import DataSource, load_test_set
from nag.errors import NagError
from nag.export import INPUT_NAME, GraphForm
from nag.policy.inference import generate
from nag.policy.materialize import export_child
from nag.space import Architecture, biggest, count_macs, smallest

LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")
OPENCV_BATCH = 500


def session(model: bytes, level: str = "ORT_ENABLE_ALL", threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def ort_logits(model: bytes, images: np.ndarray, level: str = "ORT_ENABLE_ALL", batch: int = 1000) -> np.ndarray:
    s = session(model, level, threads=os.cpu_count() or 1)
    shape = s.get_inputs()[0].shape
    if shape[0] == 1:  # the mobile form: a static batch of one
        batch = 1
    return np.concatenate([s.run(None, {INPUT_NAME: images[i : i + batch]})[0] for i in range(0, len(images), batch)])


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


# --- (a) OpenCV, in a subprocess per installation --------------------------------------------------------------


def opencv_worker(folder: Path) -> None:
    """Runs every `*.onnx` of `folder` on `images.npy` with OpenCV DNN; writes `<name>.npy` logits or
    `<name>.error`, and `version.txt`."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    (folder / "version.txt").write_text(cv2.__version__)
    images = np.load(folder / "images.npy")
    for path in sorted(folder.glob("*.onnx")):
        try:
            net = cv2.dnn.readNetFromONNX(str(path))
            out = []
            for i in range(0, len(images), OPENCV_BATCH):
                net.setInput(images[i : i + OPENCV_BATCH])
                out.append(np.array(net.forward()))
            np.save(folder / f"{path.stem}.npy", np.concatenate(out))
        except cv2.error as exc:
            (folder / f"{path.stem}.error").write_text(_error_summary(str(exc)))


def _error_summary(message: str) -> str:
    """cv2.error's nested, multi-line message on one line, without source paths and function names."""
    text = " ".join(ln.lstrip("> ").strip() for ln in message.splitlines() if ln.lstrip("> ").strip())
    text = re.sub(r" in function '[^']*'", "", re.sub(r"\S+\.(cpp|hpp):\d+: ", "", text))
    return text or "cv2.error"


def run_opencv(models: dict[str, bytes], images: np.ndarray, extra_path: str | None) -> tuple[str, dict[str, Any]]:
    """(OpenCV version, name -> logits or the error message) from a subprocess, `extra_path` first on its path."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        np.save(folder / "images.npy", images)
        for name, data in models.items():
            (folder / f"{name}.onnx").write_bytes(data)
        env = dict(os.environ)
        if extra_path:
            env["PYTHONPATH"] = os.pathsep.join([extra_path, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        subprocess.run([sys.executable, "-m", "benchmarks.portable_graphs", "--opencv-worker", str(folder)],
                       env=env, check=True, cwd=Path(__file__).resolve().parents[1])
        out: dict[str, Any] = {}
        for name in models:
            error = folder / f"{name}.error"
            out[name] = error.read_text() if error.exists() else np.load(folder / f"{name}.npy")
        return (folder / "version.txt").read_text(), out


# --- (b) latency -------------------------------------------------------------------------------------------------


def latency(models: dict[GraphForm, bytes], image: np.ndarray, rounds: int, runs: int, seed: int
            ) -> dict[str, Any]:
    sessions = {f: session(m) for f, m in models.items()}
    feed = {INPUT_NAME: image}
    for s in sessions.values():
        for _ in range(20):
            s.run(None, feed)
    times: dict[GraphForm, list[list[float]]] = {f: [] for f in sessions}
    rng = random.Random(seed)
    order = list(sessions)
    for _ in range(rounds):
        rng.shuffle(order)
        for f in order:
            s = sessions[f]
            for _ in range(2):  # the previous session evicted this one's weights from the cache
                s.run(None, feed)
            round_times = []
            for _ in range(runs):
                start = time.perf_counter_ns()
                s.run(None, feed)
                round_times.append((time.perf_counter_ns() - start) / 1e3)
            times[f].append(round_times)
    medians = {f: float(np.median(np.concatenate(t))) for f, t in times.items()}
    round_medians = {f: np.array([np.median(r) for r in t]) for f, t in times.items()}
    base = GraphForm.STANDARD
    out: dict[str, Any] = {"median_us": {f.value: medians[f] for f in sessions}, "ratio": {}, "round_ratio_p25_p75": {}}
    for f in sessions:
        per_round = round_medians[f] / round_medians[base]
        out["ratio"][f.value] = medians[f] / medians[base]
        out["round_ratio_p25_p75"][f.value] = [float(np.percentile(per_round, 25)), float(np.percentile(per_round, 75))]
    return out


# --- (d) mobile usability checker --------------------------------------------------------------------------------

_PARTITIONS = re.compile(r"(\d+) partitions with a total of (\d+)/(\d+) nodes can be handled by the (.+?) EP\.")
EPS = ("NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram")


def mobile_usability(model: bytes) -> dict[str, dict[str, int]]:
    """EP -> partitions, nodes taken and nodes in all, as the model is (the checker's first verdict per EP)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model)
        run = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(path)],
                             capture_output=True, text=True, check=True)
    found: dict[str, dict[str, int]] = {}
    for m in _PARTITIONS.finditer(run.stdout + run.stderr):
        found.setdefault(m.group(4), {"partitions": int(m.group(1)), "taken": int(m.group(2)),
                                      "nodes": int(m.group(3))})
    return found


# --- main ----------------------------------------------------------------------------------------------------------


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


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def markdown(data: dict[str, Any]) -> str:
    records = data["children"]
    versions = list(records[0]["opencv"])
    md = (f"# Graph forms: OpenCV DNN, ONNX Runtime latency and optimisation levels, bundle `{data['bundle_id']}`\n\n"
          "Produced by `python -m benchmarks.portable_graphs`. Children exported by `export_child` in each "
          "`GraphForm`; reference: the standard form in ONNX Runtime (ORT_ENABLE_ALL) on all "
          f"{data['test_images']} Fashion-MNIST test images.\n\n## (a) OpenCV DNN vs ONNX Runtime, top-1 agreement\n\n")
    headers = ["child", "res", "MMACs", "ORT test acc"]
    for v in versions:
        headers += [f"OpenCV {v} standard", f"OpenCV {v} portable"]
    rows = []
    for r in records:
        row = [r["child"], r["resolution"], f"{r['mmacs']:.2f}", f"{r['ort_test_acc']:.2f}%"]
        for v in versions:
            for form in ("standard", "portable"):
                o = r["opencv"][v][form]
                row.append("import/run fails" if "error" in o else
                           f"{_pct(o['agreement'])} (acc {o['test_acc']:.2f}%)")
        rows.append(row)
    md += markdown_table(headers, rows)
    errors = sorted({f"OpenCV {v}, {form}: {r['opencv'][v][form]['error']}" for r in records for v in versions
                     for form in ("standard", "portable") if "error" in r["opencv"][v][form]})
    if errors:
        md += "\nFailures:\n\n" + "".join(f"- {e}\n" for e in errors)
    s = data["latency_settings"]
    md += (f"\n## (b) ONNX Runtime latency over the standard form\n\n{s['threads']} intra-op thread, batch "
           f"{s['batch']}, {s['level']}; {s['rounds']} interleaved rounds × {s['runs_per_round']} timed runs per "
           "form. Ratio of the medians over all runs; in brackets the 25th-75th percentile of the per-round "
           "ratios.\n\n")
    rows = []
    for r in records:
        lat = r["latency"]
        rows.append([r["child"], r["resolution"], f"{lat['median_us']['standard']:.1f}",
                     *(f"{lat['ratio'][f]:.3f} [{lat['round_ratio_p25_p75'][f][0]:.3f}, "
                       f"{lat['round_ratio_p25_p75'][f][1]:.3f}]" for f in ("portable", "mobile"))])
    gm = {f: float(np.exp(np.mean([np.log(r["latency"]["ratio"][f]) for r in records])))
          for f in ("portable", "mobile")}
    rows.append(["geometric mean", "", "", f"{gm['portable']:.3f}", f"{gm['mobile']:.3f}"])
    md += markdown_table(["child", "res", "standard median (µs)", "portable / standard", "mobile / standard"], rows)
    md += ("\n## (c) ONNX Runtime optimisation levels: top-1 agreement with the reference (largest logit "
           "difference)\n\n")
    rows = []
    for r in records:
        for form, levels in r["levels"].items():
            cells = [f"{_pct(levels[lv]['agreement'])} ({levels[lv]['max_abs_logit_diff']:.1e})" for lv in LEVELS]
            rows.append([r["child"], form, next(iter(levels.values()))["images"], *cells])
    md += markdown_table(["child", "form", "images", *LEVELS], rows)
    md += ("\n## (d) ONNX Runtime mobile usability checker: nodes taken as the model is (partitions)\n\n"
           "`python -m onnxruntime.tools.check_onnx_model_mobile_usability`, which optimises to BASIC first.\n\n")
    rows = []
    for r in records:
        for form, eps in r["mobile_usability"].items():
            rows.append([r["child"], form, *(f"{eps[ep]['taken']}/{eps[ep]['nodes']} ({eps[ep]['partitions']})"
                                             for ep in EPS)])
    md += markdown_table(["child", "form", *EPS], rows)
    return md


if __name__ == "__main__":
    sys.exit(main())
