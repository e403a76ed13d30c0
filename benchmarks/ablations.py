"""Seed techniques against the base recipe: AttentiveNAS in supernet training, FP-NAS in generator training.

    python -m benchmarks.ablations                       # both parts (about 20 minutes on 2 cores)
    python -m benchmarks.ablations --part fpnas --bundle bundles/default
    python -m benchmarks.ablations --part attentive --quick

AttentiveNAS: the `demo` supernet profile trained with uniform, attentive-best and attentive-worst
middle children (same seed, same steps). Each supernet scores one fixed, MACs-stratified set of
architectures on validation images; at each MACs budget the best (the frontier) and the worst child
within budget are judged on the test set, paired against uniform with a bootstrap interval.

FP-NAS: the bundle's evaluator and budgets, the generator trained with a fixed sample count (PNAG),
adaptive sampling K = λ·H, coarse-to-fine, and both; several seeds. Each trained policy is judged
the same way: its picks at every budget (feasibility by the device's predictor, predicted accuracy)
and its mean evaluator reward on fresh samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.frontier_stats import paired_bootstrap, verdict
from benchmarks.results_io import RESULTS, machine, markdown_table, write_results
from nag.bundle import load_bundle
from nag.bundle.bundle import SUPERNET_FILE, SUPERNET_LOG_FILE, SUPERNET_SUMMARY_FILE
from nag.config import MIDDLE_SAMPLERS, profile
from nag.errors import NagError
from nag.export.evaluate import child_accuracy, child_correct
from nag.pipeline.train_supernet import Distributed, SupernetTrainer
from nag.pnag.encoding import TokenEncoder
from nag.pnag.generator import Generator, token_cost, train_generator
from nag.policy.inference import evaluator_score, pick_architecture
from nag.space import count_macs, sample_stratified
from nag.space.arch import biggest, from_tokens, smallest
from nag.supernet.io import load_supernet

log = logging.getLogger("ablations")


@dataclass(frozen=True)
class AttentiveSettings:
    profile: str = "demo"
    samplers: tuple[str, ...] = MIDDLE_SAMPLERS  # the first is the baseline the others are paired against
    archs: int = 120  # the fixed, MACs-stratified set every supernet scores
    val_images: int = 1000
    calib_images: int = 250
    budgets: int = 5
    test_images: int | None = None  # all


@dataclass(frozen=True)
class FpnasSettings:
    seeds: int = 3
    steps: int | None = None  # None: the bundle's generator steps
    coarse_share: float = 0.3  # FP-NAS switched at epoch 80 of 270 searched epochs
    judge_samples: int = 64


QUICK_ATTENTIVE = AttentiveSettings(profile="tiny", archs=20, val_images=300, budgets=3, test_images=1000)
QUICK_FPNAS = FpnasSettings(seeds=1, steps=40, judge_samples=16)


# ---------------------------------------------------------------------------------------------
# AttentiveNAS
# ---------------------------------------------------------------------------------------------


def train_variant(sampler: str, settings: AttentiveSettings, runs: Path) -> tuple[Path, dict[str, Any]]:
    out = runs / sampler
    if not (out / SUPERNET_FILE).is_file():
        cfg = profile(settings.profile).with_overrides(middle_sampler=sampler)
        code = SupernetTrainer(cfg, out, Distributed()).run(resume=True)
        if code != 0:
            raise NagError(f"training the {sampler} supernet stopped with code {code}")
    log_lines = [json.loads(line) for line in (out / SUPERNET_LOG_FILE).read_text().splitlines() if line.strip()]
    summary = json.loads((out / SUPERNET_SUMMARY_FILE).read_text())
    return out / SUPERNET_FILE, {"train_seconds": summary["train_seconds_this_run"], "summary": summary,
                                 "last_epoch": log_lines[-1]}


def run_attentive(settings: AttentiveSettings, runs: Path) -> tuple[dict[str, Any], str]:
    from nag.data import DataSource, load_splits

    cfg = profile(settings.profile)
    first = None
    variants: dict[str, Any] = {}
    for sampler in settings.samplers:
        path, info = train_variant(sampler, settings, runs)
        variants[sampler] = {"path": path, **info}
        first = first or path
    assert first is not None
    trained = load_supernet(first)
    space = trained.supernet.space
    splits = load_splits(DataSource(), cfg.val_size, cfg.seed, space.input.size, space.input.channels)
    val = splits.val.subset(torch.arange(min(settings.val_images, len(splits.val))))
    test = splits.test if settings.test_images is None else splits.test.subset(torch.arange(settings.test_images))
    archs = sample_stratified(space, settings.archs, random.Random(0))
    macs = np.array([count_macs(a, space) / 1e6 for a in archs])
    lo, hi = float(macs.min()), float(macs.max())
    budgets = [float(b) for b in np.linspace(lo + (hi - lo) / settings.budgets, hi, settings.budgets)]
    result: dict[str, Any] = {"budgets_mmacs": budgets, "archs": len(archs), "variants": {}}
    correct: dict[tuple[str, str], np.ndarray] = {}
    for sampler in settings.samplers:
        trained = load_supernet(variants[sampler]["path"])
        calib = trained.calibration_float[: settings.calib_images]
        started = time.perf_counter()
        val_acc = np.array([child_accuracy(trained.supernet, a, calib, val) for a in archs])
        rows = []
        for i, b in enumerate(budgets):
            lower = budgets[i - 1] if i else -1.0
            inside = np.flatnonzero(macs <= b)
            bucket = np.flatnonzero((macs <= b) & (macs > lower))
            best = archs[int(inside[np.argmax(val_acc[inside])])]
            worst = archs[int(bucket[np.argmin(val_acc[bucket])])] if len(bucket) else best
            row = {"budget": b}
            for name, arch in (("frontier", best), ("worst", worst)):
                key = (sampler, f"{name}@{i}")
                correct[key] = child_correct(trained.supernet, arch, calib, test)
                row[name] = {"arch_id": arch.arch_id, "mmacs": count_macs(arch, space) / 1e6,
                             "val_acc": float(val_acc[archs.index(arch)]), "test_acc": 100 * float(correct[key].mean())}
            rows.append(row)
        extremes = {}
        for name, arch in (("smallest", smallest(space)), ("biggest", biggest(space))):
            correct[(sampler, name)] = child_correct(trained.supernet, arch, calib, test)
            extremes[name] = 100 * float(correct[(sampler, name)].mean())
        last = variants[sampler]["last_epoch"]
        result["variants"][sampler] = {
            "per_budget": rows, **{f"test_acc_{k}": v for k, v in extremes.items()},
            "val_acc_mean": float(val_acc.mean()), "val_acc_min": float(val_acc.min()),
            "frontier_test_acc_mean": statistics.mean(r["frontier"]["test_acc"] for r in rows),
            "worst_test_acc_mean": statistics.mean(r["worst"]["test_acc"] for r in rows),
            "train_seconds": variants[sampler]["train_seconds"],
            "attentive_mean_trials": last.get("attentive_mean_trials"),
            "attentive_miss_rate": last.get("attentive_miss_rate"),
            "scoring_seconds": time.perf_counter() - started,
        }
    paired: dict[str, list[dict[str, Any]]] = {}
    baseline = settings.samplers[0]
    for sampler in settings.samplers[1:]:
        paired[sampler] = []
        for i in range(len(budgets)):
            for name in ("frontier", "worst"):
                diff, low, high = paired_bootstrap(correct[(sampler, f"{name}@{i}")],
                                                   correct[(baseline, f"{name}@{i}")], seed=i)
                paired[sampler].append({"budget": budgets[i], "child": name, "diff": diff, "low": low, "high": high,
                                        "verdict": verdict(low, high)})
    result["baseline"] = baseline
    result["paired_minus_baseline"] = paired
    return result, attentive_markdown(result, settings, len(test))


def attentive_markdown(r: dict[str, Any], s: AttentiveSettings, test_images: int) -> str:
    v = r["variants"]
    names = s.samplers
    md = (f"## AttentiveNAS: middle children of the sandwich rule (profile `{s.profile}`)\n\n"
          f"{r['archs']} MACs-stratified architectures scored on {s.val_images} validation images in each "
          f"supernet; at each budget the best (frontier) and the worst child within the budget's MACs bucket, "
          f"judged on {test_images} test images. Test accuracy %:\n\n")
    headers = ["budget (MMACs)"] + [f"{m} frontier" for m in names] + [f"{m} worst" for m in names]
    rows = []
    for i, b in enumerate(r["budgets_mmacs"]):
        rows.append([f"{b:.2f}"] + [f"{v[m]['per_budget'][i]['frontier']['test_acc']:.2f}" for m in names]
                    + [f"{v[m]['per_budget'][i]['worst']['test_acc']:.2f}" for m in names])
    md += markdown_table(headers, rows) + "\n"
    md += markdown_table(
        ["sampler", "frontier mean", "worst mean", "smallest", "biggest", "val mean / min", "train s",
         "proposal trials per candidate"],
        [[m, f"{v[m]['frontier_test_acc_mean']:.2f}", f"{v[m]['worst_test_acc_mean']:.2f}",
          f"{v[m]['test_acc_smallest']:.2f}", f"{v[m]['test_acc_biggest']:.2f}",
          f"{v[m]['val_acc_mean']:.2f} / {v[m]['val_acc_min']:.2f}", f"{v[m]['train_seconds']:.0f}",
          "-" if v[m]["attentive_mean_trials"] is None else f"{v[m]['attentive_mean_trials']:.1f}"]
         for m in names]) + "\n"
    md += f"Paired against {r['baseline']} on the same test images (95% bootstrap interval):\n\n"
    rows = []
    for m, entries in r["paired_minus_baseline"].items():
        for e in entries:
            rows.append([m, f"{e['budget']:.2f}", e["child"], f"{e['diff']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]",
                         e["verdict"]])
    return md + markdown_table(["sampler", "budget", "child", f"minus {r['baseline']}", "verdict"], rows) + "\n"


# ---------------------------------------------------------------------------------------------
# FP-NAS
# ---------------------------------------------------------------------------------------------


def initial_entropy(generator: Generator, budgets: list[float]) -> float:
    """The mean sequence entropy of a fresh policy over the budgets (it sets λ so that K starts at N)."""
    with torch.no_grad():
        b = torch.tensor(budgets).repeat_interleave(64)
        return float(generator.sample(b, torch.Generator().manual_seed(0)).entropy.mean())


def run_fpnas(bundle_path: str, device: str, settings: FpnasSettings) -> tuple[dict[str, Any], str]:
    bundle = load_bundle(bundle_path)
    if device not in bundle.devices:
        raise NagError(f"unknown device {device!r}; the bundle has {sorted(bundle.devices)}")
    models = bundle.devices[device]
    pipe = bundle.pipeline
    budgets = [float(b) for b in models.generator.budget.budgets]
    # PNAG's fixed N is the baseline the FP-NAS options are compared with, whatever the bundle used.
    base = pipe.generator_config(steps=settings.steps or pipe.generator_steps, log_every=10, seed=0,
                                 adaptive_lambda=None, factorized_steps=0)
    torch.manual_seed(0)
    h0 = initial_entropy(Generator(bundle.space, budgets, base.hidden, base.budget_dim), budgets)
    lam = base.samples_per_budget / h0  # K = N at the start, as FP-NAS compares λ = 1/4 with K = 14
    coarse_steps = max(1, round(settings.coarse_share * base.steps))
    variants = {
        "fixed N (PNAG)": (base, False),
        "adaptive K = λH": (replace(base, adaptive_lambda=lam, max_samples=2 * base.samples_per_budget), False),
        "coarse-to-fine": (replace(base, factorized_steps=coarse_steps), True),
        "adaptive + coarse-to-fine (FP-NAS)": (replace(base, adaptive_lambda=lam,
                                                       max_samples=2 * base.samples_per_budget,
                                                       factorized_steps=coarse_steps), True),
    }
    encoder = TokenEncoder(bundle.space)
    result: dict[str, Any] = {"lambda": lam, "initial_entropy": h0, "coarse_steps": coarse_steps,
                              "steps": base.steps, "samples_per_budget": base.samples_per_budget,
                              "budgets": budgets, "variants": {}}
    for name, (cfg, factorized) in variants.items():
        per_seed = []
        for seed in range(settings.seeds):
            torch.manual_seed(seed)
            generator = Generator(bundle.space, budgets, cfg.hidden, cfg.budget_dim, factorized=factorized)
            started = time.perf_counter()
            history = train_generator(generator, models.evaluator, replace(cfg, seed=seed), progress=False,
                                      cost=token_cost(models.device.predict, bundle.space))
            seconds = time.perf_counter() - started
            generator.eval()
            per_seed.append({"seed": seed, "seconds": seconds, "sampled": history[-1]["sampled_total"],
                             "final_entropy": statistics.mean(history[-1]["entropy"]),
                             **judge_policy(generator, models, bundle, encoder, budgets, settings.judge_samples,
                                            seed)})
        result["variants"][name] = {"per_seed": per_seed, **{
            k: statistics.mean(p[k] for p in per_seed)
            for k in ("seconds", "sampled", "final_entropy", "mean_reward", "sample_feasible", "pick_feasible",
                      "pick_predicted_acc")}}
        log.info("FP-NAS %s: %s", name, {k: v for k, v in result["variants"][name].items() if k != "per_seed"})
    return result, fpnas_markdown(result, bundle.bundle_id, device, settings)


@torch.no_grad()
def judge_policy(generator: Generator, models: Any, bundle: Any, encoder: TokenEncoder, budgets: list[float],
                 samples: int, seed: int) -> dict[str, float]:
    b = torch.tensor(budgets).repeat_interleave(samples)
    s = generator.sample(b, torch.Generator().manual_seed(1000 + seed))
    costs = models.device.predict([from_tokens(t, bundle.space) for t in s.tokens.tolist()])
    reward = models.evaluator(encoder.encode(s.tokens), b.double(), torch.as_tensor(costs))
    picks = [pick_architecture(generator, models.device, evaluator_score(generator, models.evaluator), budget, 64,
                               torch.Generator().manual_seed(seed)) for budget in budgets]
    acc = bundle.accuracy.predict(encoder.encode(torch.tensor([p.tokens for p in picks])))
    return {"mean_reward": float(reward.mean()), "sample_feasible": float((costs <= b.numpy()).mean()),
            "pick_feasible": float(np.mean([not p.fallback and p.cost <= budget
                                            for p, budget in zip(picks, budgets, strict=True)])),
            "pick_predicted_acc": float(np.mean(acc))}


def fpnas_markdown(r: dict[str, Any], bundle_id: str, device: str, s: FpnasSettings) -> str:
    base = r["variants"]["fixed N (PNAG)"]
    md = (f"## FP-NAS in generator training (bundle `{bundle_id}`, device `{device}`)\n\n"
          f"{r['steps']} steps over {len(r['budgets'])} budgets, {s.seeds} seed(s) each. Fixed N = "
          f"{r['samples_per_budget']} per budget; adaptive λ = {r['lambda']:.3f} (K = N at the initial entropy "
          f"{r['initial_entropy']:.1f} nats), clipped to [4, {2 * r['samples_per_budget']}]; coarse-to-fine: "
          f"factorized for the first {r['coarse_steps']} steps. Reward = the evaluator's score on "
          f"{s.judge_samples} fresh samples per budget; picks = 64 candidates per budget, as served.\n\n")
    rows = []
    for name, v in r["variants"].items():
        rows.append([name, f"{v['sampled']:.0f} ({100 * (v['sampled'] / base['sampled'] - 1):+.0f}%)",
                     f"{v['seconds']:.1f} ({base['seconds'] / v['seconds']:.2f}×)", f"{v['final_entropy']:.1f}",
                     f"{v['mean_reward']:.3f}", f"{100 * v['sample_feasible']:.0f}%",
                     f"{100 * v['pick_feasible']:.0f}%", f"{v['pick_predicted_acc']:.2f}"])
    return md + markdown_table(["variant", "sampled architectures (vs fixed)", "train seconds (speed-up)",
                                "final entropy", "mean reward", "samples feasible", "picks feasible",
                                "picks' predicted acc %"], rows) + "\n"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["all", "attentive", "fpnas"], default="all")
    p.add_argument("--bundle", default="bundles/default", help="bundle for the FP-NAS part")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny supernets, one seed, few steps (tests, CI)")
    p.add_argument("--profile", default=AttentiveSettings.profile,
                   help="supernet training profile of the attentive part (demo, default, ...)")
    p.add_argument("--samplers", default=",".join(MIDDLE_SAMPLERS),
                   help="middle-child samplers to train and compare, the first being the baseline")
    p.add_argument("--runs", type=Path, default=Path("runs/ablations"), help="where supernets are trained")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="ablations")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result: dict[str, Any] = {"machine": machine()}
    md = "# Seed techniques: AttentiveNAS and FP-NAS against the base recipe\n\n"
    try:
        if args.part in ("all", "attentive"):
            samplers = tuple(s.strip() for s in args.samplers.split(",") if s.strip())
            unknown = sorted(set(samplers) - set(MIDDLE_SAMPLERS))
            if unknown or len(samplers) < 2:
                raise NagError(f"--samplers takes at least two of {', '.join(MIDDLE_SAMPLERS)}; got {args.samplers!r}")
            settings = replace(QUICK_ATTENTIVE if args.quick else AttentiveSettings(profile=args.profile),
                               samplers=samplers)
            result["attentive"], text = run_attentive(settings, args.runs / settings.profile)
            md += text + "\n"
        if args.part in ("all", "fpnas"):
            result["fpnas"], text = run_fpnas(args.bundle, args.device, QUICK_FPNAS if args.quick else FpnasSettings())
            result["bundle_id"] = load_bundle(args.bundle).bundle_id
            md += text
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write_results(args.name, result, md, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
