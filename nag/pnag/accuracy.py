"""Predicted accuracy of an architecture: ridge regression on its one-hot encoding, fitted on triplets.

The server reports it with every generated model (the evaluator ranks, it does not predict accuracy).
OFA uses an MLP on the same encoding; with ~1,000 triplets a ridge fit is as good on held-out
architectures (reported as `heldout_*` in the bundle's metrics) and has no training loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nag.cost.metrics import kendall_tau

ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def _fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    xb = np.hstack([x, np.ones((len(x), 1))])
    reg = alpha * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ w[:-1] + w[-1]


class AccuracyPredictor:
    def __init__(self, weights: np.ndarray, alpha: float, metrics: dict[str, Any]):
        self.weights = np.asarray(weights, dtype=float)
        self.alpha = alpha
        self.metrics = metrics

    def predict(self, encoding: torch.Tensor | np.ndarray) -> np.ndarray:
        x = encoding.numpy() if isinstance(encoding, torch.Tensor) else encoding
        return _predict(self.weights, x.astype(float))

    @classmethod
    def fit(cls, encoding: torch.Tensor, accuracy: np.ndarray, holdout: float = 0.15, seed: int = 0
            ) -> AccuracyPredictor:
        x, y = encoding.numpy().astype(float), np.asarray(accuracy, dtype=float)
        order = np.random.default_rng(seed).permutation(len(y))
        cut = max(2, int(len(y) * holdout))
        test, train = order[:cut], order[cut:]
        scores = {}
        for a in ALPHAS:  # choose alpha on a split of the training part
            inner = train[: len(train) * 4 // 5], train[len(train) * 4 // 5:]
            w = _fit(x[inner[0]], y[inner[0]], a)
            scores[a] = float(np.sqrt(np.mean((_predict(w, x[inner[1]]) - y[inner[1]]) ** 2)))
        alpha = min(scores, key=scores.__getitem__)
        w = _fit(x[train], y[train], alpha)
        pred = _predict(w, x[test])
        metrics = {"heldout_rmse": float(np.sqrt(np.mean((pred - y[test]) ** 2))),
                   "heldout_kendall_tau": kendall_tau(pred, y[test]), "heldout_n": len(test), "alpha": alpha}
        return cls(_fit(x, y, alpha), alpha, metrics)

    def to_dict(self) -> dict[str, Any]:
        return {"weights": [float(v) for v in self.weights], "alpha": self.alpha, "metrics": self.metrics}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AccuracyPredictor:
        return cls(np.asarray(raw["weights"], dtype=float), float(raw["alpha"]), dict(raw["metrics"]))
