"""Middle children stratified by MACs: each sandwich step covers the whole range, not only its bulk.

Uniform sampling puts most middle children near the space's median MACs (a sum of many independent
choices), so the children just below the biggest and just above the smallest are rarely trained.
Here middle child i of n gets a MACs target drawn uniformly from the i-th of n equal slices of the
range and is drawn near it by the offline proposal distribution (`nag.recipe.proposal`).
"""

from __future__ import annotations

import random

from nag.recipe.proposal import MacsProposal
from nag.space.arch import Architecture
from nag.space.space import SearchSpace


class StratifiedSampler:
    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self.proposal = MacsProposal(space, seed=seed)

    def __call__(self, space: SearchSpace, rng: random.Random, count: int) -> list[Architecture]:
        if space is not self.space and space != self.space:
            raise ValueError("the sampler was built for another search space")
        lo, hi = self.proposal.lo, self.proposal.hi
        step = (hi - lo) / max(1, count)
        return [self.proposal.draw(rng.uniform(lo + i * step, lo + (i + 1) * step), rng).arch for i in range(count)]
