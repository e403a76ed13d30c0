"""Batch augmentation on uint8 tensors. One crop per image, shared by every child of a sandwich step."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Random crop of the native size from a zero-padded image and a random horizontal flip.

    Returns float images in [0, 1]. Children at lower resolutions resize this same patch inside the
    model, so the teacher and the students see the same content (BigNAS, section 3.1).
    """
    x = images.float().div_(255.0)
    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
        x = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
        x = x.gather(3, cols)
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x[mask] = x[mask].flip(-1)
    return x
