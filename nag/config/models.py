"""Training configs of the evaluator (PNAG section 3.3) and of the generator (sections 3.1-3.2, with the
FP-NAS options described in `nag.pnag.generator`)."""

from __future__ import annotations

from dataclasses import dataclass

from nag.config.checks import check

# The evaluator's dominance rules, by name (`nag.pnag.dominance` holds their functions).
DOMINANCE_RULE_NAMES = ("pareto", "cost-only")


@dataclass(frozen=True)
class EvaluatorConfig:
    hidden: int = 256
    budget_dim: int = 64
    steps: int = 4000
    batch_size: int = 1024
    lr: float = 1e-3
    # Strong decoupled weight decay keeps the generator from exploiting the evaluator off the triplets:
    # on the default bundle (cpu, 8 budgets, 2 seeds) the picks' validation accuracy trailed the best
    # triplet within budget by 0.67 points on average with 1e-5 and by 0.21 with 1.0 (held-out
    # agreement 0.951-0.960 either way); with 1e-5 the policy settled on children the evaluator
    # scored above every triplet, and stopped growing at about 0.27 ms.
    weight_decay: float = 1.0
    holdout_fraction: float = 0.15
    eval_every: int = 200
    patience: int = 5  # evaluations without improvement before stopping
    eval_pairs_per_budget: int = 20_000
    rule: str = "pareto"  # "cost-only" drops Eq. 6's accuracy constraint (the Table 2 ablation)
    # Feed log(c / B) and [c ≤ B] of the predicted cost c. Without them the MLP has to infer cost from the
    # one-hot encoding and learns a ramp instead of Eq. 6's step: on the default bundle a child at
    # 0.126 ms reached its full score only at B ≈ 0.19 ms, so the generator kept a third of low budgets
    # unused. With them (cpu, 11 budgets, 2 seeds) the picks' validation accuracy against the best
    # triplet within budget went from -0.32 / -0.29 to +0.17 / +0.24 points (-1.04 / -0.42 to +0.58 /
    # +0.49 at the three lowest budgets); held-out agreement 0.965-0.969 (0.950 without, seed 1).
    cost_features: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.rule not in DOMINANCE_RULE_NAMES:
            problems.append(f"rule must be one of {sorted(DOMINANCE_RULE_NAMES)}, got {self.rule!r}")
        check(problems, "invalid evaluator config: ")


@dataclass(frozen=True)
class GeneratorConfig:
    hidden: int = 64
    budget_dim: int = 64
    steps: int = 400
    samples_per_budget: int = 32  # N
    lr: float = 1e-3
    entropy_weight: float = 0.05  # λ
    baseline_decay: float = 0.9  # moving-average baseline per budget
    # Divide each budget's advantages by the spread of its rewards in the step: the evaluator's
    # score scale differs between budgets, and raw scores made the policy collapse within 100 steps.
    normalize_advantage: bool = True
    log_every: int = 20
    seed: int = 0
    # FP-NAS adaptive sampling: samples per budget = clip(round(λ·H), min, max); None keeps N fixed.
    adaptive_lambda: float | None = None
    min_samples: int = 4
    max_samples: int = 64
    # FP-NAS coarse-to-fine: steps with the factorized distribution first (needs a factorized Generator).
    factorized_steps: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.adaptive_lambda is not None and self.adaptive_lambda <= 0:
            problems.append("adaptive_lambda must be > 0 (or None for a fixed sample count)")
        if not 2 <= self.min_samples <= self.max_samples:
            problems.append("need 2 <= min_samples <= max_samples")
        if self.samples_per_budget < 2 or self.factorized_steps < 0:
            problems.append("samples_per_budget must be >= 2 and factorized_steps >= 0")
        check(problems, "invalid generator config: ")
