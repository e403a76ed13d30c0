"""Supernet training: every knob of `nag train-supernet`, and the profiles, named sets of them."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from nag.config.checks import check, known_fields, named
from nag.config.data import DataSource

MIDDLE_SAMPLERS = ("uniform", "stratified", "attentive-best", "attentive-worst")
ATTENTIVE_PROXIES = ("loss", "predictor")
# "sandwich" is the BigNAS recipe; the others train one fixed child alone (the standalone baseline):
# "fixed" trains `fixed_arch`, the other two the biggest or smallest child.
TRAIN_MODES = ("sandwich", "fixed", "biggest-only", "smallest-only")


@dataclass(frozen=True)
class SupernetTrainConfig:
    """BigNAS supernet training (sandwich rule, in-place distillation, constant-ending LR)."""

    profile: str = "default"
    epochs: int = 12
    batch_size: int = 128  # per process
    train_subset: int | None = None  # train on the first N images of the (shuffled) train split
    lr: float = 0.2
    momentum: float = 0.9
    warmup_steps: int = 300
    lr_floor: float = 0.05  # the LR stays constant once it has decayed to this fraction of `lr`
    decay_fraction: float = 0.75  # share of the post-warm-up steps over which the LR decays to the floor
    # Stochastic weight averaging over the constant ending: ship the equal average of the weights after
    # every step at the LR floor (BN statistics are re-calibrated per child anyway). Off: on the default
    # run it moved the biggest child +0.19 and 50 random children -0.08 points on average (ties).
    average_at_floor: bool = False
    weight_decay: float = 4e-5  # applied to the biggest child only
    label_smoothing: float = 0.1  # for every label loss: the biggest's, and the others' if student_label_weight > 0
    num_middle_children: int = 2
    # Split the batch into this many slices, one per middle child (cycling): 1 gives every middle child the
    # whole batch (BigNAS); s > 1 trains s times as many middle children for the same compute.
    middle_slices: int = 1
    # The children other than the biggest learn (1 - w) * distillation + w * label cross-entropy, with the
    # biggest's predictions softened at `distill_temperature`. BigNAS: w = 0, temperature 1.
    student_label_weight: float = 0.0
    distill_temperature: float = 1.0
    # "uniform" over the space; "stratified": middle child i of n is drawn near a MACs target in the i-th
    # of n equal slices of the space's MACs range; or AttentiveNAS's "attentive-best" / "attentive-worst".
    middle_sampler: str = "stratified"
    # Of the middle children, this many are drawn uniformly over the choices (the distribution a user's
    # random child comes from), the rest by `middle_sampler` (stratified: over its own slices of the range).
    uniform_middle_children: int = 0
    # Of the middle children after the uniform ones, this many are drawn uniformly over the choices and moved
    # to the lowest resolution (the rest by `middle_sampler`).
    lowest_resolution_middle_children: int = 0
    # Each step also trains the biggest at the lowest resolution and the smallest at the highest (after the
    # smallest, before the middle children; with middle_slices they take slices like middle children).
    resolution_corners: bool = False
    # OFA's elastic kernel: smaller depthwise kernels are learned transforms of the larger one's centre
    # instead of the raw centre crop.
    kernel_transform: bool = True
    # Each depthwise kernel also passes through a matrix of its own per input map size (one per resolution
    # below the largest), so low-resolution children need not share the high-resolution kernels as is.
    size_transform: bool = False
    attentive_candidates: int = 3  # k candidates near each MACs target
    attentive_proxy: str = "loss"  # mini-batch cross-entropy, or "predictor" (an accuracy predictor JSON)
    attentive_predictor: str | None = None
    train_mode: str = "sandwich"
    fixed_arch: str | None = None  # the architecture's JSON, for train_mode "fixed"
    # With train_mode "fixed": start the child from its slice of this trained supernet (a supernet.pt) and
    # distil from that supernet's biggest child, frozen, with the labels at `student_label_weight`.
    specialise_from: str | None = None
    # A file that keeps the teacher's predictions on the training images between specialisation runs from the
    # same supernet (computed and written by the first, checked against the supernet and data by the others).
    teacher_targets: str | None = None
    crop_pad: int = 1
    flip: bool = True
    val_size: int = 5000
    calib_size: int = 2000
    calib_batch: int = 250
    eval_batch: int = 1000
    eval_limit: int | None = None  # evaluate on the first N test images only (tests)
    seed: int = 0
    data: DataSource = field(default_factory=DataSource)
    space_path: str | None = None  # None: the packaged default space

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1 or self.batch_size < 2:
            problems.append("epochs must be >= 1 and batch_size >= 2")
        if not 0 < self.lr_floor <= 1 or not 0 < self.decay_fraction <= 1:
            problems.append("lr_floor and decay_fraction must lie in (0, 1]")
        if self.middle_sampler not in MIDDLE_SAMPLERS:
            problems.append(f"middle_sampler must be one of {list(MIDDLE_SAMPLERS)}")
        if self.attentive_candidates < 1 or self.attentive_proxy not in ATTENTIVE_PROXIES:
            problems.append(f"attentive_candidates must be >= 1 and attentive_proxy one of {list(ATTENTIVE_PROXIES)}")
        if self.attentive_proxy == "predictor" and self.middle_sampler != "uniform" and not self.attentive_predictor:
            problems.append("attentive_proxy 'predictor' needs attentive_predictor (an accuracy predictor JSON)")
        if self.train_mode not in TRAIN_MODES:
            problems.append(f"train_mode must be one of {list(TRAIN_MODES)}")
        if (self.train_mode == "fixed") != (self.fixed_arch is not None):
            problems.append("train_mode 'fixed' needs fixed_arch (an architecture's JSON), and only it takes one")
        if self.specialise_from is not None and self.train_mode != "fixed":
            problems.append("specialise_from fine-tunes one child: it needs train_mode 'fixed'")
        if self.teacher_targets is not None and self.specialise_from is None:
            problems.append("teacher_targets keeps a specialisation's teacher predictions: it needs specialise_from")
        if self.num_middle_children < 0 or self.crop_pad < 0:
            problems.append("num_middle_children and crop_pad must be >= 0")
        if not 0 <= self.uniform_middle_children <= self.num_middle_children:
            problems.append("uniform_middle_children must lie between 0 and num_middle_children")
        if not 0 <= self.lowest_resolution_middle_children <= self.num_middle_children - self.uniform_middle_children:
            problems.append("lowest_resolution_middle_children must lie between 0 and num_middle_children "
                            "less uniform_middle_children")
        # torch 2.13's oneDNN corrupts the heap in the weight gradient of a stride-2 1x1 channels_last
        # convolution with fewer input channels than its block (oneDNN issue 6035) at odd batch sizes:
        # 17, 33, 43, 65 and 127 crashed here with 2 threads; 32, 64 and 128 gave the reference
        # gradients. So every batch a child trains on is even.
        if self.middle_slices < 1 or self.batch_size % (2 * self.middle_slices):
            problems.append("middle_slices must be >= 1 and batch_size must be an even multiple of middle_slices "
                            "(each slice an even image count)")
        if not 0.0 <= self.student_label_weight <= 1.0 or self.distill_temperature <= 0:
            problems.append("student_label_weight must lie in [0, 1] and distill_temperature be > 0")
        if self.calib_size < self.calib_batch:
            problems.append("calib_size must be at least calib_batch")
        check(problems, "invalid training config: ")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SupernetTrainConfig:
        raw = known_fields(cls, raw, "training")
        if isinstance(raw.get("data"), dict):
            raw["data"] = DataSource(**raw["data"])
        return cls(**raw)

    def with_overrides(self, **overrides: Any) -> SupernetTrainConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PROFILES: dict[str, SupernetTrainConfig] = {
    # About 80 seconds on 2 CPU cores: one pass over 14k images. Good enough to serve, not to ship. It keeps
    # uniform middle children and centre-cropped kernels: the default's stratified children cost 32% more
    # per step (`make demo PROFILE=demo` took 3m22s with them, 3m06s without, on 16k images).
    "demo": SupernetTrainConfig(profile="demo", epochs=1, train_subset=14_000, warmup_steps=40, calib_size=1000,
                                middle_sampler="uniform", kernel_transform=False),
    # The quality run: about 55 minutes on 2 CPU cores (12 epochs of 429 sandwich steps). Its students also
    # see the labels (half the weight) and one of its three middle children is drawn uniformly: on the full
    # run 50 random children gained 1.72 points on average and the served picks 0.5-1.1 (docs/results-supernet.md).
    "default": SupernetTrainConfig(profile="default", student_label_weight=0.5, num_middle_children=3,
                                   uniform_middle_children=1),
    # For tests: a handful of steps.
    "tiny": SupernetTrainConfig(profile="tiny", epochs=1, batch_size=32, train_subset=256, warmup_steps=2,
                                calib_size=250, calib_batch=125, eval_batch=500, val_size=500,
                                eval_limit=1000),
}


def profile(name: str) -> SupernetTrainConfig:
    return named(PROFILES, name)
