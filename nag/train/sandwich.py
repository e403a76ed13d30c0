"""The sandwich rule with in-place distillation, as one module so that DDP sees one forward per step."""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nag.space.arch import Architecture, biggest, sample_uniform, smallest
from nag.space.space import SearchSpace
from nag.supernet.model import Supernet

# A middle-child sampler gets the space, a seeded RNG and how many children to draw.
MiddleSampler = Callable[[SearchSpace, random.Random, int], list[Architecture]]


def uniform_middle(space: SearchSpace, rng: random.Random, count: int) -> list[Architecture]:
    return [sample_uniform(space, rng) for _ in range(count)]



def sandwich_children(space: SearchSpace, rng: random.Random, count: int,
                      sampler: MiddleSampler = uniform_middle) -> list[Architecture]:
    """Biggest first (the teacher), then the smallest, then `count` middle children."""
    return [biggest(space), smallest(space), *sampler(space, rng, count)]


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class SandwichObjective(nn.Module):
    """Loss of one sandwich step.

    The biggest child sees the labels (label smoothing, dropout, weight decay: it alone is
    regularised); every other child learns only from the biggest child's detached soft predictions.
    """

    def __init__(self, supernet: Supernet, label_smoothing: float, weight_decay: float):
        super().__init__()
        self.supernet = supernet
        self.label_smoothing = label_smoothing
        self.weight_decay = weight_decay
        self._decayed = [p for name, p in supernet.named_parameters() if p.dim() > 1 and "bn" not in name
                         and ".kernel_transforms." not in name]

    def forward(self, images: torch.Tensor, labels: torch.Tensor, children: list[Architecture]) -> torch.Tensor:
        teacher_logits = self.supernet(images, children[0], dropout=True)
        loss = F.cross_entropy(teacher_logits, labels, label_smoothing=self.label_smoothing)
        if self.weight_decay > 0:
            loss = loss + 0.5 * self.weight_decay * sum(p.pow(2).sum() for p in self._decayed)
        soft = F.softmax(teacher_logits.detach(), dim=1)
        for arch in children[1:]:
            loss = loss + soft_cross_entropy(self.supernet(images, arch), soft)
        return loss
