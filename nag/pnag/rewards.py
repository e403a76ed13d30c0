"""Alternative generator rewards for PNAG's Table 2 ablation, on predicted accuracy and predicted cost.

- MnasNet's multi-objective reward: ACC · (c / B)^w, with w = α if c ≤ B else β (soft: α = β = −0.07).
- TuNAS's absolute reward: ACC + β · |c / B − 1| (β < 0).

ACC is the accuracy predictor's estimate as a fraction, c the device's predicted cost. PNAG's own
reward is the evaluator's score (`nag.pnag.generator.train_generator` with an `Evaluator`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from nag.cost.store import Device
from nag.pnag.accuracy import AccuracyPredictor
from nag.pnag.encoding import TokenEncoder
from nag.pnag.generator import RewardFn
from nag.space.arch import from_tokens

MNASNET_EXPONENT = -0.07
TUNAS_BETA = -0.07


class PredictedObjectives:
    """(accuracy fraction, cost) of token sequences, from the accuracy predictor and the device's cost model."""

    def __init__(self, encoder: TokenEncoder, accuracy: AccuracyPredictor, device: Device):
        self.encoder = encoder
        self.accuracy = accuracy
        self.device = device

    def __call__(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acc = self.accuracy.predict(self.encoder.encode(tokens)) / 100.0
        cost = self.device.predict([from_tokens(t, self.encoder.space) for t in tokens.tolist()])
        return torch.as_tensor(np.asarray(acc), dtype=torch.float64), torch.as_tensor(cost, dtype=torch.float64)


def mnasnet_reward(objectives: PredictedObjectives, alpha: float = MNASNET_EXPONENT,
                   beta: float = MNASNET_EXPONENT) -> RewardFn:
    def reward(tokens: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        acc, cost = objectives(tokens)
        ratio = cost / budget.double()
        exponent = torch.where(ratio <= 1, torch.full_like(ratio, alpha), torch.full_like(ratio, beta))
        return acc * ratio.pow(exponent)

    return reward


def tunas_reward(objectives: PredictedObjectives, beta: float = TUNAS_BETA) -> RewardFn:
    def reward(tokens: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        acc, cost = objectives(tokens)
        return acc + beta * (cost / budget.double() - 1).abs()

    return reward


REWARDS: dict[str, Callable[[PredictedObjectives], RewardFn]] = {
    "mnasnet": mnasnet_reward,
    "tunas": tunas_reward,
}
