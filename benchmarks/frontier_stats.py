"""Statistics for comparing architectures found per budget: paired bootstrap, regret, hypervolume."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 1000, seed: int = 0
                     ) -> tuple[float, float, float]:
    """Accuracy difference a − b in points on the same images, with a 95% bootstrap interval.

    `correct_*` are per-image correctness (0/1, or the mean over a method's seeds).
    """
    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError("paired bootstrap needs two equally long, non-empty 1-D vectors")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 100):  # 100 resamples at a time bounds the memory
        count = min(100, resamples - start)
        idx = rng.integers(0, len(diff), size=(count, len(diff)))
        means[start:start + count] = diff[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return 100 * float(diff.mean()), 100 * float(low), 100 * float(high)


def verdict(low: float, high: float) -> str:
    """'win' / 'loss' when the interval excludes zero, else 'tie'."""
    if low > 0:
        return "win"
    if high < 0:
        return "loss"
    return "tie"


def hypervolume(points: Sequence[tuple[float, float]], ref_cost: float, ref_acc: float) -> float:
    """Area (cost × accuracy points) dominated by `points` (lower cost, higher accuracy) up to the reference.

    Points costlier than `ref_cost` or less accurate than `ref_acc` add nothing.
    """
    kept = sorted((c, a) for c, a in points if c <= ref_cost and a > ref_acc)
    area, best = 0.0, ref_acc
    for i, (cost, acc) in enumerate(kept):
        best = max(best, acc)
        nxt = kept[i + 1][0] if i + 1 < len(kept) else ref_cost
        area += (nxt - cost) * (best - ref_acc)
    return area


def regrets(acc: dict[str, list[float | None]]) -> dict[str, list[float | None]]:
    """Per method and budget: the best accuracy any method reached at that budget minus this method's.

    `acc[method][i]` is the method's accuracy at budget i, or None where its pick was infeasible
    (infeasible picks are neither a best nor given a regret).
    """
    n = len(next(iter(acc.values())))
    best = [max((v[i] for v in acc.values() if v[i] is not None), default=None) for i in range(n)]
    return {m: [None if v[i] is None or best[i] is None else best[i] - v[i] for i in range(n)]
            for m, v in acc.items()}
