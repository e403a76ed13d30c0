"""The budget-conditioned LSTM generator π(· | B; θ) of PNAG (sections 3.1-3.2), trained with REINFORCE.

At each decision the LSTM cell reads the previous choice's embedding joined with the budget
embedding and a per-decision linear head gives the softmax over that decision's choices. Layer
decisions beyond their stage's sampled depth are still drawn (the sequence has a fixed length) but
count neither in the log-probability nor in the entropy: they do not change the architecture.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from nag.core.budgets import BudgetEmbedding
from nag.core.encoding import TokenEncoder
from nag.core.evaluator import Evaluator
from nag.space.space import SearchSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeneratorConfig:
    hidden: int = 64
    budget_dim: int = 64
    steps: int = 400
    samples_per_budget: int = 32  # N
    lr: float = 1e-3
    entropy_weight: float = 0.05  # λ
    baseline_decay: float = 0.9  # moving-average baseline per budget
    # Divide each budget's advantages by the spread of its rewards in the step: the evaluator's
    # score scale differs between budgets, and raw scores made the policy collapse within 100 steps.
    normalize_advantage: bool = True
    log_every: int = 20
    seed: int = 0


@dataclass
class Sample:
    tokens: torch.Tensor  # [N, T]
    log_prob: torch.Tensor  # [N]
    entropy: torch.Tensor  # [N]


class Generator(nn.Module):
    def __init__(self, space: SearchSpace, budgets: list[float], hidden: int = 64, budget_dim: int = 64):
        super().__init__()
        self.encoder = TokenEncoder(space)
        sizes = self.encoder.sizes
        self.budget = BudgetEmbedding(budgets, budget_dim)
        self.start = nn.Parameter(torch.zeros(hidden))
        self.choice_embedding = nn.Embedding(sum(sizes), hidden)
        self.cell = nn.LSTMCell(hidden + budget_dim, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.hidden = hidden

    def sample(self, budget: torch.Tensor, generator: torch.Generator | None = None) -> Sample:
        """Sample one architecture per entry of `budget` (a batch), with log-probabilities and entropies."""
        enc = self.encoder
        n = budget.shape[0]
        b = self.budget(budget)
        h = torch.zeros(n, self.hidden)
        c = torch.zeros(n, self.hidden)
        x = self.start.expand(n, -1)
        tokens = torch.zeros(n, enc.length, dtype=torch.long)
        log_prob = torch.zeros(n)
        entropy = torch.zeros(n)
        for t, head in enumerate(self.heads):
            h, c = self.cell(torch.cat([x, b], dim=1), (h, c))
            logits = head(h)
            logp = F.log_softmax(logits, dim=1)
            choice = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
            tokens[:, t] = choice
            if enc.layer[t] >= 0:  # active only while the layer index is below the stage's depth
                pos = int(enc.depth_pos[t])
                depth = enc.choice_values[pos][tokens[:, pos]]
                active = (enc.layer[t] < depth).float()
            else:
                active = torch.ones(n)
            log_prob = log_prob + active * logp.gather(1, choice.unsqueeze(1)).squeeze(1)
            entropy = entropy - active * (logp.exp() * logp).sum(1)
            x = self.choice_embedding(enc.offsets[t] + choice)
        return Sample(tokens, log_prob, entropy)


def train_generator(generator: Generator, evaluator: Evaluator, cfg: GeneratorConfig,
                    feasibility: Callable[[torch.Tensor, float], float] | None = None,
                    log_path: str | Path | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """REINFORCE with the entropy bonus (PNAG Eq. 3-4) on the evaluator's reward, over the K budgets.

    `feasibility(tokens, budget)` (optional) returns the share of sampled architectures within budget,
    for the log. Each log line holds per budget the mean reward, the policy entropy and feasibility.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    budgets = generator.budget.budgets.float()
    k, n = len(budgets), cfg.samples_per_budget
    budget_batch = budgets.repeat_interleave(n)
    baseline = torch.zeros(k)
    seeded = False
    opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr)
    evaluator.eval()
    for p in evaluator.parameters():
        p.requires_grad_(False)
    history: list[dict[str, Any]] = []
    log_file = Path(log_path).open("w") if log_path else None  # noqa: SIM115 (closed in `finally`)
    try:
        bar = tqdm(range(1, cfg.steps + 1), desc="generator", disable=not progress)
        for step in bar:
            generator.train()
            s = generator.sample(budget_batch, gen)
            with torch.no_grad():
                reward = evaluator(generator.encoder.encode(s.tokens), budget_batch.double()).view(k, n)
            mean_reward = reward.mean(1)
            if not seeded:
                baseline, seeded = mean_reward.clone(), True
            advantage = reward - baseline.unsqueeze(1)
            if cfg.normalize_advantage:
                advantage = advantage / (reward.std(dim=1, keepdim=True) + 1e-6)
            advantage = advantage.view(-1)
            loss = -(advantage * s.log_prob).mean() - cfg.entropy_weight * s.entropy.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            baseline = cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * mean_reward
            if step % cfg.log_every == 0 or step == cfg.steps:
                entropy = s.entropy.detach().view(k, n).mean(1)
                record: dict[str, Any] = {
                    "step": step, "budgets": [float(b) for b in budgets],
                    "mean_reward": [float(r) for r in mean_reward], "entropy": [float(e) for e in entropy],
                }
                if feasibility is not None:
                    tokens = s.tokens.view(k, n, -1)
                    record["feasible"] = [feasibility(tokens[i], float(budgets[i])) for i in range(k)]
                history.append(record)
                bar.set_postfix(reward=f"{float(mean_reward.mean()):.3f}", entropy=f"{float(entropy.mean()):.2f}")
                if log_file:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
    finally:
        if log_file:
            log_file.close()
        for p in evaluator.parameters():
            p.requires_grad_(True)
    return history
