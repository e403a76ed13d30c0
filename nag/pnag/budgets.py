"""K learned budget embeddings and the linear interpolation between neighbours (PNAG section 3.2)."""

from __future__ import annotations

import torch
from torch import nn


def even_budgets(low: float, high: float, k: int) -> list[float]:
    """K budgets evenly spaced over [low, high] (both ends included)."""
    if k < 2:
        raise ValueError("K must be at least 2")
    return [low + (high - low) * i / (k - 1) for i in range(k)]


class BudgetEmbedding(nn.Module):
    """g(B): a learned vector per discrete budget; any other budget interpolates its two neighbours.

    For B1 < B < B2: g(B) = ξ·g(B1) + (1 − ξ)·g(B2) with ξ = (B2 − B) / (B2 − B1). Outside the range the
    nearest end is used. A single budget (one policy per budget, the independent-search baseline) is
    a constant embedding.
    """

    def __init__(self, budgets: list[float], dim: int = 64):
        super().__init__()
        values = torch.tensor(sorted(budgets), dtype=torch.float64)
        if len(values) < 1 or bool((values[1:] <= values[:-1]).any()):
            raise ValueError("budgets must be at least one value, all distinct")
        self.register_buffer("budgets", values)
        self.table = nn.Embedding(len(values), dim)
        nn.init.normal_(self.table.weight, std=0.1)

    @property
    def k(self) -> int:
        return len(self.budgets)

    def weights(self, budget: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Indices of B1 and B2 and ξ for each budget."""
        if self.k == 1:
            zero = torch.zeros(budget.shape, dtype=torch.long)
            return zero, zero, torch.ones(budget.shape, dtype=torch.float64)
        b = budget.to(torch.float64).clamp(self.budgets[0], self.budgets[-1])
        hi = torch.searchsorted(self.budgets, b, right=False).clamp(1, self.k - 1)
        lo = hi - 1
        b1, b2 = self.budgets[lo], self.budgets[hi]
        xi = ((b2 - b) / (b2 - b1)).clamp(0, 1)
        return lo, hi, xi

    def forward(self, budget: torch.Tensor) -> torch.Tensor:
        lo, hi, xi = self.weights(budget)
        xi = xi.to(self.table.weight.dtype).unsqueeze(-1)
        return xi * self.table(lo) + (1 - xi) * self.table(hi)
