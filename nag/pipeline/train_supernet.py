"""Train the elastic supernet with the BigNAS recipe.

    python -m nag.pipeline.train_supernet --profile demo --out runs/demo
    torchrun --nproc-per-node 2 -m nag.pipeline.train_supernet --profile tiny --out runs/ddp

Every step is reproducible from (seed, step) alone: the data order of an epoch, the augmentation, the
children and dropout are all seeded from them, so `--resume` continues bit-for-bit, and every DDP
rank samples the same children. Checkpoints are written atomically every epoch and on SIGTERM.

This module is the command line; the run itself is `supernet_trainer` (model, step, evaluation),
`training_loop`, `checkpoint`, `epoch_log`, `distributed` and `signals`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from nag.bundle.bundle import CHECKPOINT_FILE
from nag.config import MIDDLE_SAMPLERS, TRAIN_MODES, SupernetTrainConfig, profile
from nag.data import DataSource
from nag.errors import NagError
from nag.pipeline.distributed import setup_distributed, training_device
from nag.pipeline.supernet_trainer import SupernetTrainer
from nag.space import load_space, resolve_arch


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nag train-supernet", description=__doc__.split("\n")[1])
    p.add_argument("--profile", default=SupernetTrainConfig().profile, help="demo, default or tiny")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<profile>)")
    p.add_argument("--resume", action="store_true", help=f"continue from <out>/{CHECKPOINT_FILE}")
    p.add_argument("--epochs", type=int)
    p.add_argument("--train-subset", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--train-mode", choices=TRAIN_MODES,
                   help="sandwich (BigNAS) or one fixed child trained alone (baseline)")
    p.add_argument("--arch", help="train this one child alone (the standalone baseline): biggest, smallest, "
                                  "an architecture's JSON or a .json file holding it")
    p.add_argument("--specialise-from", help="with --arch: fine-tune the child from its slice of this supernet.pt, "
                   "distilling from that supernet's biggest child")
    p.add_argument("--teacher-targets", help="with --specialise-from: a file that keeps the teacher's predictions "
                   "between runs from the same supernet")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, help="steps of linear LR warm-up")
    p.add_argument("--kernel-transform", action=argparse.BooleanOptionalAction, default=None,
                   help="OFA's elastic kernel: learned transforms for the smaller depthwise kernels")
    p.add_argument("--size-transform", action=argparse.BooleanOptionalAction, default=None,
                   help="a learned matrix per depthwise kernel and input map size below the largest resolution's")
    p.add_argument("--num-middle-children", type=int, help="middle children per sandwich step")
    p.add_argument("--uniform-middle-children", type=int,
                   help="this many of the middle children drawn uniformly over the choices, the rest by the sampler")
    p.add_argument("--lowest-resolution-middle-children", type=int,
                   help="this many of the middle children after the uniform ones drawn uniformly at the lowest "
                        "resolution")
    p.add_argument("--resolution-corners", action=argparse.BooleanOptionalAction, default=None,
                   help="also train the biggest at the lowest resolution and the smallest at the highest each step")
    p.add_argument("--middle-slices", type=int,
                   help="split the batch into this many slices, one per middle child (1: each sees all of it)")
    p.add_argument("--student-label-weight", type=float,
                   help="weight of the label loss for every child but the biggest (the rest is distillation)")
    p.add_argument("--distill-temperature", type=float, help="temperature of the biggest child's soft targets")
    p.add_argument("--middle-sampler", choices=MIDDLE_SAMPLERS,
                   help="how the middle children of each sandwich step are chosen (default: the profile's, "
                        f"{profile(SupernetTrainConfig().profile).middle_sampler} in the default profile)")
    p.add_argument("--attentive-candidates", type=int,
                   help=f"k candidates per attentive draw (default {SupernetTrainConfig().attentive_candidates})")
    p.add_argument("--average-at-floor", action="store_true", default=None,
                   help="ship the average of the weights over the constant-LR ending (stochastic weight averaging)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: cores / processes)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (a GPU); the recipe and results do not depend on it")
    p.add_argument("--space", dest="space_path", help="search space JSON (default: the packaged one)")
    p.add_argument("--data-kind", choices=["fashion-mnist", "idx", "folder"])
    p.add_argument("--data-root", help="folder of the data set")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> SupernetTrainConfig:
    cfg = profile(args.profile).with_overrides(epochs=args.epochs, train_subset=args.train_subset, seed=args.seed,
                                               space_path=args.space_path, train_mode=args.train_mode,
                                               middle_sampler=args.middle_sampler,
                                               attentive_candidates=args.attentive_candidates,
                                               average_at_floor=args.average_at_floor,
                                               kernel_transform=args.kernel_transform,
                                               size_transform=args.size_transform,
                                               num_middle_children=args.num_middle_children,
                                               uniform_middle_children=args.uniform_middle_children,
                                               lowest_resolution_middle_children=(
                                                   args.lowest_resolution_middle_children),
                                               resolution_corners=args.resolution_corners,
                                               middle_slices=args.middle_slices,
                                               student_label_weight=args.student_label_weight,
                                               distill_temperature=args.distill_temperature,
                                               lr=args.lr, warmup_steps=args.warmup_steps)
    if args.arch is not None:
        if args.train_mode not in (None, "fixed"):
            raise NagError(f"--arch trains one fixed child; it does not combine with --train-mode {args.train_mode}")
        arch = resolve_arch(args.arch, load_space(cfg.space_path))
        cfg = cfg.with_overrides(train_mode="fixed", fixed_arch=arch.to_json(), specialise_from=args.specialise_from,
                                 teacher_targets=args.teacher_targets)
    elif args.specialise_from is not None:
        raise NagError("--specialise-from fine-tunes one child: give it with --arch")
    if args.data_kind or args.data_root:
        base = cfg.data
        cfg = cfg.with_overrides(data=DataSource(args.data_kind or base.kind, args.data_root or base.root))
    return cfg


def train(cfg: SupernetTrainConfig, out: Path, resume: bool = False, device: str = "cpu",
          threads: int | None = None) -> int:
    """Train (or with `resume`, continue) the supernet of `cfg` in `out`: 0 when it is written, 143 when a
    signal stopped the run after a checkpoint. Raises `NagError` for a bad device, data or checkpoint."""
    where = training_device(device)
    dist_info = setup_distributed(where)
    try:
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // dist_info.world))
        return SupernetTrainer(cfg, out, dist_info, where).run(resume)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        cfg = build_config(args)
        return train(cfg, args.out or Path("runs") / cfg.profile, args.resume, args.device, args.threads)
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
