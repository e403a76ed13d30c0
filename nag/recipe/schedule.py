"""Exponential decay with constant ending (BigNAS, section 3.1), after a linear warm-up."""

from __future__ import annotations

import math


def floor_start(total_steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """First step whose LR is the constant floor (the start of the constant ending)."""
    return warmup_steps + max(1, round((total_steps - warmup_steps) * decay_fraction))


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int, floor: float,
          decay_fraction: float) -> float:
    """LR at `step`: linear warm-up, exponential decay reaching `floor * base_lr` after
    `decay_fraction` of the remaining steps, then constant at that floor until the end."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = floor_start(total_steps, warmup_steps, decay_fraction) - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return base_lr * math.exp(progress * math.log(floor))
