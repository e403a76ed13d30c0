"""Agreement metrics between predicted and measured costs."""

from __future__ import annotations

import numpy as np


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a over all pairs (O(n²) memory; fine for the few hundred held-out points used here)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(a)
    if n < 2:
        return float("nan")
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    upper = np.triu_indices(n, k=1)
    return float((da[upper] * db[upper]).sum() / len(upper[0]))


def prediction_metrics(predicted: np.ndarray, measured: np.ndarray, tolerance: float = 0.10) -> dict[str, float]:
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    rel = predicted / measured - 1
    return {
        "n": len(measured),
        "within_10pct": float(np.mean(np.abs(rel) <= tolerance)),
        "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
        "rmse": float(np.sqrt(np.mean((predicted - measured) ** 2))),
        "mean_abs_rel_error": float(np.mean(np.abs(rel))),
        "max_abs_rel_error": float(np.max(np.abs(rel))),
        "kendall_tau": kendall_tau(predicted, measured),
    }
