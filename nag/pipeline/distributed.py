"""The processes and the device a supernet run trains on: one process, or DDP ranks under `torchrun`."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from nag.errors import NagError


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: torch.device) -> Distributed:
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return Distributed()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size())


def training_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NagError(f"--device {name!r} is not a device (cpu or cuda)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NagError("--device cuda: this machine has no GPU that PyTorch can use")
        # Full float32 convolutions and products, as on the CPU: TF32 would change the recipe's numerics.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    elif device.type != "cpu":
        raise NagError(f"--device {name!r}: only cpu and cuda are supported")
    return device


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any (a signal reaches one rank; all must stop together)."""
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value)
    return bool(value.item())


def write_replica_digest(out: Path, rank: int, step: int, state: dict[str, torch.Tensor],
                         children: list[list[str]]) -> None:
    """Each DDP rank records a hash of its weights and of the children it trained, to compare replicas."""
    weights = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    record = {"rank": rank, "step": step, "weights_sha256": weights.hexdigest(), "children": children}
    (out / f"replica_{rank}.json").write_text(json.dumps(record) + "\n")
