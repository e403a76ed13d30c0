"""Accuracy of children, BN-calibrated the way they are deployed."""

from __future__ import annotations

from collections.abc import Callable

import torch

from nag.data.datasets import ImageSet
from nag.space.arch import Architecture
from nag.supernet.model import Supernet
from nag.supernet.static import child


@torch.no_grad()
def accuracy(model: Callable[[torch.Tensor], torch.Tensor], data: ImageSet, batch_size: int = 1000) -> float:
    """Top-1 accuracy in percent of `model` (native images in [0, 1] -> logits) on `data`."""
    correct = 0
    for start in range(0, len(data), batch_size):
        index = slice(start, start + batch_size)
        logits = model(data.as_float(index))
        correct += int((logits.argmax(1) == data.labels[index]).sum())
    return 100.0 * correct / max(1, len(data))


def child_accuracy(supernet: Supernet, arch: Architecture, calibration: torch.Tensor, data: ImageSet,
                   batch_size: int = 1000, calib_batch: int = 250) -> float:
    """Slice `arch`, re-calibrate its BN on `calibration` (float images), and measure it on `data`."""
    static = child(supernet, arch, calibration, calib_batch)
    return accuracy(static, data, batch_size)
