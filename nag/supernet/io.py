"""Saving and loading a trained supernet together with its calibration images."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nag.artifacts import load_artifact, save_artifact
from nag.errors import CheckpointError
from nag.space.space import SearchSpace
from nag.supernet.layers import is_size_transform
from nag.supernet.model import Supernet

FORMAT = 1


@dataclass
class TrainedSupernet:
    supernet: Supernet
    calibration_images: torch.Tensor  # uint8 [N, C, H, W]
    meta: dict[str, Any]

    @property
    def calibration_float(self) -> torch.Tensor:
        return self.calibration_images.float().div_(255.0)


def save_supernet(path: str | Path, supernet: Supernet, calibration_images: torch.Tensor,
                  meta: dict[str, Any]) -> str:
    if calibration_images.dtype != torch.uint8:
        raise ValueError("calibration images are stored as uint8")
    return save_artifact(
        path,
        {
            "kind": "supernet",
            "format": FORMAT,
            "space": supernet.space.to_json(),
            "state": {name: tensor.detach().cpu() for name, tensor in supernet.state_dict().items()},
            "calibration_images": calibration_images.contiguous(),
            "meta": json.dumps(meta, sort_keys=True),
        },
    )


def load_supernet(path: str | Path) -> TrainedSupernet:
    payload = load_artifact(path, "supernet")
    if payload.get("kind") != "supernet" or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a supernet of format {FORMAT} (a training checkpoint?)")
    space = SearchSpace.from_dict(json.loads(payload["space"]))
    supernet = Supernet(space, size_transforms=any(is_size_transform(name) for name in payload["state"]))
    try:
        supernet.load_state_dict(payload["state"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match its search space: {exc}") from None
    supernet.eval()
    return TrainedSupernet(supernet, payload["calibration_images"], json.loads(payload["meta"]))
