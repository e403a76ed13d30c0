"""FP-NAS in generator training, the second part of `benchmarks.ablations`: the bundle's evaluator and
budgets, the generator trained with PNAG's fixed sample count, adaptive sampling K = λ·H, coarse-to-fine,
and both, over several seeds; each trained policy judged on its picks and its mean reward."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from benchmarks.results_io import markdown_table
from nag.bundle import load_bundle
from nag.errors import NagError
from nag.pnag.encoding import TokenEncoder
from nag.pnag.generator import Generator, token_cost, train_generator
from nag.policy.inference import evaluator_score, pick_architecture
from nag.space.arch import from_tokens

log = logging.getLogger("ablations")


@dataclass(frozen=True)
class FpnasSettings:
    seeds: int = 3
    steps: int | None = None  # None: the bundle's generator steps
    coarse_share: float = 0.3  # FP-NAS switched at epoch 80 of 270 searched epochs
    judge_samples: int = 64


QUICK_FPNAS = FpnasSettings(seeds=1, steps=40, judge_samples=16)




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
