"""The sandwich rule with in-place distillation, as one module so that DDP sees one forward per step."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from nag.space.arch import Architecture, biggest, sample_uniform, smallest
from nag.space.neighbours import with_dimension_of
from nag.space.space import SearchSpace
from nag.supernet.layers import is_kernel_matrix
from nag.supernet.model import Supernet

# A middle-child sampler gets the space, a seeded RNG and how many children to draw.
MiddleSampler = Callable[[SearchSpace, random.Random, int], list[Architecture]]


def uniform_middle(space: SearchSpace, rng: random.Random, count: int) -> list[Architecture]:
    return [sample_uniform(space, rng) for _ in range(count)]


def uniform_at_lowest_resolution(space: SearchSpace, rng: random.Random, count: int) -> list[Architecture]:
    """Uniform draws moved to the lowest resolution. Uniform draws put one child in as many as there are
    resolutions there: too few for the lowest resolution's mid-size children to catch up with the smallest,
    which trains every step."""
    lowest = min(space.resolutions)
    return [replace(child, resolution=lowest) for child in uniform_middle(space, rng, count)]


def first_by(head: MiddleSampler, head_count: int, rest: MiddleSampler) -> MiddleSampler:
    """The first `head_count` middle children drawn by `head`, the others by `rest`."""
    def sampler(space: SearchSpace, rng: random.Random, count: int) -> list[Architecture]:
        first = min(head_count, count)
        return [*head(space, rng, first), *rest(space, rng, count - first)]

    return sampler


def uniform_first(uniform_count: int, rest: MiddleSampler) -> MiddleSampler:
    """The first `uniform_count` middle children drawn uniformly over the choices, the others by `rest`."""
    return first_by(uniform_middle, uniform_count, rest)


def lowest_resolution_first(count: int, rest: MiddleSampler) -> MiddleSampler:
    """The first `count` middle children drawn uniformly and moved to the lowest resolution, the others by `rest`."""
    return first_by(uniform_at_lowest_resolution, count, rest)


def resolution_corners(space: SearchSpace) -> list[Architecture]:
    """The biggest at the lowest resolution and the smallest at the highest: the two mixes of size and
    resolution that neither sandwich end trains, and that samplers tying resolution to MACs rarely draw."""
    big, small = biggest(space), smallest(space)
    return [with_dimension_of(big, small, "resolution", space), with_dimension_of(small, big, "resolution", space)]


def sandwich_children(space: SearchSpace, rng: random.Random, count: int,
                      sampler: MiddleSampler = uniform_middle, corners: bool = False) -> list[Architecture]:
    """Biggest first (the teacher), then the smallest, then (with `corners`) the two resolution corners,
    then `count` middle children."""
    return [biggest(space), smallest(space), *(resolution_corners(space) if corners else []),
            *sampler(space, rng, count)]


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class SandwichObjective(nn.Module):
    """Loss of one sandwich step.

    The biggest child sees the labels (label smoothing, dropout, weight decay: it alone is
    regularised); every other child learns only from the biggest child's detached soft predictions.
    With `student_label_weight` w > 0 the others also see the labels: (1 − w)·distillation + w·label
    cross-entropy; `temperature` softens the teacher's predictions. The biggest and the smallest see
    the whole batch; with `middle_slices` = s > 1, middle child i sees slice i % s of s equal slices,
    so s times as many middle children cost what one did.
    """

    def __init__(self, supernet: Supernet, label_smoothing: float, weight_decay: float, middle_slices: int = 1,
                 student_label_weight: float = 0.0, temperature: float = 1.0):
        super().__init__()
        if middle_slices < 1 or not 0.0 <= student_label_weight <= 1.0 or temperature <= 0:
            raise ValueError("need middle_slices >= 1, student_label_weight in [0, 1] and temperature > 0")
        self.supernet = supernet
        self.middle_slices = middle_slices
        self.student_label_weight = student_label_weight
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self._decayed = [p for name, p in supernet.named_parameters() if p.dim() > 1 and "bn" not in name
                         and not is_kernel_matrix(name)]

    def forward(self, images: torch.Tensor, labels: torch.Tensor, children: list[Architecture]) -> torch.Tensor:
        losses = self.child_losses(images, labels, children, weight_decay=True)
        loss = losses[0]
        for child_loss in losses[1:]:
            loss = loss + child_loss
        return loss

    def child_losses(self, images: torch.Tensor, labels: torch.Tensor, children: list[Architecture],
                     weight_decay: bool = False) -> list[torch.Tensor]:
        """Each child's loss term, in the order of `children`; the step's loss is their sum. With
        `weight_decay` the biggest's term carries the decay too; without it each term's gradient is
        exactly that child's share of the step's."""
        teacher_logits = self.supernet(images, children[0], dropout=True)
        first = F.cross_entropy(teacher_logits, labels, label_smoothing=self.label_smoothing)
        if weight_decay and self.weight_decay > 0:
            first = first + self.decay()
        losses = [first]
        soft = F.softmax(teacher_logits.detach() / self.temperature, dim=1)
        if len(children) > 1:  # one child: the standalone baseline, trained on the labels alone
            losses.append(self._student_loss(self.supernet(images, children[1]), soft, labels))
        # Middle child i sees slice i % middle_slices of the batch: more children for the same compute.
        image_parts = images.tensor_split(self.middle_slices)
        soft_parts = soft.tensor_split(self.middle_slices)
        label_parts = labels.tensor_split(self.middle_slices)
        for i, arch in enumerate(children[2:]):
            part = i % self.middle_slices
            losses.append(self._student_loss(self.supernet(image_parts[part], arch), soft_parts[part],
                                             label_parts[part]))
        return losses

    def decay(self) -> torch.Tensor:
        """The weight-decay term: half the decay times the squared norm of the decayed weights."""
        return 0.5 * self.weight_decay * sum(p.pow(2).sum() for p in self._decayed)

    def _student_loss(self, logits: torch.Tensor, soft: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Soft targets at temperature T, scaled by T² so their gradient keeps its size (Hinton et al.).
        distill = soft_cross_entropy(logits / self.temperature, soft) * self.temperature ** 2
        if self.student_label_weight == 0.0:
            return distill
        hard = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return (1.0 - self.student_label_weight) * distill + self.student_label_weight * hard
