"""Collect (architecture, cost, validation accuracy) triplets for a bundle (`make collect`).

    python -m nag.pipeline.collect_triplets --bundle bundles/default --archs 1000

Resumable: triplets are saved every few architectures and measured ids are skipped on restart.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from nag.bundle.bundle import SUPERNET_FILE, TRIPLETS_FILE
from nag.cost.store import MEASUREMENTS_FILE, Device, device_dir, list_devices, load_device, read_measurements
from nag.data import DataSource, load_splits
from nag.data.datasets import ImageSet
from nag.errors import NagError
from nag.pnag.triplets import SAMPLED, Triplet, collect_triplets, measure_triplet
from nag.space.arch import Architecture
from nag.supernet.io import load_supernet
from nag.supernet.model import Supernet


@dataclass(frozen=True)
class TripletMeasuring:
    """What measuring a bundle's triplets needs: its supernet, the BN calibration images, the validation
    images and the bundle's devices with the latencies measured while profiling."""

    supernet: Supernet
    calibration: torch.Tensor
    val: ImageSet
    devices: list[Device]
    measured: dict[str, dict[str, float]]

    def triplet(self, arch: Architecture, source: str = SAMPLED) -> Triplet:
        return measure_triplet(self.supernet, arch, self.calibration, self.val, self.devices, self.measured, source)


def triplet_measuring(bundle: str | Path, val_images: int = 2500, calib_images: int = 500, first: int = 0
                      ) -> TripletMeasuring:
    """The bundle's triplet measuring setup: images `first` to `val_images` (exclusive) of the supernet's
    validation split (fewer where the split is shorter), BN calibrated on the first `calib_images` of its
    stored calibration images."""
    trained = load_supernet(Path(bundle) / SUPERNET_FILE)
    space = trained.supernet.space
    cfg = trained.meta.get("config", {})
    splits = load_splits(DataSource(**cfg["data"]) if "data" in cfg else DataSource(),
                         int(cfg.get("val_size", 5000)), int(cfg.get("seed", 0)), space.input.size,
                         space.input.channels)
    val = splits.val.subset(torch.arange(min(first, len(splits.val)), min(val_images, len(splits.val))))
    devices = [load_device(bundle, name, space) for name in list_devices(bundle)]
    measured = {}
    for d in devices:
        path = device_dir(bundle, d.name) / MEASUREMENTS_FILE
        if path.exists():
            measured[d.name] = {m.arch_id: m.median for m in read_measurements(path) if m.stable}
    return TripletMeasuring(trained.supernet, trained.calibration_float[:calib_images], val, devices, measured)


def collect(bundle: str | Path, archs: int = 1000, val_images: int = 2500, calib_images: int = 500,
            seed: int = 1) -> list[Triplet]:
    """Collect (resumably) `archs` triplets into the bundle's triplet file: each architecture's validation
    accuracy in the bundle's supernet (BN calibrated) and its cost on every device of the bundle."""
    m = triplet_measuring(bundle, val_images, calib_images)
    return collect_triplets(Path(bundle) / TRIPLETS_FILE, m.supernet, m.calibration, m.val, m.devices, m.measured,
                            num_archs=archs, seed=seed)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--archs", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=2500, help="validation images per architecture")
    p.add_argument("--calib-images", type=int, default=500, help="BN calibration images per architecture")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        triplets = collect(args.bundle, args.archs, args.val_images, args.calib_images, args.seed)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    accs = [t.val_acc for t in triplets]
    print(f"{len(triplets)} triplets in {args.bundle}/{TRIPLETS_FILE} ({time.perf_counter() - started:.0f} s this "
          f"run); validation accuracy {min(accs):.2f}-{max(accs):.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
