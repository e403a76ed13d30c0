"""A proposal distribution for drawing architectures near a MACs target (AttentiveNAS, section 3.3).

Built offline from a table of sampled architectures: their MACs are split into equal-width buckets
and, per bucket, every decision gets a categorical distribution (Laplace-smoothed counts; layer
decisions only count where the layer is active). A constrained draw picks the target's bucket and
samples each decision from that bucket's categoricals until the MACs land in the target window, with
a bound on the trials. Uniform sampling would need hundreds of trials at either end of the range.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from nag.pnag.encoding import TokenEncoder
from nag.space.arch import Architecture, from_tokens
from nag.space.plan import count_macs
from nag.space.sampling import sample_tilted
from nag.space.space import SearchSpace


@dataclass(frozen=True)
class ProposalDraw:
    arch: Architecture
    macs: int
    trials: int
    hit: bool  # False: no trial landed in the window within the bound; the closest one is returned


class MacsProposal:
    """Per-MACs-bucket categorical distributions over every decision of the space."""

    def __init__(self, space: SearchSpace, buckets: int = 20, table_size: int = 10_000, max_trials: int = 100,
                 seed: int = 0):
        if buckets < 1 or table_size < buckets or max_trials < 1:
            raise ValueError("need buckets >= 1, table_size >= buckets and max_trials >= 1")
        self.space = space
        self.max_trials = max_trials
        rng = random.Random(seed)
        table = [sample_tilted(space, rng.uniform(-4.0, 4.0), rng) for _ in range(table_size)]
        macs = np.array([count_macs(a, space) for a in table], dtype=np.float64)
        # The prior's range: the table's 1st-99th percentile (the extremes are single architectures).
        self.lo, self.hi = (float(v) for v in np.percentile(macs, [1, 99]))
        self.width = (self.hi - self.lo) / buckets or 1.0
        self.buckets = buckets
        encoder = TokenEncoder(space)
        tokens = encoder.tokens(table)
        active = encoder.active(tokens).numpy()
        tokens_np = tokens.numpy()
        bucket_of = np.array([self.bucket(m) for m in macs])
        self.probs = []
        for pos, size in enumerate(encoder.sizes):
            counts = np.ones((buckets, size))  # Laplace smoothing
            rows = active[:, pos]
            np.add.at(counts, (bucket_of[rows], tokens_np[rows, pos]), 1)
            self.probs.append(counts / counts.sum(axis=1, keepdims=True))

    def bucket(self, macs: float) -> int:
        return min(self.buckets - 1, max(0, int((macs - self.lo) / self.width)))

    def draw(self, target: float, rng: random.Random, window: float | None = None) -> ProposalDraw:
        """An architecture with |MACs − target| ≤ window/2 (default window: one bucket's width)."""
        half = (window if window is not None else self.width) / 2
        probs = [p[self.bucket(target)] for p in self.probs]
        best: tuple[float, Architecture, int] | None = None
        for trial in range(1, self.max_trials + 1):
            tokens = [_categorical(p, rng) for p in probs]
            arch = from_tokens(tokens, self.space)
            macs = count_macs(arch, self.space)
            if abs(macs - target) <= half:
                return ProposalDraw(arch, macs, trial, True)
            if best is None or abs(macs - target) < best[0]:
                best = (abs(macs - target), arch, macs)
        assert best is not None
        return ProposalDraw(best[1], best[2], self.max_trials, False)

    def draw_from_prior(self, rng: random.Random) -> ProposalDraw:
        """A MACs target drawn uniformly over the table's range (AttentiveNAS's prior), then `draw`."""
        return self.draw(rng.uniform(self.lo, self.hi), rng)


def _categorical(p: np.ndarray, rng: random.Random) -> int:
    u, acc = rng.random(), 0.0
    for i, q in enumerate(p):
        acc += q
        if u < acc:
            return i
    return len(p) - 1

