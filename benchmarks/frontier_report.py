"""The frontier benchmark's report (`benchmarks.frontier`): Markdown tables, the whole Markdown of a
result, the plot, and `--rejudge` of a saved result."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.frontier_context import GOAL_MARGIN, NOISE_ALLOWANCE, Context, Settings
from benchmarks.frontier_judge import at_profile_speed
from benchmarks.results_io import markdown_table, write_results
from nag.bundle.bundle import Bundle
from nag.config import SERVING_CALIBRATION_IMAGES
from nag.policy.inference import latency_margin


def _cell(row: dict[str, Any], method: str) -> str:
    r = row[method]
    lat = [m for m in r["measured"] if m is not None]
    text = f"{r['test_acc']:.2f}" + (f" ({statistics.mean(lat):.3g})" if lat else "")
    return text if r["feasible"] else text + " ✗"


def accuracy_table(data: dict[str, Any], unit: str, labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    methods = data["methods"]
    rows = [[f"{row['budget']:.4g}"] + [_cell(row, m) for m in methods] for row in data["per_budget"]]
    return markdown_table([f"budget ({unit})"] + [labels.get(m, m) for m in methods], rows)


def summary_table(data: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    labels = labels or {}
    rows = []
    for m in data["methods"]:
        s = data["summary"][m]
        rows.append([labels.get(m, m), s["seeds"], f"{s['mean_test_acc']:.2f}", f"{100 * s['feasible_share']:.0f}%",
                     "-" if s["mean_regret"] is None else f"{s['mean_regret']:.2f}", f"{s['hypervolume']:.3f}",
                     f"{s['evaluations_per_budget']:.0f}", f"{s['seconds_per_budget_median']:.3g}"])
    return markdown_table(["method", "seeds", "mean test acc %", "feasible (measured ≤ B×1.05)", "mean regret (points)",
                           "hypervolume", "supernet/predictor evals per budget", "seconds per budget (median)"], rows)


def paired_table(data: dict[str, Any], reference: str = "nag") -> str:
    paired = data[f"paired_{reference}_minus"]
    if not paired:
        return ""
    methods = list(paired)
    rows = []
    for i, b in enumerate(data["budgets"]):
        rows.append([f"{b:.4g}"] + [f"{p[i]['diff']:+.2f} [{p[i]['low']:+.2f}, {p[i]['high']:+.2f}] {p[i]['verdict']}"
                                    for p in (paired[m] for m in methods)])
    return markdown_table(["budget"] + [f"{reference} − {m}" for m in methods], rows)



def at_profile_speed_markdown(data: dict[str, Any]) -> str:
    rows = [[m, f"{v['feasible_share']:.0%}", ", ".join(f"{b:.4g}" for b in v["infeasible_budgets"]) or "none"]
            for m, v in data["methods"].items()]
    md = ("## Feasibility at the profile's speed\n\nMeasured latency divided by the machine's median speed "
          f"against the profile ({data['speed']:.3f}), then ≤ B×{NOISE_ALLOWANCE}:\n\n"
          + markdown_table(["method", "feasible", "infeasible budgets"], rows))
    if "goal_met_everywhere" in data:
        md += f"\n**Goal at the profile's speed**: {'met' if data['goal_met_everywhere'] else 'missed'}.\n"
    return md + "\n"


def rejudge(path: Path) -> int:
    """Add the at-profile-speed judgement to a saved result (`--rejudge`) without re-running its methods."""
    try:
        result = json.loads(path.read_text())
        data = at_profile_speed(result)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        print(f"error: {path} is not a frontier benchmark result (JSON written by benchmarks.frontier)",
              file=sys.stderr)
        return 2
    if data is None:
        print(f"error: {path} has no measured latencies against the profile", file=sys.stderr)
        return 2
    result["at_profile_speed"] = data
    md_path = path.with_suffix(".md")
    md = md_path.read_text() if md_path.is_file() else ""
    md = md.split("## Feasibility at the profile's speed")[0].rstrip("\n") + "\n\n" + at_profile_speed_markdown(data)
    write_results(path.stem, result, md, path.parent)
    print(at_profile_speed_markdown(data))
    return 0



def plot(data: dict[str, Any], unit: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, m in enumerate(data["methods"]):
        xs, ys = [], []
        for row in data["per_budget"]:
            for lat, acc in zip(row[m]["measured"], row[m]["test_acc_per_seed"], strict=True):
                if lat is not None:
                    xs.append(lat)
                    ys.append(acc)
        ax.scatter(xs, ys, s=18, color=f"C{i}", alpha=0.7, label=m)
        means = [(statistics.mean([v for v in row[m]["measured"] if v is not None] or [np.nan]), row[m]["test_acc"])
                 for row in data["per_budget"]]
        ax.plot([x for x, _ in means], [y for _, y in means], color=f"C{i}", lw=1)
    for b in data["budgets"]:
        ax.axvline(b, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel(f"measured latency ({unit})")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def monotonicity_markdown(data: dict[str, Any]) -> str:
    rows = [[m, f"{v['max_test_acc_drop']:.2f}",
             "-" if v["max_expected_acc_drop"] is None else f"{v['max_expected_acc_drop']:.2f}"]
            for m, v in data.items()]
    return ("## Monotonicity\n\nLargest fall from one budget to the next (points; 0 = never falls):\n\n"
            + markdown_table(["method", "test accuracy (mean over seeds)", "the method's expected accuracy"], rows)
            + "\n")



def against_reference_markdown(rows: list[dict[str, Any]], unit: str) -> str:
    ref = rows[0]
    md = (f"## NAG against the {ref['reference']} child where it fits\n\nThe {ref['reference']} child (predicted "
          f"{ref['reference_cost']:.4g} {unit}) fits the target at these budgets; paired test accuracy, 95% "
          "bootstrap:\n\n")
    return md + markdown_table(
        [f"budget ({unit})", "nag %", f"{ref['reference']} %", "nag − reference"],
        [[f"{r['budget']:.4g}", f"{r['nag_acc']:.2f}", f"{r['reference_acc']:.2f}",
          f"{r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] {r['verdict']}"] for r in rows]) + "\n"


def markdown_header(bundle: Bundle, device: str, s: Settings, test_images: int, val_images: int,
                     budgets: list[float]) -> str:
    return (f"# Frontier benchmark: bundle `{bundle.bundle_id}`, device `{device}`\n\n"
            f"{len(budgets)} budgets from {budgets[0]:.4g} to {budgets[-1]:.4g}. Every pick judged on {test_images} "
            "test images "
            f"(supernet, BN re-calibrated on {SERVING_CALIBRATION_IMAGES} images) and by latency measured in ONNX "
            f"Runtime. Searches score on {val_images} validation images. NAG: {s.nag_seeds} seeds, "
            f"{s.candidates} candidates. Random search: {s.random_evaluations} supernet evaluations per budget; "
            f"evolution (OFA: population {s.evolution_population}, parents 0.25, mutation 0.5, p 0.1): "
            f"{s.evolution_evaluations} supernet evaluations; evolution with an MLP accuracy predictor: "
            f"{s.predictor_generations} generations; BigNAS coarse-to-fine: {s.coarse} skeletons + {s.fine} "
            f"mutations; searches: {s.search_seeds} seed(s), predictor evolution {s.predictor_seeds}.\n\n")


def render(ctx: Context, result: dict[str, Any], name: str) -> str:
    """The Markdown of a result `frontier_judge.assemble` gathered (with its stage wall times)."""
    s, unit, main_data = ctx.settings, result["unit"], result["comparison"]
    speed = result["measured_over_profiled_anchors"]
    md = markdown_header(ctx.bundle, ctx.device_name, s, result["test_images"], result["search_val_images"],
                         main_data["budgets"])
    md += "## NAG against per-budget searches\n\nTest accuracy % (measured latency); ✗ = infeasible.\n\n"
    md += accuracy_table(main_data, unit) + "\n" + summary_table(main_data) + "\n"
    if speed:
        md += ("Machine speed now against the device profile (measured / profiled latency of the profile's "
               f"architectures measured alongside): median {float(np.median(list(speed.values()))):.3f}, range "
               f"{min(speed.values()):.2f}-{max(speed.values()):.2f}. Every method picks under the same latency "
               f"predictor, fitted on the profile's measurements, for the budget less a "
               f"{latency_margin(ctx.models):.0%} margin.\n\n")
    md += "Paired on the same test images, 95% bootstrap interval (seeds averaged per image):\n\n"
    md += paired_table(main_data) + "\n"
    md += monotonicity_markdown(result["monotonicity"])
    if "nag_vs_biggest" in result:
        md += against_reference_markdown(result["nag_vs_biggest"], unit)
    if "goal_vs_evolution" in result:
        g = result["goal_vs_evolution"]
        md += (f"**Goal** (feasible everywhere and ≥ evolution − {GOAL_MARGIN} points at every budget, evolution with "
               f"{s.evolution_evaluations} supernet evaluations): {'met' if g['met_everywhere'] else 'missed'}; "
               f"worst gap {g['worst_gap']:+.2f} points; infeasible budgets: {g['infeasible_budgets'] or 'none'}.\n\n")
    if "at_profile_speed" in result:
        md += at_profile_speed_markdown(result["at_profile_speed"]) + "\n"
    if "table2_rewards" in result:
        k = len(ctx.models.generator.budget.budgets)
        t2, t3, t5 = result["table2_rewards"], result["table3_search"], result["table5_k"]
        md += "## PNAG Table 2: rewards\n\n" + accuracy_table(t2, unit) + "\n"
        md += paired_table(t2, "reward:pareto (ours)")
        md += "\n## PNAG Table 3: frontier against independent search\n\n" + accuracy_table(t3, unit) + "\n"
        md += paired_table(t3, "frontier (NAG)")
        md += "\n## PNAG Table 5: number of budgets K\n\n" + accuracy_table(t5, unit) + "\n"
        md += summary_table(t5) + "\n" + paired_table(t5, f"K={k}")
    table4 = result["table4_seconds_per_budget"]
    md += "\n## PNAG Table 4: time to produce one architecture\n\n" + markdown_table(
        ["method", "seconds per budget (median)", "ratio to NAG"],
        [[m, f"{v:.3g}", f"{v / table4['nag']:.0f}×"] for m, v in table4.items()])
    md += ("\nOne-off costs (seconds): " + ", ".join(f"{k_}: {v:.0f}" for k_, v in result["one_off_seconds"].items()
                                                   if v is not None) + ".\n")
    md += "\nStage wall times (s): " + ", ".join(f"{k_} {v:.0f}" for k_, v in result["stage_seconds"].items()) + ".\n"
    md += f"\n![frontiers]({name}_{ctx.device_name}.png)\n"
    return md
