"""The markdown report of `benchmarks.portable_graphs`, from its results JSON."""

from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.portable_ort import EPS, LEVELS
from benchmarks.results_io import markdown_table


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
