"""OFA-style accuracy predictor: an MLP on the one-hot architecture encoding, fitted on the triplets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nag.cost.metrics import kendall_tau


@dataclass(frozen=True)
class MLPPredictorConfig:
    hidden: int = 400  # OFA's predictor: three hidden layers of 400
    layers: int = 3
    epochs: int = 300
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    holdout_fraction: float = 0.15
    seed: int = 0


class MLPAccuracyPredictor(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 400, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, 1))
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("std", torch.ones(()))
        self.metrics: dict[str, Any] = {}

    def forward(self, encoding: torch.Tensor) -> torch.Tensor:
        return self.net(encoding).squeeze(1) * self.std + self.mean

    @torch.no_grad()
    def predict(self, encoding: torch.Tensor) -> np.ndarray:
        self.eval()
        return self(encoding.float()).double().numpy()


def fit_mlp_predictor(encoding: torch.Tensor, accuracy: np.ndarray, cfg: MLPPredictorConfig
                      ) -> MLPAccuracyPredictor:
    """MSE on standardised accuracy; keeps the epoch with the lowest held-out RMSE, then reports it."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x = encoding.float()
    y = torch.as_tensor(accuracy, dtype=torch.float32)
    order = torch.randperm(len(y), generator=gen)
    cut = max(2, int(len(y) * cfg.holdout_fraction))
    held, train = order[:cut], order[cut:]
    model = MLPAccuracyPredictor(x.shape[1], cfg.hidden, cfg.layers)
    model.mean.fill_(float(y[train].mean()))
    model.std.fill_(float(y[train].std()))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best: tuple[float, dict[str, torch.Tensor]] = (float("inf"), {})
    for _ in range(cfg.epochs):
        model.train()
        perm = train[torch.randperm(len(train), generator=gen)]
        for start in range(0, len(perm), cfg.batch_size):
            idx = perm[start:start + cfg.batch_size]
            loss = ((model(x[idx]) - y[idx]) / model.std).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            model.eval()
            rmse = float((model(x[held]) - y[held]).pow(2).mean().sqrt())
        if rmse < best[0]:
            best = (rmse, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    pred = model.predict(x[held])
    model.metrics = {"heldout_rmse": best[0], "heldout_kendall_tau": kendall_tau(pred, y[held].numpy()),
                     "heldout_n": len(held)}
    return model.eval()
