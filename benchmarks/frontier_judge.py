"""Judging the frontier benchmark's picks (`benchmarks.frontier`): test accuracy and measured latency of
every pick, per-method comparisons (feasibility, regret, hypervolume, paired bootstrap), monotonicity,
the goal against evolution, feasibility at the profile's speed, and the result they make up."""

from __future__ import annotations

import itertools
import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.frontier_context import GOAL_MARGIN, NOISE_ALLOWANCE, Context, Run, stable_seed
from benchmarks.frontier_methods import equal_steps
from benchmarks.frontier_stats import hypervolume, paired_bootstrap, regrets, verdict
from benchmarks.results_io import machine
from nag.config import SERVING_CALIBRATION_IMAGES
from nag.cost.speed import measure_against_profile
from nag.cost.store import device_dir
from nag.export.evaluate import child_correct
from nag.space.arch import Architecture

log = logging.getLogger("frontier")


def correctness_on_test(ctx: Context, arch: Architecture) -> np.ndarray:
    trained = ctx.bundle.trained
    return child_correct(trained.supernet, arch, trained.calibration_float[:SERVING_CALIBRATION_IMAGES], ctx.test)


def judge(ctx: Context, runs: list[Run]) -> tuple[dict[str, np.ndarray], dict[str, float | None], dict[str, float]]:
    """Test correctness and measured latency of every pick, and the machine's speed against the profile's.

    The speed check measures 8 of the profile's architectures (spread over its latency range) in the
    same pass and divides by what the profile measured for them: a ratio above 1 means this machine
    runs slower now than when the latency predictor was fitted, so picks made under the predictor
    overshoot.
    """
    unique = {r.arch.arch_id: r.arch for r in runs}
    correct = {}
    for arch_id, arch in tqdm(unique.items(), desc="test accuracy", unit="arch"):
        correct[arch_id] = correctness_on_test(ctx, arch)
    measured: dict[str, float | None] = dict.fromkeys(unique)
    speed: dict[str, float] = {}
    profile = ctx.models.device.profile
    if profile.device_kind.measured:
        log.info("measuring %d picks and the profile's reference architectures in ONNX Runtime", len(unique))
        now = measure_against_profile(list(unique.values()), ctx.space, profile,
                                      device_dir(ctx.bundle.root, ctx.device_name))
        measured.update({m.arch_id: m.median for m in now.measurements})
        speed = now.reference_ratios
    else:
        for arch_id, arch in unique.items():
            measured[arch_id] = float(ctx.cost([arch])[0])
    return correct, measured, speed



@dataclass
class Judged:
    correct: dict[str, np.ndarray]
    measured: dict[str, float | None]

    def acc(self, run: Run) -> float:
        return 100.0 * float(self.correct[run.arch.arch_id].mean())

    def latency(self, run: Run) -> float | None:
        return self.measured[run.arch.arch_id]

    def feasible(self, run: Run) -> bool:
        m = self.latency(run)
        return m is not None and m <= NOISE_ALLOWANCE * run.budget


def by_method(runs: list[Run]) -> dict[str, dict[float, list[Run]]]:
    out: dict[str, dict[float, list[Run]]] = {}
    for r in runs:
        out.setdefault(r.method, {}).setdefault(r.budget, []).append(r)
    return out


def comparison(ctx: Context, runs: list[Run], judged: Judged, budgets: list[float], reference: str = "nag"
               ) -> dict[str, Any]:
    """Per method: accuracy, feasibility, regret, hypervolume, time; paired bootstrap against `reference`."""
    from nag.space.plan import count_macs

    grouped = by_method(runs)
    methods = list(grouped)
    seed_acc = {m: [statistics.mean(judged.acc(r) for r in grouped[m][b]) for b in budgets] for m in methods}
    feasible = {m: [all(judged.feasible(r) for r in grouped[m][b]) for b in budgets] for m in methods}
    regret = regrets({m: [a if f else None for a, f in zip(seed_acc[m], feasible[m], strict=True)] for m in methods})
    all_points = [(judged.latency(r), judged.acc(r)) for r in runs if judged.latency(r) is not None]
    ref_cost = NOISE_ALLOWANCE * max(budgets)
    ref_acc = min(a for _, a in all_points) - 1.0
    summary: dict[str, Any] = {}
    for m in methods:
        seeds = sorted({r.seed for r in runs if r.method == m})
        hv = [hypervolume([(lat, judged.acc(r)) for b in budgets for r in grouped[m][b]
                           if r.seed == s and (lat := judged.latency(r)) is not None], ref_cost, ref_acc)
              for s in seeds]
        valid = [x for x in regret[m] if x is not None]
        times = [r.seconds for b in budgets for r in grouped[m][b]]
        summary[m] = {"mean_test_acc": statistics.mean(seed_acc[m]), "feasible_share": sum(feasible[m]) / len(budgets),
                      "mean_regret": statistics.mean(valid) if valid else None, "hypervolume": statistics.mean(hv),
                      "seconds_per_budget_median": statistics.median(times),
                      "seconds_per_budget_mean": statistics.mean(times), "seeds": len(seeds),
                      "evaluations_per_budget": statistics.mean(r.evaluations for b in budgets for r in grouped[m][b])}
    paired: dict[str, list[dict[str, Any]]] = {}
    for m in methods:
        if m == reference or reference not in grouped:
            continue
        paired[m] = []
        for b in budgets:
            ref = np.mean([judged.correct[r.arch.arch_id] for r in grouped[reference][b]], axis=0)
            other = np.mean([judged.correct[r.arch.arch_id] for r in grouped[m][b]], axis=0)
            diff, low, high = paired_bootstrap(ref, other, seed=stable_seed(m, b))
            paired[m].append({"budget": b, "diff": diff, "low": low, "high": high, "verdict": verdict(low, high)})
    per_budget = []
    for i, b in enumerate(budgets):
        row: dict[str, Any] = {"budget": b}
        for m in methods:
            rs = grouped[m][b]
            row[m] = {"archs": [r.arch.to_json() for r in rs], "test_acc": seed_acc[m][i],
                      "test_acc_per_seed": [judged.acc(r) for r in rs],
                      "measured": [judged.latency(r) for r in rs], "predicted": [r.predicted_cost for r in rs],
                      "feasible": feasible[m][i], "seconds": statistics.mean(r.seconds for r in rs),
                      "mmacs": [count_macs(r.arch, ctx.space) / 1e6 for r in rs], "regret": regret[m][i],
                      "fallback": any(r.fallback for r in rs)}
        per_budget.append(row)
    return {"methods": methods, "budgets": budgets, "summary": summary, "per_budget": per_budget,
            f"paired_{reference}_minus": paired, "hypervolume_reference": {"cost": ref_cost, "acc": ref_acc}}



def at_profile_speed(result: dict[str, Any]) -> dict[str, Any] | None:
    """Feasibility with each measured latency divided by the machine's median speed against the profile.

    The latency predictor predicts the machine as it was when the profile was measured; when the
    profile's own architectures, measured in the same pass as the picks, run slower now, that factor is
    the machine's, not any method's. Both judgements are reported.
    """
    anchors = result.get("measured_over_profiled_anchors") or {}
    if not anchors:
        return None
    speed = float(np.median(list(anchors.values())))
    data = result["comparison"]
    out: dict[str, Any] = {"speed": speed, "methods": {}}
    for m in data["methods"]:
        infeasible = [row["budget"] for row in data["per_budget"]
                      if not all(x is not None and x / speed <= NOISE_ALLOWANCE * row["budget"]
                                 for x in row[m]["measured"])]
        out["methods"][m] = {"feasible_share": 1 - len(infeasible) / len(data["per_budget"]),
                             "infeasible_budgets": infeasible}
    goal = result.get("goal_vs_evolution")
    if goal is not None:
        out["goal_met_everywhere"] = not out["methods"]["nag"]["infeasible_budgets"] and all(
            row["gap"] >= -GOAL_MARGIN for row in goal["per_budget"])
    return out



def goal_check(data: dict[str, Any], baseline: str = "evolution") -> dict[str, Any]:
    """NAG feasible at every budget, and its accuracy ≥ the baseline's − 0.3 points at every budget."""
    rows = []
    for row in data["per_budget"]:
        nag, base = row["nag"], row[baseline]
        gap = nag["test_acc"] - base["test_acc"]
        rows.append({"budget": row["budget"], "nag_feasible": nag["feasible"], "gap": gap,
                     "met": nag["feasible"] and gap >= -GOAL_MARGIN})
    return {"baseline": baseline, "per_budget": rows, "met_everywhere": all(r["met"] for r in rows),
            "worst_gap": min(r["gap"] for r in rows), "infeasible_budgets": [r["budget"] for r in rows
                                                                            if not r["nag_feasible"]]}



def monotonicity(data: dict[str, Any], runs: list[Run]) -> dict[str, Any]:
    """Per method, the largest fall between consecutive budgets of its test accuracy (mean over seeds) and,
    where the method reports one, of its own expected accuracy (any seed)."""
    out: dict[str, Any] = {}
    grouped = by_method(runs)
    for m in data["methods"]:
        acc = [row[m]["test_acc"] for row in data["per_budget"]]
        worst = max((a - b for a, b in itertools.pairwise(acc)), default=0.0)
        seqs = {}
        for b in data["budgets"]:
            for r in grouped[m][b]:
                seqs.setdefault(r.seed, []).append(r.expected)
        expected = None
        if all(v is not None for seq in seqs.values() for v in seq):
            expected = max((max((a - b for a, b in itertools.pairwise(seq)), default=0.0)
                            for seq in seqs.values()), default=0.0)
        out[m] = {"max_test_acc_drop": max(0.0, worst), "max_expected_acc_drop": None if expected is None
                  else max(0.0, expected), "test_acc": acc}
    return out



def against_reference(judged: Judged, runs: list[Run], reference: list[Run], method: str = "nag"
                      ) -> list[dict[str, Any]]:
    """`method` against a fixed reference child (the biggest) at the budgets where that child fits the target."""
    rows = []
    for ref in reference:
        mine = [r for r in runs if r.method == method and r.budget == ref.budget]
        a = np.mean([judged.correct[r.arch.arch_id] for r in mine], axis=0)
        b = judged.correct[ref.arch.arch_id]
        diff, low, high = paired_bootstrap(a, b, seed=stable_seed(ref.method, ref.budget))
        rows.append({"budget": ref.budget, "reference": ref.method, f"{method}_acc": 100.0 * float(a.mean()),
                     "reference_acc": 100.0 * float(b.mean()), "diff": diff, "low": low, "high": high,
                     "verdict": verdict(low, high), "archs": sorted({r.arch.arch_id for r in mine}),
                     "reference_arch": ref.arch.arch_id, "reference_cost": ref.predicted_cost})
    return rows



def assemble(ctx: Context, methods: list[str], budgets: list[float], ablation_budgets: list[float], runs: list[Run],
             ablation_runs: list[Run], reference_runs: list[Run], timings: dict[str, float]) -> dict[str, Any]:
    """Judge every pick (its wall time into `timings["judging"]`) and gather the result written as JSON."""
    t = time.perf_counter()
    correct, measured, speed = judge(ctx, runs + ablation_runs + reference_runs)
    timings["judging"] = time.perf_counter() - t
    judged = Judged(correct, measured)
    main_data = comparison(ctx, runs, judged, budgets)
    result: dict[str, Any] = {"bundle_id": ctx.bundle.bundle_id, "device": ctx.device_name,
                              "unit": ctx.models.device.unit, "settings": ctx.settings.__dict__, "machine": machine(),
                              "comparison": main_data, "test_images": len(ctx.test), "search_val_images": len(ctx.val),
                              "measured_over_profiled_anchors": speed}
    result["monotonicity"] = monotonicity(main_data, runs)
    if reference_runs:
        result["nag_vs_biggest"] = against_reference(judged, runs, reference_runs)
    if "evolution" in methods:
        result["goal_vs_evolution"] = goal_check(main_data)
    profile_speed = at_profile_speed(result)
    if profile_speed is not None:
        result["at_profile_speed"] = profile_speed
    if ablation_runs:
        k = len(ctx.models.generator.budget.budgets)
        nag_at = [r for r in runs if r.method == "nag" and r.seed == 0 and r.budget in ablation_budgets]
        indep_at = [r for r in runs if r.method == "independent" and r.seed == 0 and r.budget in ablation_budgets]
        rewards = [r for r in ablation_runs if r.method.startswith("reward:")]
        t2 = comparison(ctx, rewards + [Run("reward:pareto (ours)", 0, r.budget, r.arch, r.predicted_cost,
                                            r.seconds) for r in nag_at], judged, ablation_budgets,
                        reference="reward:pareto (ours)")
        t3 = comparison(ctx, [Run("frontier (NAG)", 0, r.budget, r.arch, r.predicted_cost, r.seconds) for r in nag_at]
                        + [Run(f"independent ({equal_steps(ctx)} steps each)", 0, r.budget, r.arch, r.predicted_cost,
                               r.seconds) for r in indep_at]
                        + [r for r in ablation_runs if r.method == "independent-equal-samples"],
                        judged, ablation_budgets, reference="frontier (NAG)")
        t5 = comparison(ctx, [r for r in ablation_runs if r.method.startswith("K=")], judged, ablation_budgets,
                        reference=f"K={k}")
        result["table2_rewards"], result["table3_search"], result["table5_k"] = t2, t3, t5
    result["table4_seconds_per_budget"] = {m: main_data["summary"][m]["seconds_per_budget_median"]
                                           for m in main_data["methods"]}
    result["one_off_seconds"] = {**ctx.one_off_seconds, "nag_bundle_models": ctx.bundle.metrics
                                 .get("build_seconds", {}).get("models")}
    return result
