"""What `make train-generator` builds after the supernet, per profile, and the one mapping from it (as a
bundle's manifest records it) to the evaluator's and the generator's training configs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from nag.config.checks import check, known_fields, named
from nag.config.models import EvaluatorConfig, GeneratorConfig

_EVALUATOR = EvaluatorConfig()
# Fields of earlier versions, read from older bundles' manifests and dropped (refinement once measured each
# generator's pick and `refine_keep - 1` runners-up, at most `refine_fraction` of the sampled count).
_RETIRED = frozenset({"refine_keep", "refine_fraction"})
_GENERATOR = GeneratorConfig()


@dataclass(frozen=True)
class PipelineConfig:
    """Everything `make train-generator` builds after the supernet, per profile."""

    profile: str = "default"
    devices: tuple[str, ...] = ("cpu", "flops")
    default_device: str = "cpu"
    profile_archs: int = 400  # architectures measured per device
    triplets: int = 1000
    triplet_val_images: int = 1500
    triplet_calib_images: int = 250
    num_budgets: int = 10  # K
    evaluator_steps: int = _EVALUATOR.steps
    generator_steps: int = _GENERATOR.steps
    samples_per_budget: int = _GENERATOR.samples_per_budget  # N
    entropy_weight: float = _GENERATOR.entropy_weight  # λ (with per-budget normalised advantages)
    # FP-NAS options for generator training (off: `benchmarks/ablations.py` did not show a gain).
    adaptive_lambda: float | None = _GENERATOR.adaptive_lambda  # samples per budget = λ·entropy instead of N
    factorized_steps: int = _GENERATOR.factorized_steps  # coarse-to-fine: factorized distribution first
    # Measure each local device's serving frontier as the last stage (`nag.pipeline.measure_frontier`, about
    # a minute). The demo skips it to stay within 3 minutes; its server verifies picks' latency instead.
    measure_frontier: bool = True
    # On-policy refinement (`nag.pipeline.refine`): up to `refine_rounds` rounds (0: off) of measuring the
    # proposed (unmeasured) entries of each device's serving front, re-scoring the measured fronts on more
    # validation images, retraining the evaluators and fine-tuning the generators for
    # `refine_generator_steps`; stop when the fronts hold no proposed entry, when the measured fronts'
    # mean validation accuracy over the ladder rises by less than `refine_min_gain` points, or when
    # refinement has passed `refine_budget` times the images (validation and BN calibration) that
    # measuring the sampled triplets passed.
    refine_rounds: int = 0
    refine_budget: float = 0.5
    refine_generator_steps: int = 100
    refine_min_gain: float = 0.05
    # Re-scoring: a triplet within `refine_confirm_margin` points of a device's measured front is measured
    # on the validation images after its first `triplet_val_images`, up to `refine_confirm_images` in all
    # (0: off), and the two scores are pooled (`nag.pipeline.refine._confirm_fronts`).
    refine_confirm_images: int = 5000
    refine_confirm_margin: float = 0.25
    refine_scale_children: int = 30  # re-scored at random to put all triplets on the whole split's scale
    # Last stage (`nag.pipeline.specialise`, 0: off): every device's serving-frontier members within
    # `specialise_share` of its range from the cheapest are fine-tuned from their slices for this many epochs
    # and served with their own weights where they beat their slices.
    specialise_epochs: int = 0
    specialise_share: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not self.devices or self.default_device not in self.devices:
            problems.append("devices must be non-empty and hold default_device")
        counts = {"profile_archs": self.profile_archs, "triplets": self.triplets, "num_budgets": self.num_budgets,
                  "evaluator_steps": self.evaluator_steps, "generator_steps": self.generator_steps,
                  "samples_per_budget": self.samples_per_budget, "triplet_val_images": self.triplet_val_images,
                  "triplet_calib_images": self.triplet_calib_images}
        problems += [f"{name} must be >= 1" for name, value in counts.items() if value < 1]
        if self.entropy_weight < 0 or self.factorized_steps < 0:
            problems.append("entropy_weight and factorized_steps must be >= 0")
        if self.refine_rounds < 0 or self.refine_generator_steps < 1:
            problems.append("refine_rounds must be >= 0 and refine_generator_steps >= 1")
        if self.refine_confirm_images < 0 or self.refine_confirm_margin < 0 or self.refine_scale_children < 0:
            problems.append("refine_confirm_images, refine_confirm_margin and refine_scale_children must be >= 0")
        if self.specialise_epochs < 0 or not 0 < self.specialise_share <= 1:
            problems.append("specialise_epochs must be >= 0 and specialise_share within (0, 1]")
        if not 0 <= self.refine_budget <= 10:
            problems.append("refine_budget must be within [0, 10]")
        if 0 < self.refine_confirm_images <= self.triplet_val_images:
            problems.append("refine_confirm_images must be 0 or more than triplet_val_images")
        check(problems, "invalid pipeline config: ")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PipelineConfig:
        """The config `to_dict` wrote (a bundle's manifest holds it); a field it lacks keeps its default."""
        kwargs = known_fields(cls, {k: v for k, v in raw.items() if k not in _RETIRED}, "pipeline")
        if "devices" in kwargs:
            kwargs["devices"] = tuple(kwargs["devices"])
        return cls(**kwargs)

    def evaluator_config(self, **overrides: Any) -> EvaluatorConfig:
        """How this pipeline trains each device's evaluator, with `overrides` (fields of `EvaluatorConfig`)."""
        return EvaluatorConfig(**{"steps": self.evaluator_steps, "seed": self.seed, **overrides})

    def generator_config(self, **overrides: Any) -> GeneratorConfig:
        """How this pipeline trains each device's generator, with `overrides` (fields of `GeneratorConfig`)."""
        return GeneratorConfig(**{"steps": self.generator_steps, "samples_per_budget": self.samples_per_budget,
                                  "entropy_weight": self.entropy_weight, "adaptive_lambda": self.adaptive_lambda,
                                  "factorized_steps": self.factorized_steps, "seed": self.seed, **overrides})


PIPELINES: dict[str, PipelineConfig] = {
    # Refinement raised the default bundle's served test accuracy from 91.34 to 91.70% (`cpu`, 15 budgets;
    # the lookup table 91.64) and from 91.32 to 91.53% (`flops`, 10 budgets; 91.52) with 50% more images
    # passed through children; docs/bundles.md, "On-policy refinement", and docs/results.md.
    # Specialising its 28 members in the cheapest 40% of each range for 2 epochs (35.2 minutes on 2 cores)
    # took the served cheapest-third rows from 0.45 points under the same architectures trained alone to 0.23
    # above, the worst from -1.26 to -0.31, and the 7.13-MMAC member just above from -0.79 to -0.50; 3 epochs
    # gave the cheap rows +0.22 in 51 minutes (benchmarks/results/served_vs_standalone.md; docs/results.md).
    "default": PipelineConfig(refine_rounds=3, specialise_epochs=2),
    # A few minutes end to end on 2 CPU cores, supernet included.
    "demo": PipelineConfig(profile="demo", profile_archs=60, triplets=150, triplet_val_images=500,
                           evaluator_steps=600, generator_steps=100, measure_frontier=False),
    "tiny": PipelineConfig(profile="tiny", devices=("flops",), default_device="flops", profile_archs=10,
                           triplets=40, triplet_val_images=200, evaluator_steps=100, generator_steps=10,
                           samples_per_budget=8),
}


def pipeline(name: str) -> PipelineConfig:
    return named(PIPELINES, name)
