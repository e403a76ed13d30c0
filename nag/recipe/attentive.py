"""AttentiveNAS middle children (BestUp / WorstUp): of k candidates near a MACs target, train the best or worst.

Per middle child: a MACs target from a uniform prior over the space's range, `k` candidates drawn
near it by the offline proposal distribution (`nag.recipe.proposal`), then the candidate with the
lowest ("best") or highest ("worst") proxy cost is trained. The proxy is the cross-entropy on the
current mini-batch (AttentiveNAS's published setting, k = 3) or minus an accuracy predictor's
estimate.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from nag.config import ATTENTIVE_PROXIES
from nag.errors import NagError
from nag.pnag.accuracy import AccuracyPredictor
from nag.pnag.encoding import TokenEncoder
from nag.recipe.proposal import MacsProposal
from nag.space.arch import Architecture
from nag.space.space import SearchSpace
from nag.supernet.model import Supernet

STRATEGIES = ("best", "worst")


class AttentiveSampler:
    def __init__(self, supernet: Supernet, space: SearchSpace, strategy: str, candidates: int = 3,
                 proxy: str = "loss", predictor_path: str | None = None, seed: int = 0):
        if strategy not in STRATEGIES or proxy not in ATTENTIVE_PROXIES or candidates < 1:
            raise NagError(f"attentive sampling needs a strategy in {STRATEGIES}, a proxy in {ATTENTIVE_PROXIES} "
                           f"and candidates >= 1; got {strategy!r}, {proxy!r}, {candidates}")
        self.supernet, self.space = supernet, space
        self.strategy, self.candidates, self.proxy = strategy, candidates, proxy
        self.proposal = MacsProposal(space, seed=seed)
        self.predictor: AccuracyPredictor | None = None
        if proxy == "predictor":
            if not predictor_path or not Path(predictor_path).is_file():
                raise NagError(f"the predictor proxy needs an accuracy predictor file; {predictor_path!r} is none")
            self.predictor = AccuracyPredictor.from_dict(json.loads(Path(predictor_path).read_text()))
            self.encoder = TokenEncoder(space)
        self.draws = 0
        self.trials = 0
        self.misses = 0

    @torch.no_grad()
    def _costs(self, archs: list[Architecture], images: torch.Tensor, labels: torch.Tensor) -> list[float]:
        if self.predictor is not None:
            return [-float(v) for v in self.predictor.predict(self.encoder.encode_archs(archs))]
        return [float(F.cross_entropy(self.supernet(images, a), labels)) for a in archs]

    def choose(self, images: torch.Tensor, labels: torch.Tensor, rng: random.Random, count: int
               ) -> list[Architecture]:
        chosen = []
        for _ in range(count):
            target = rng.uniform(self.proposal.lo, self.proposal.hi)
            draws = [self.proposal.draw(target, rng) for _ in range(self.candidates)]
            self.draws += len(draws)
            self.trials += sum(d.trials for d in draws)
            self.misses += sum(not d.hit for d in draws)
            archs = [d.arch for d in draws]
            costs = self._costs(archs, images, labels) if len(archs) > 1 else [0.0]
            pick = min if self.strategy == "best" else max
            chosen.append(archs[costs.index(pick(costs))])
        return chosen

    def stats(self) -> dict[str, float]:
        """Mean proposal trials per candidate and the share of candidates that missed their window."""
        return {"attentive_mean_trials": round(self.trials / max(1, self.draws), 2),
                "attentive_miss_rate": round(self.misses / max(1, self.draws), 4)}
