"""(architecture, cost, accuracy) triplets measured with the trained supernet.

Accuracy is measured on the **validation split** (never the test set) after BN re-calibration, with
each child sliced out of the supernet and run in ONNX Runtime, as it is served. Each architecture also
gets the predicted cost of every device and, when it was measured while profiling, the measured latency.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from nag.artifacts import read_jsonl, write_jsonl
from nag.cost.store import Device
from nag.data.datasets import ImageSet
from nag.export.evaluate import child_accuracy
from nag.space.arch import Architecture
from nag.space.plan import count_macs, count_params
from nag.space.sampling import sample_stratified
from nag.space.space import SearchSpace
from nag.supernet.model import Supernet

log = logging.getLogger(__name__)

SAMPLED = "sampled"


def refine_source(device: str, round_number: int) -> str:
    return f"refine:{device}:{round_number}"


@dataclass(frozen=True)
class Triplet:
    arch_json: str
    arch_id: str
    macs: int
    params: int
    val_acc: float
    cost: dict[str, float] = field(default_factory=dict)  # predicted, per device
    measured: dict[str, float] = field(default_factory=dict)  # measured median, where profiled
    # Provenance: SAMPLED (the stratified first collection) or `refine_source(device, round)` (an entry of
    # that device's serving front, proposed by its generator and measured by on-policy refinement,
    # `nag.pipeline.refine`; bundles refined before held the generator's picks and runners-up there).
    source: str = SAMPLED
    val_images: int = 0  # validation images `val_acc` was measured on (0: not recorded, the pipeline's count)
    # Added to the measurement to put it on the scale of the whole validation split (`nag.pipeline.refine`):
    # the first images of the split are not exactly as hard as all of it.
    val_shift: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"arch_json": self.arch_json, "arch_id": self.arch_id, "macs": self.macs, "params": self.params,
                "val_acc": self.val_acc, "cost": self.cost, "measured": self.measured, "source": self.source,
                "val_images": self.val_images, "val_shift": self.val_shift}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Triplet:
        return cls(str(raw["arch_json"]), str(raw["arch_id"]), int(raw["macs"]), int(raw["params"]),
                   float(raw["val_acc"]), {str(k): float(v) for k, v in raw["cost"].items()},
                   {str(k): float(v) for k, v in raw["measured"].items()}, str(raw.get("source", SAMPLED)),
                   int(raw.get("val_images", 0)), float(raw.get("val_shift", 0.0)))

    def arch(self, space: SearchSpace) -> Architecture:
        return Architecture.from_json(self.arch_json, space)


def read_triplets(path: str | Path) -> list[Triplet]:
    return read_jsonl(path, "triplets file", Triplet.from_dict, missing_hint="; run `make collect`")


def write_triplets(path: str | Path, triplets: Sequence[Triplet]) -> None:
    write_jsonl(path, (t.to_dict() for t in triplets))


def measure_triplet(supernet: Supernet, arch: Architecture, calibration: torch.Tensor, val: ImageSet,
                    devices: Sequence[Device], measured: dict[str, dict[str, float]], source: str = SAMPLED
                    ) -> Triplet:
    """One architecture's triplet: validation accuracy of the sliced child (BN calibrated on
    `calibration`), predicted cost on every device, and the latency measured while profiling, if any."""
    acc = child_accuracy(supernet, arch, calibration, val)
    cost = {d.name: float(d.predict([arch])[0]) for d in devices}
    meas = {name: table[arch.arch_id] for name, table in measured.items() if arch.arch_id in table}
    return Triplet(arch.to_json(), arch.arch_id, count_macs(arch, supernet.space), count_params(arch, supernet.space),
                   acc, cost, meas, source, len(val))


def collect_triplets(path: str | Path, supernet: Supernet, calibration: torch.Tensor, val: ImageSet,
                     devices: Sequence[Device], measured: dict[str, dict[str, float]], *, num_archs: int,
                     seed: int = 0, save_every: int = 25, progress: bool = True) -> list[Triplet]:
    """Measure `num_archs` stratified architectures, resuming from what `path` already holds."""
    space = supernet.space
    path = Path(path)
    done = read_triplets(path) if path.exists() else []
    done_ids = {t.arch_id for t in done}
    archs = sample_stratified(space, num_archs, random.Random(seed))
    todo = [a for a in archs if a.arch_id not in done_ids]
    log.info("triplets: %d planned, %d already collected", len(archs), len(archs) - len(todo))
    pending: list[Triplet] = []
    bar = tqdm(total=len(archs), initial=len(archs) - len(todo), desc="collecting triplets", unit="arch",
               disable=not progress)
    for i, arch in enumerate(todo):
        pending.append(measure_triplet(supernet, arch, calibration, val, devices, measured))
        bar.update(1)
        if len(pending) >= save_every or i == len(todo) - 1:
            done.extend(pending)
            pending = []
            write_triplets(path, done)
    bar.close()
    return done
