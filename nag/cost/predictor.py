"""Latency predictors: a ridge regression on layer features fitted to relative error, and the exact
MACs cost of the `flops` pseudo-device. Both predict a batch of architectures at once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nag.artifacts import atomic_write_bytes, read_json
from nag.cost.features import feature_names, features_matrix
from nag.errors import CheckpointError
from nag.space.arch import Architecture
from nag.space.plan import count_macs
from nag.space.space import SearchSpace

FORMAT = 1
ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 3.0, 10.0, 30.0)


def space_fingerprint(space: SearchSpace) -> str:
    return hashlib.sha256(space.to_json().encode()).hexdigest()[:16]


class CostModel(Protocol):
    unit: str

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray: ...


@dataclass(frozen=True)
class FlopsCostModel:
    """The `flops` pseudo-device: the cost is the analytic MACs count, in millions."""

    space: SearchSpace
    unit: str = "MMACs"

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        return np.array([count_macs(a, self.space) / 1e6 for a in archs], dtype=float)


def _solve(x: np.ndarray, y: np.ndarray, scale: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression minimising Σ((x·w − y) / y)² + α‖w·scale‖² (the bias is not penalised)."""
    xs = x / scale / y[:, None]  # dividing each row by its target turns squared error into relative error
    target = np.ones(len(y))
    penalty = np.sqrt(alpha) * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    a = np.vstack([xs, penalty])
    b = np.concatenate([target, np.zeros(x.shape[1])])
    w, *_ = np.linalg.lstsq(a, b, rcond=None)
    return w / scale


def _cv_error(x: np.ndarray, y: np.ndarray, scale: np.ndarray, alpha: float, folds: int, seed: int) -> float:
    order = np.random.default_rng(seed).permutation(len(y))
    errors = []
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        w = _solve(x[train], y[train], scale, alpha)
        errors.append(np.abs(x[test] @ w / y[test] - 1))
    return float(np.mean(np.concatenate(errors)))


@dataclass(frozen=True)
class LatencyPredictor:
    """latency ≈ features(arch) · weights, fitted to minimise relative error (see `features.py`)."""

    device: str
    unit: str
    space: SearchSpace
    names: tuple[str, ...]
    weights: np.ndarray
    alpha: float
    latency_range: tuple[float, float]
    metrics: dict[str, Any]

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        return features_matrix(archs, self.space) @ self.weights

    @classmethod
    def fit(cls, archs: Sequence[Architecture], latencies: Sequence[float], space: SearchSpace, device: str,
            unit: str = "ms", folds: int = 5, seed: int = 0) -> LatencyPredictor:
        x = features_matrix(archs, space)
        y = np.asarray(latencies, dtype=float)
        if len(y) < max(10, folds):
            raise ValueError(f"need at least {max(10, folds)} measurements to fit a predictor, got {len(y)}")
        scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
        cv = {a: _cv_error(x, y, scale, a, folds, seed) for a in ALPHAS}
        alpha = min(cv, key=cv.__getitem__)
        w = _solve(x, y, scale, alpha)
        metrics = {"cv_mean_abs_rel_error": cv[alpha], "train_size": len(y)}
        return cls(device, unit, space, tuple(feature_names(space)), w, alpha, (float(y.min()), float(y.max())),
                   metrics)

    def with_metrics(self, **metrics: Any) -> LatencyPredictor:
        return LatencyPredictor(self.device, self.unit, self.space, self.names, self.weights, self.alpha,
                                self.latency_range, {**self.metrics, **metrics})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "kind": "ridge-layer-features", "device": self.device, "unit": self.unit,
            "space_fingerprint": space_fingerprint(self.space), "feature_names": list(self.names),
            "weights": [float(v) for v in self.weights], "alpha": self.alpha,
            "latency_range": list(self.latency_range), "metrics": self.metrics,
        }

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(Path(path), (json.dumps(self.to_dict(), indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: str | Path, space: SearchSpace) -> LatencyPredictor:
        raw = read_json(path, "latency predictor", missing_hint="; run `nag profile-device`")
        try:
            if raw["format"] != FORMAT or raw["kind"] != "ridge-layer-features":
                raise CheckpointError(f"latency predictor {path} has format {raw['format']}/{raw['kind']}, "
                                      f"expected {FORMAT}/ridge-layer-features")
            if raw["space_fingerprint"] != space_fingerprint(space):
                raise CheckpointError(f"latency predictor {path} was fitted on another search space; "
                                      "re-run `nag profile-device`")
            names = tuple(raw["feature_names"])
            weights = np.asarray(raw["weights"], dtype=float)
            if names != tuple(feature_names(space)) or len(weights) != len(names):
                raise CheckpointError(f"latency predictor {path} has features that this version does not compute")
            lo, hi = (float(v) for v in raw["latency_range"])
            return cls(str(raw["device"]), str(raw["unit"]), space, names, weights, float(raw["alpha"]), (lo, hi),
                       dict(raw["metrics"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"latency predictor {path} is malformed: {exc!r}") from None
