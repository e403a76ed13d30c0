"""Sampling architectures that cover a space's whole cost range.

Uniform sampling concentrates on mid-sized children (a sum of many independent choices), so the
cheapest and most expensive ends are almost never drawn. A *tilted* sample draws every decision with
probability ∝ exp(tilt · position of the choice), which reaches both ends; stratifying a pool of tilted
samples into equal-width cost bins then gives an even cover of the range.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from nag.space.arch import Architecture, assemble, biggest, smallest
from nag.space.plan import count_macs
from nag.space.space import SearchSpace


def _tilted_choice(choices: tuple[int, ...], tilt: float, rng: random.Random) -> int:
    if len(choices) == 1:
        return choices[0]
    weights = [math.exp(tilt * i / (len(choices) - 1)) for i in range(len(choices))]
    return rng.choices(choices, weights=weights)[0]


def sample_tilted(space: SearchSpace, tilt: float, rng: random.Random) -> Architecture:
    """Each decision drawn with probability ∝ exp(tilt · i / (n − 1)); tilt 0 is uniform sampling."""
    return assemble(space, lambda _d, _s, choices: _tilted_choice(choices, tilt, rng))


def sample_stratified(space: SearchSpace, n: int, rng: random.Random, *, bins: int = 20, pool_size: int = 8000,
                      max_tilt: float = 4.0, cost: Callable[[Architecture], float] | None = None,
                      include_extremes: bool = True) -> list[Architecture]:
    """`n` distinct architectures spread evenly over the cost range (MACs unless `cost` is given).

    A pool of `max(pool_size, 20 · n)` tilted samples is binned into `bins` equal-width cost bins between the
    smallest and the biggest child; bins are then drawn from in turn, so sparse bins give all they have.
    The smallest and biggest children come first when `include_extremes`. With the same seed, a
    smaller `n` gives a prefix of a larger one (while `20 · n <= pool_size`), so a profiling run can
    be extended without re-measuring.
    """
    if n < 1:
        return []
    cost_of = cost or (lambda a: float(count_macs(a, space)))
    chosen: list[Architecture] = []
    seen: set[str] = set()

    def take(arch: Architecture) -> None:
        if arch.arch_id not in seen and len(chosen) < n:
            seen.add(arch.arch_id)
            chosen.append(arch)

    lo_arch, hi_arch = smallest(space), biggest(space)
    if include_extremes:
        take(lo_arch)
        take(hi_arch)
    lo, hi = cost_of(lo_arch), cost_of(hi_arch)
    width = (hi - lo) / bins or 1.0
    buckets: list[list[Architecture]] = [[] for _ in range(bins)]
    for _ in range(max(pool_size, 20 * n)):
        arch = sample_tilted(space, rng.uniform(-max_tilt, max_tilt), rng)
        index = min(bins - 1, max(0, int((cost_of(arch) - lo) / width)))
        buckets[index].append(arch)
    while len(chosen) < n and any(buckets):
        for bucket in buckets:
            if bucket:
                take(bucket.pop(rng.randrange(len(bucket))))
    return chosen
