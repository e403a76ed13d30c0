"""Typed configuration: every knob and its default, declared once as a frozen dataclass that checks itself
on creation (one `NagError` naming every problem, `nag.config.checks`).

- `training`: supernet training and its profiles (`demo`, `default`, `tiny`);
- `models`: the evaluator's and the generator's training;
- `pipelines`: what `make train-generator` builds per profile, and the one mapping from it (a bundle's
  manifest records it, `Bundle.pipeline`) to the evaluator's and the generator's configs;
- `serving`: `nag.generate` and the gRPC service.
"""

from nag.config.models import EvaluatorConfig, GeneratorConfig
from nag.config.pipelines import PIPELINES, PipelineConfig, pipeline
from nag.config.serving import GENERATION, SERVING_CALIBRATION_IMAGES, GenerationConfig, ServiceConfig
from nag.config.training import (
    ATTENTIVE_PROXIES,
    MIDDLE_SAMPLERS,
    PROFILES,
    TRAIN_MODES,
    SupernetTrainConfig,
    profile,
)

__all__ = [
    "ATTENTIVE_PROXIES",
    "GENERATION",
    "MIDDLE_SAMPLERS",
    "PIPELINES",
    "PROFILES",
    "SERVING_CALIBRATION_IMAGES",
    "TRAIN_MODES",
    "EvaluatorConfig",
    "GenerationConfig",
    "GeneratorConfig",
    "PipelineConfig",
    "ServiceConfig",
    "SupernetTrainConfig",
    "pipeline",
    "profile",
]
