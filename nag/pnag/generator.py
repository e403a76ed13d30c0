"""The budget-conditioned LSTM generator π(· | B; θ) of PNAG (sections 3.1-3.2), trained with REINFORCE.

At each decision the LSTM cell reads the previous choice's embedding joined with the budget
embedding and a per-decision linear head gives the softmax over that decision's choices. Layer
decisions beyond their stage's sampled depth are still drawn (the sequence has a fixed length) but
count neither in the log-probability nor in the entropy: they do not change the architecture.

Two options from FP-NAS (both off by default):
- adaptive sampling (FP-NAS Eq. 4): each budget draws K = λ·H architectures per step, H being the
  policy's entropy at that budget in the previous step, clipped to a range;
- coarse-to-fine: a `factorized` generator adds per-decision logits computed from the budget embedding
  alone and starts with zero LSTM heads. For the first `factorized_steps` only those logits are used
  and trained (every decision independent given the budget: a factorized distribution); then the LSTM
  heads join in. Because they start at zero, the switch leaves the distribution unchanged.
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

from nag.config import GeneratorConfig
from nag.pnag.budgets import BudgetEmbedding
from nag.pnag.encoding import TokenEncoder
from nag.pnag.evaluator import Evaluator
from nag.space.arch import Architecture, from_tokens
from nag.space.space import SearchSpace

log = logging.getLogger(__name__)


def adaptive_sample_count(entropy: torch.Tensor, lam: float, lo: int, hi: int) -> torch.Tensor:
    """FP-NAS Eq. 4, K = λ·H, rounded and clipped to [lo, hi] (one count per budget)."""
    return (lam * entropy).round().clamp(lo, hi).long()


# (tokens [N, T], budgets [N]) -> rewards [N]: what the policy maximises.
RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Sample:
    tokens: torch.Tensor  # [N, T]
    log_prob: torch.Tensor  # [N]
    entropy: torch.Tensor  # [N]


class Generator(nn.Module):
    def __init__(self, space: SearchSpace, budgets: list[float], hidden: int = 64, budget_dim: int = 64,
                 factorized: bool = False):
        super().__init__()
        self.encoder = TokenEncoder(space)
        sizes = self.encoder.sizes
        self.budget = BudgetEmbedding(budgets, budget_dim)
        self.start = nn.Parameter(torch.zeros(hidden))
        self.choice_embedding = nn.Embedding(sum(sizes), hidden)
        self.cell = nn.LSTMCell(hidden + budget_dim, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.hidden = hidden
        self.factorized = factorized
        # Coarse stage of FP-NAS: per-decision logits from the budget alone; the LSTM heads start at zero.
        self.factor = nn.Linear(budget_dim, sum(sizes)) if factorized else None
        self.coarse = False  # while True, sample() uses the factorized logits only
        if factorized:
            for head in self.heads:
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    @classmethod
    def for_config(cls, space: SearchSpace, budgets: list[float], cfg: GeneratorConfig) -> Generator:
        """A fresh generator of `cfg`'s size, factorized when `cfg` trains a coarse stage first."""
        return cls(space, budgets, cfg.hidden, cfg.budget_dim, factorized=cfg.factorized_steps > 0)

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
        factor = self.factor(b).split(enc.sizes, dim=1) if self.factor is not None else None
        if self.coarse and factor is None:
            raise ValueError("the coarse (factorized) stage needs a Generator built with factorized=True")
        for t, head in enumerate(self.heads):
            if self.coarse:
                assert factor is not None
                logits = factor[t]
            else:
                h, c = self.cell(torch.cat([x, b], dim=1), (h, c))
                logits = head(h) if factor is None else head(h) + factor[t]
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
            if not self.coarse:
                x = self.choice_embedding(enc.offsets[t] + choice)
        return Sample(tokens, log_prob, entropy)


# Token sequences [N, T] -> their predicted cost [N] on a device.
TokenCost = Callable[[torch.Tensor], torch.Tensor]


def token_cost(predict: Callable[[list[Architecture]], Any], space: SearchSpace) -> TokenCost:
    """A TokenCost from a cost model over architectures (e.g. `Device.predict`)."""

    def cost(tokens: torch.Tensor) -> torch.Tensor:
        archs = [from_tokens(t, space) for t in tokens.tolist()]
        return torch.as_tensor(predict(archs), dtype=torch.float64)

    return cost


def train_generator(generator: Generator, reward: Evaluator | RewardFn, cfg: GeneratorConfig,
                    cost: TokenCost | None = None, log_path: str | Path | None = None, progress: bool = True
                    ) -> list[dict[str, Any]]:
    """REINFORCE with the entropy bonus (PNAG Eq. 3-4) over the generator's K budgets.

    `reward` is the evaluator (PNAG's reward, its score R(β | B)) or any reward function of (tokens,
    budgets), e.g. the MnasNet and TuNAS rewards of the ablations. `cost` is the device's cost model:
    an evaluator with cost features reads it, and with it each log line also holds the share of
    sampled architectures within budget. Each log line holds per budget the mean reward, the policy
    entropy and the samples drawn, and the architectures sampled so far. Each budget weighs equally in
    the loss whatever its sample count.
    """
    if cfg.factorized_steps > 0 and not generator.factorized:
        raise ValueError("factorized_steps > 0 needs a Generator built with factorized=True")
    evaluator = reward if isinstance(reward, Evaluator) else None
    reward_fn = None if isinstance(reward, Evaluator) else reward
    needs_cost = evaluator is not None and evaluator.cost_features
    if needs_cost and cost is None:
        raise ValueError("this evaluator reads the architectures' predicted cost: pass the device's TokenCost")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    budgets = generator.budget.budgets.float()
    k = len(budgets)
    counts = torch.full((k,), cfg.samples_per_budget, dtype=torch.long)
    baseline = torch.zeros(k)
    seeded = False
    sampled_total = 0
    opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr)
    if evaluator is not None:
        evaluator.eval()
        for p in evaluator.parameters():
            p.requires_grad_(False)
    history: list[dict[str, Any]] = []
    log_file = Path(log_path).open("w") if log_path else None  # noqa: SIM115 (closed in `finally`)
    try:
        bar = tqdm(range(1, cfg.steps + 1), desc="generator", disable=not progress)
        for step in bar:
            generator.train()
            generator.coarse = step <= cfg.factorized_steps
            budget_batch = budgets.repeat_interleave(counts)
            groups = [slice(int(a), int(b)) for a, b in zip(counts.cumsum(0) - counts, counts.cumsum(0), strict=True)]
            s = generator.sample(budget_batch, gen)
            sampled_total += len(budget_batch)
            costs = cost(s.tokens) if needs_cost and cost is not None else None
            with torch.no_grad():
                if evaluator is not None:
                    reward = evaluator(generator.encoder.encode(s.tokens), budget_batch.double(), costs).float()
                else:
                    assert reward_fn is not None
                    reward = reward_fn(s.tokens, budget_batch).float()
            mean_reward = torch.stack([reward[g].mean() for g in groups])
            if not seeded:
                baseline, seeded = mean_reward.clone(), True
            loss = torch.zeros(())
            for i, g in enumerate(groups):
                advantage = reward[g] - baseline[i]
                if cfg.normalize_advantage:
                    advantage = advantage / (reward[g].std() + 1e-6)
                loss = loss - (advantage * s.log_prob[g]).mean() - cfg.entropy_weight * s.entropy[g].mean()
            loss = loss / k
            opt.zero_grad()
            loss.backward()
            opt.step()
            baseline = cfg.baseline_decay * baseline + (1 - cfg.baseline_decay) * mean_reward
            entropy = torch.stack([s.entropy[g].detach().mean() for g in groups])
            drawn = counts
            if cfg.adaptive_lambda is not None:
                counts = adaptive_sample_count(entropy, cfg.adaptive_lambda, cfg.min_samples, cfg.max_samples)
            if step % cfg.log_every == 0 or step == cfg.steps:
                record: dict[str, Any] = {
                    "step": step, "budgets": [float(b) for b in budgets],
                    "mean_reward": [float(r) for r in mean_reward], "entropy": [float(e) for e in entropy],
                    "samples": [int(c) for c in drawn], "sampled_total": sampled_total,
                    "stage": "factorized" if generator.coarse else "joint",
                }
                if cost is not None:
                    costs = cost(s.tokens) if costs is None else costs
                    record["feasible"] = [float((costs[g] <= float(budgets[i])).double().mean())
                                          for i, g in enumerate(groups)]
                history.append(record)
                bar.set_postfix(reward=f"{float(mean_reward.mean()):.3f}", entropy=f"{float(entropy.mean()):.2f}")
                if log_file:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
    finally:
        generator.coarse = False
        if log_file:
            log_file.close()
        if evaluator is not None:
            for p in evaluator.parameters():
                p.requires_grad_(True)
    return history
