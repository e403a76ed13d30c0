"""The architecture evaluator R(β | B; w) of PNAG (section 3.3).

Three fully connected layers on the architecture's one-hot encoding joined with the budget
embedding and (by default) two features of the architecture's predicted cost c on the device against
the budget, log(c / B) and [c ≤ B]; trained with the pairwise hinge loss of Eq. 5,
φ(d(βi, βj, B)·[R(βi|B) − R(βj|B)]) with φ(z) = max(0, 1 − z), over mini-batches of sampled
(i, j, B) instead of the full M²·K tensor.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from nag.config import EvaluatorConfig
from nag.pnag.budgets import BudgetEmbedding
from nag.pnag.dominance import DOMINANCE_RULES

log = logging.getLogger(__name__)


COST_FEATURES = 2


def cost_features(cost: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
    """[N, 2]: log(c / B) and the feasibility indicator [c ≤ B] of predicted costs c under budgets B."""
    cost, budget = cost.double(), budget.double()
    return torch.stack([torch.log(cost / budget), (cost <= budget).double()], dim=1)


class Evaluator(nn.Module):
    def __init__(self, in_dim: int, budgets: list[float], hidden: int = 256, budget_dim: int = 64,
                 cost_features: bool = True):
        super().__init__()
        self.cost_features = cost_features
        self.budget = BudgetEmbedding(budgets, budget_dim)
        extra = COST_FEATURES if cost_features else 0
        self.mlp = nn.Sequential(
            nn.Linear(in_dim + extra + budget_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, encoding: torch.Tensor, budget: torch.Tensor, cost: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Scores [N] of architectures (one-hot `encoding` [N, D], predicted `cost` [N]) under budgets [N]."""
        parts = [encoding, self.budget(budget)]
        if self.cost_features:
            if cost is None:
                raise ValueError("this evaluator reads the architectures' predicted cost: pass `cost`")
            parts.insert(1, cost_features(torch.as_tensor(cost), budget).to(encoding.dtype))
        return self.mlp(torch.cat(parts, dim=1)).squeeze(1)


def hinge_pair_loss(evaluator: Evaluator, enc: torch.Tensor, cost: torch.Tensor, acc: torch.Tensor,
                    i: torch.Tensor, j: torch.Tensor, budget: torch.Tensor, rule: str = "pareto") -> torch.Tensor:
    d = DOMINANCE_RULES[rule](cost[i], acc[i], cost[j], acc[j], budget)
    margin = d * (evaluator(enc[i], budget, cost[i]) - evaluator(enc[j], budget, cost[j]))
    return torch.clamp(1 - margin, min=0).mean()


def _distinct_pairs(n: int, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.randint(0, n, (count,), generator=gen)
    j = (i + torch.randint(1, n, (count,), generator=gen)) % n  # never equal to i
    return i, j


@torch.no_grad()
def pairwise_agreement(evaluator: Evaluator, enc: torch.Tensor, cost: torch.Tensor, acc: torch.Tensor,
                       budgets: list[float], pairs: int, seed: int, rule: str = "pareto") -> dict[str, Any]:
    """Share of sampled pairs where sign(R(βi|B) − R(βj|B)) equals d(βi, βj, B), per budget and overall."""
    gen = torch.Generator().manual_seed(seed)
    evaluator.eval()
    per_budget = []
    for b in budgets:
        i, j = _distinct_pairs(len(enc), pairs, gen)
        budget = torch.full((pairs,), float(b))
        d = DOMINANCE_RULES[rule](cost[i], acc[i], cost[j], acc[j], budget)
        scores = evaluator(enc, torch.full((len(enc),), float(b)), cost)
        agree = torch.sign(scores[i] - scores[j]) == d
        per_budget.append(float(agree.float().mean()))
    return {"overall": sum(per_budget) / len(per_budget), "per_budget": per_budget, "budgets": list(budgets)}


def train_evaluator(enc: torch.Tensor, cost: torch.Tensor, acc: torch.Tensor, budgets: list[float],
                    cfg: EvaluatorConfig, progress: bool = True) -> tuple[Evaluator, dict[str, Any]]:
    """Train on a split of the architectures; early-stop on the agreement over held-out architectures."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(enc), generator=gen)
    n_held = max(2, int(len(enc) * cfg.holdout_fraction))
    held, train = order[:n_held], order[n_held:]
    cost, acc = cost.double(), acc.double()
    model = Evaluator(enc.shape[1], budgets, cfg.hidden, cfg.budget_dim, cfg.cost_features)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lo, hi = min(budgets), max(budgets)
    best: tuple[float, dict[str, torch.Tensor], int] = (-1.0, {}, 0)
    history = []
    stale = 0
    bar = tqdm(range(1, cfg.steps + 1), desc="evaluator", disable=not progress)
    for step in bar:
        model.train()
        i, j = _distinct_pairs(len(train), cfg.batch_size, gen)
        budget = lo + (hi - lo) * torch.rand(cfg.batch_size, generator=gen, dtype=torch.float64)
        loss = hinge_pair_loss(model, enc[train], cost[train], acc[train], i, j, budget, cfg.rule)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            agreement = pairwise_agreement(model, enc[held], cost[held], acc[held], budgets,
                                           cfg.eval_pairs_per_budget // 4, cfg.seed + 1, cfg.rule)["overall"]
            history.append({"step": step, "loss": loss.item(), "heldout_agreement": agreement})
            bar.set_postfix(loss=f"{loss.item():.3f}", agree=f"{agreement:.3f}")
            if agreement > best[0]:
                best = (agreement, {k: v.clone() for k, v in model.state_dict().items()}, step)
                stale = 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    log.info("evaluator: early stop at step %d (best %.4f at step %d)", step, best[0], best[2])
                    break
    model.load_state_dict(best[1])
    final = pairwise_agreement(model, enc[held], cost[held], acc[held], budgets, cfg.eval_pairs_per_budget,
                               cfg.seed + 2, cfg.rule)
    train_agree = pairwise_agreement(model, enc[train], cost[train], acc[train], budgets,
                                     cfg.eval_pairs_per_budget // 4, cfg.seed + 3, cfg.rule)["overall"]
    report = {"heldout": final, "train_agreement": train_agree, "best_step": best[2], "history": history,
              "train_archs": len(train), "heldout_archs": len(held)}
    return model.eval(), report
