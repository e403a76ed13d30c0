"""The training checkpoint: everything a `--resume` needs to continue a supernet run bit-for-bit."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nag.artifacts import load_artifact, save_artifact
from nag.config import SupernetTrainConfig
from nag.errors import CheckpointError

CHECKPOINT_FORMAT = 1


def to_cpu(value: Any) -> Any:
    """`value` with every tensor in it moved to the CPU: checkpoints load on machines without a GPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


@dataclass(frozen=True)
class Checkpoint:
    step: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    averaged: dict[str, Any] | None
    # The epoch's log record before its evaluation: a resume after a crash during that evaluation finishes
    # the record instead of losing it.
    pending_record: dict[str, Any] | None


def write_checkpoint(path: Path, cfg: SupernetTrainConfig, world: int, state: Checkpoint) -> None:
    save_artifact(
        path,
        {
            "kind": "checkpoint",
            "format": CHECKPOINT_FORMAT,
            "config": cfg.to_json(),
            "world": world,
            "step": state.step,
            "model": to_cpu(state.model),
            "optimizer": to_cpu(state.optimizer),
            "averaged": None if state.averaged is None else to_cpu(state.averaged),
            "pending_record": json.dumps(state.pending_record) if state.pending_record else "",
        },
    )


def read_checkpoint(path: Path, cfg: SupernetTrainConfig, world: int) -> Checkpoint:
    """The checkpoint at `path`, refused unless it was written by a run of `cfg` on `world` processes."""
    payload = load_artifact(path, "checkpoint")
    if payload.get("kind") != "checkpoint" or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a training checkpoint of format {CHECKPOINT_FORMAT}")
    saved = SupernetTrainConfig.from_dict(json.loads(payload["config"]))
    if saved != cfg or payload["world"] != world:
        raise CheckpointError(
            f"{path} was written with another config or world size; "
            "resume with the same profile and overrides, or start afresh in another --out"
        )
    pending = payload.get("pending_record") or ""
    return Checkpoint(int(payload["step"]), payload["model"], payload["optimizer"], payload.get("averaged"),
                      json.loads(pending) if pending else None)
