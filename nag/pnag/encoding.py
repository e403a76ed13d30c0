"""Architecture encodings from token sequences: one-hot per decision, inactive layers zeroed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nag.space.arch import Architecture, decisions, to_tokens
from nag.space.dimensions import DEPTH
from nag.space.space import SearchSpace


class TokenEncoder:
    """Encodes a batch of token sequences `[N, T]` into `[N, D]` one-hot features.

    Kernel and expansion tokens of layers beyond their stage's depth carry no meaning, so their
    one-hot blocks are zeroed; the same mask tells the generator which decisions count.
    """

    def __init__(self, space: SearchSpace):
        self.space = space
        self.decisions = decisions(space)
        self.sizes = [len(d.choices) for d in self.decisions]
        self.dim = sum(self.sizes)
        self.offsets = torch.tensor([sum(self.sizes[:i]) for i in range(len(self.sizes))])
        # For each decision: the position of its stage's depth decision and its layer index (or -1).
        depth_at = {d.stage: i for i, d in enumerate(self.decisions) if d.dimension.name == DEPTH}
        self.depth_pos = torch.tensor([-1 if d.layer is None else depth_at[d.stage] for d in self.decisions])
        self.layer = torch.tensor([-1 if d.layer is None else d.layer for d in self.decisions])
        # depth value of each depth token, per decision position (padded).
        width = max(self.sizes)
        values = torch.zeros(len(self.decisions), width, dtype=torch.long)
        for i, d in enumerate(self.decisions):
            values[i, : len(d.choices)] = torch.tensor(d.choices)
        self.choice_values = values

    @property
    def length(self) -> int:
        return len(self.decisions)

    def tokens(self, archs: Sequence[Architecture]) -> torch.Tensor:
        return torch.tensor([to_tokens(a, self.space) for a in archs], dtype=torch.long)

    def active(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[N, T]` bool: which decisions matter (layer decisions only up to the stage's depth)."""
        is_layer = self.layer >= 0
        safe_pos = self.depth_pos.clamp(min=0)
        depth_tokens = tokens[:, safe_pos]  # [N, T]
        depth_values = self.choice_values[safe_pos.unsqueeze(0).expand_as(depth_tokens), depth_tokens]
        return ~is_layer | (self.layer < depth_values)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        out = torch.zeros(n, self.dim)
        index = self.offsets.unsqueeze(0) + tokens
        out.scatter_(1, index, self.active(tokens).float())
        return out

    def encode_archs(self, archs: Sequence[Architecture]) -> torch.Tensor:
        return self.encode(self.tokens(archs))
