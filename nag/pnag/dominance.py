"""Pareto dominance d(β1, β2, B) of PNAG, Eq. 6."""

from __future__ import annotations

import torch

from nag.config.models import DOMINANCE_RULE_NAMES


def dominance(cost1: float, acc1: float, cost2: float, acc2: float, budget: float) -> int:
    """+1 if β1 dominates β2 under `budget`, else −1 (PNAG Eq. 6, case by case)."""
    if cost1 <= budget and cost2 <= budget:
        return 1 if acc1 >= acc2 else -1
    return 1 if cost1 <= cost2 else -1


def dominance_tensor(cost1: torch.Tensor, acc1: torch.Tensor, cost2: torch.Tensor, acc2: torch.Tensor,
                     budget: torch.Tensor) -> torch.Tensor:
    """Eq. 6 element-wise over broadcastable tensors; returns ±1 as float."""
    both = (cost1 <= budget) & (cost2 <= budget)
    by_acc = torch.where(acc1 >= acc2, 1.0, -1.0)
    by_cost = torch.where(cost1 <= cost2, 1.0, -1.0)
    return torch.where(both, by_acc, by_cost)


def dominance_cost_only(cost1: torch.Tensor, acc1: torch.Tensor, cost2: torch.Tensor, acc2: torch.Tensor,
                        budget: torch.Tensor) -> torch.Tensor:
    """Eq. 6 without its accuracy constraint (PNAG Remark 1, Table 2): the cheaper architecture dominates."""
    del acc1, acc2, budget
    return torch.where(cost1 <= cost2, 1.0, -1.0)


# d(cost1, acc1, cost2, acc2, budget) -> ±1, element-wise.
DOMINANCE_RULES = dict(zip(DOMINANCE_RULE_NAMES, (dominance_tensor, dominance_cost_only), strict=True))
