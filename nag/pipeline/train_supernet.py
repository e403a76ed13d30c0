"""Train the elastic supernet with the BigNAS recipe.

    python -m nag.pipeline.train_supernet --profile demo --out runs/demo
    torchrun --nproc-per-node 2 -m nag.pipeline.train_supernet --profile tiny --out runs/ddp

Every step is reproducible from (seed, step) alone: the data order of an epoch, the augmentation, the
children and dropout are all seeded from them, so `--resume` continues bit-for-bit, and every DDP
rank samples the same children. Checkpoints are written atomically every epoch and on SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from nag.artifacts import atomic_write_bytes, load_artifact, save_artifact
from nag.bundle.bundle import CHECKPOINT_FILE, SUPERNET_FILE, SUPERNET_LOG_FILE, SUPERNET_SUMMARY_FILE
from nag.config import MIDDLE_SAMPLERS, TRAIN_MODES, SupernetTrainConfig, profile
from nag.data import DataSplits, load_splits, random_crop_flip
from nag.errors import CheckpointError, NagError
from nag.export.evaluate import child_accuracy, torch_child_accuracy
from nag.recipe.attentive import AttentiveSampler
from nag.recipe.sandwich import (
    SandwichObjective,
    lowest_resolution_first,
    sandwich_children,
    uniform_first,
    uniform_middle,
)
from nag.recipe.schedule import floor_start, lr_at
from nag.recipe.stratified import StratifiedSampler
from nag.space import Architecture, biggest, load_space, resolve_arch, smallest
from nag.space.space import SearchSpace
from nag.supernet.io import save_supernet
from nag.supernet.model import Supernet

log = logging.getLogger("nag.recipe")
CHECKPOINT_FORMAT = 1


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


def to_cpu(value: Any) -> Any:
    """`value` with every tensor in it moved to the CPU: checkpoints load on machines without a GPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


def step_seed(cfg: SupernetTrainConfig, step: int, stream: int) -> int:
    return (cfg.seed * 1_000_003 + step) * 4 + stream


def epoch_order(cfg: SupernetTrainConfig, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))


class StopRequested:
    """Set by SIGTERM/SIGINT; the loop finishes its step, checkpoints and exits."""

    def __init__(self) -> None:
        self.flag = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True


class SupernetTrainer:
    def __init__(self, cfg: SupernetTrainConfig, out: Path, dist_info: Distributed,
                 device: torch.device | None = None):
        self.cfg = cfg
        self.out = out
        self.dist = dist_info
        self.device = device or torch.device("cpu")
        self.space: SearchSpace = load_space(cfg.space_path)
        self.splits: DataSplits = load_splits(cfg.data, cfg.val_size, cfg.seed, self.space.input.size,
                                              self.space.input.channels)
        train = self.splits.train
        if cfg.train_subset is not None:
            train = train.subset(epoch_order(cfg, -1, len(train))[: cfg.train_subset].sort().values)
        self.train = train
        calib_index = epoch_order(cfg, -2, len(self.splits.train))[: cfg.calib_size].sort().values
        self.calibration_images = self.splits.train.images[calib_index].clone()
        torch.manual_seed(cfg.seed)
        self.supernet = Supernet(self.space, size_transforms=cfg.size_transform).to(self.device)
        for matrix in self.supernet.kernel_transforms():
            matrix.requires_grad_(cfg.kernel_transform)
        self.objective = SandwichObjective(self.supernet, cfg.label_smoothing, cfg.weight_decay,
                                           cfg.middle_slices, cfg.student_label_weight,
                                           cfg.distill_temperature)
        # A step whose children all run a layer at its largest kernel (or at no resolution that has matrices
        # of its own) leaves that layer's matrices without a gradient, which DDP must be told to expect.
        self.model: torch.nn.Module = (
            DistributedDataParallel(self.objective,
                                    find_unused_parameters=cfg.kernel_transform or cfg.size_transform)
            if dist_info.world > 1 else self.objective
        )
        self.optimizer = torch.optim.SGD(self.supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
        self.steps_per_epoch = len(self.train) // (cfg.batch_size * dist_info.world)
        if self.steps_per_epoch < 1:
            raise NagError(f"{len(self.train)} training images are fewer than one global batch")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.step = 0
        # Steps from this one on run at the LR floor and are averaged into the shipped weights.
        self.average_from = (floor_start(self.total_steps, cfg.warmup_steps, cfg.decay_fraction)
                             if cfg.average_at_floor else None)
        self.averaged: AveragedModel | None = None
        self.pending_record: dict[str, Any] | None = None
        self.sampler = StratifiedSampler(self.space, cfg.seed) if cfg.middle_sampler == "stratified" else uniform_middle
        self.attentive: AttentiveSampler | None = None
        if cfg.middle_sampler.startswith("attentive-"):
            self.attentive = AttentiveSampler(self.supernet, self.space, cfg.middle_sampler.removeprefix("attentive-"),
                                              cfg.attentive_candidates, cfg.attentive_proxy, cfg.attentive_predictor,
                                              cfg.seed)
        # Standalone baselines train one fixed child instead of the sandwich.
        self.fixed_child: tuple[str, Architecture] | None = None
        if cfg.train_mode == "fixed" and cfg.fixed_arch is not None:
            self.fixed_child = ("fixed", resolve_arch(cfg.fixed_arch, self.space))
        elif cfg.train_mode in ("biggest-only", "smallest-only"):
            name = cfg.train_mode.removesuffix("-only")
            self.fixed_child = (name, (biggest if name == "biggest" else smallest)(self.space))
        self.children_seen: list[list[str]] = []  # arch ids per step of this run (for replica checks)

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_FILE

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        save_artifact(
            self.checkpoint_path,
            {
                "kind": "checkpoint",
                "format": CHECKPOINT_FORMAT,
                "config": self.cfg.to_json(),
                "world": self.dist.world,
                "step": self.step,
                "model": to_cpu(self.supernet.state_dict()),
                "optimizer": to_cpu(self.optimizer.state_dict()),
                "averaged": None if self.averaged is None else to_cpu(self.averaged.state_dict()),
                # The epoch's log record before its evaluation: a resume after a crash during that
                # evaluation finishes the record instead of losing it.
                "pending_record": json.dumps(self.pending_record) if self.pending_record else "",
            },
        )
        log.info("checkpoint written at step %d to %s", self.step, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        payload = load_artifact(self.checkpoint_path, "checkpoint")
        if payload.get("kind") != "checkpoint" or payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{self.checkpoint_path} is not a training checkpoint of format {CHECKPOINT_FORMAT}")
        saved = SupernetTrainConfig.from_dict(json.loads(payload["config"]))
        if saved != self.cfg or payload["world"] != self.dist.world:
            raise CheckpointError(
                f"{self.checkpoint_path} was written with another config or world size; "
                "resume with the same profile and overrides, or start afresh in another --out"
            )
        self.supernet.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if payload.get("averaged") is not None:
            self.averaged = AveragedModel(self.supernet)
            self.averaged.load_state_dict(payload["averaged"])
        self.step = int(payload["step"])
        pending = payload.get("pending_record") or ""
        self.pending_record = json.loads(pending) if pending else None
        log.info("resumed from %s at step %d", self.checkpoint_path, self.step)

    # -- one step -------------------------------------------------------------------------------
    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.cfg, epoch, len(self.train))
        start = (within * self.dist.world + self.dist.rank) * self.cfg.batch_size
        index = order[start : start + self.cfg.batch_size]
        gen = torch.Generator().manual_seed(step_seed(self.cfg, step, 0) * 64 + self.dist.rank)
        images = random_crop_flip(self.train.images[index], self.cfg.crop_pad, self.cfg.flip, gen)
        labels = self.train.labels[index]
        return images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def step_children(self, images: torch.Tensor, labels: torch.Tensor) -> list[Architecture]:
        """The children this step trains: the fixed one, or the sandwich (biggest, smallest, middle)."""
        if self.fixed_child is not None:
            return [self.fixed_child[1]]
        sampler = self.sampler
        if self.attentive is not None:
            attentive = self.attentive

            def sampler(space: SearchSpace, rng: random.Random, count: int) -> list[Architecture]:
                return attentive.choose(images, labels, rng, count)
        if self.cfg.lowest_resolution_middle_children:
            sampler = lowest_resolution_first(self.cfg.lowest_resolution_middle_children, sampler)
        if self.cfg.uniform_middle_children:
            sampler = uniform_first(self.cfg.uniform_middle_children, sampler)
        return sandwich_children(self.space, random.Random(step_seed(self.cfg, self.step, 1)),
                                 self.cfg.num_middle_children, sampler, corners=self.cfg.resolution_corners)

    def seed_step_dropout(self) -> None:
        """Seed the teacher's dropout for this step and rank (the same draw on a resume)."""
        torch.manual_seed(step_seed(self.cfg, self.step, 2) * 64 + self.dist.rank)

    def train_step(self) -> float:
        cfg = self.cfg
        images, labels = self.batch(self.step)
        children = self.step_children(images, labels)
        if self.dist.world > 1:
            self.children_seen.append([a.arch_id for a in children])
        self.seed_step_dropout()
        lr = lr_at(self.step, self.total_steps, cfg.lr, cfg.warmup_steps, cfg.lr_floor, cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.supernet.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(images, labels, children)
        loss.backward()
        self.optimizer.step()
        if self.average_from is not None and self.step >= self.average_from:
            if self.averaged is None:
                self.averaged = AveragedModel(self.supernet)
            self.averaged.update_parameters(self.supernet)
        self.step += 1
        return float(loss.detach())

    @property
    def shipped(self) -> Supernet:
        """The weights written at the end: the average over the constant ending once it has begun."""
        return self.supernet if self.averaged is None else self.averaged.module

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        calib = self.calibration_images.float().div_(255.0)
        test = self.splits.test
        if self.cfg.eval_limit is not None:
            test = test.subset(torch.arange(min(self.cfg.eval_limit, len(test))))
        children = (dict([self.fixed_child]) if self.fixed_child is not None
                    else {"biggest": biggest(self.space), "smallest": smallest(self.space)})
        # The shipped weights are reported; while they are an average, the last step's weights too.
        weights = {"": self.shipped} if self.averaged is None else {"": self.shipped, "_last_step": self.supernet}
        result = {}
        for suffix, supernet in weights.items():
            for name, arch in children.items():
                if self.device.type == "cpu":
                    acc = child_accuracy(supernet, arch, calib, test, self.cfg.eval_batch, self.cfg.calib_batch)
                else:
                    acc = torch_child_accuracy(supernet, arch, calib, test, self.device, self.cfg.eval_batch,
                                               self.cfg.calib_batch)
                result[f"test_acc_{name}{suffix}"] = round(acc, 3)
        if self.averaged is not None:
            result["averaged_steps"] = int(self.averaged.n_averaged)
        self.supernet.train()
        return result

    # -- the loop -------------------------------------------------------------------------------
    def run(self, resume: bool) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_path.exists():
            self.load_checkpoint()
        elif resume:
            log.info("no checkpoint at %s; starting from step 0", self.checkpoint_path)
        stop = StopRequested()
        log_path = self.out / SUPERNET_LOG_FILE
        self.log_pending_epoch(log_path)  # an epoch whose evaluation a crash interrupted
        started = time.perf_counter()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=f"supernet[{self.cfg.profile}]",
                   disable=not self.dist.is_main, unit="step", dynamic_ncols=True)
        loss_sum, loss_count = 0.0, 0
        last_eval: dict[str, float] = {}
        while self.step < self.total_steps:
            loss_sum += self.train_step()
            loss_count += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / loss_count:.3f}")
            if self.dist.world > 1:
                flag = torch.tensor([1.0 if stop.flag else 0.0])
                dist.all_reduce(flag)
                stop.flag = bool(flag.item())
            if stop.flag:
                self.save_checkpoint()
                bar.close()
                log.warning("stopped by a signal at step %d; continue with --resume", self.step)
                return 143
            if self.step % self.steps_per_epoch == 0:
                self.pending_record = {
                    "epoch": self.step // self.steps_per_epoch,
                    "step": self.step,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "train_loss": round(loss_sum / max(1, loss_count), 4),
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
                if self.attentive is not None:
                    self.pending_record.update(self.attentive.stats())
                self.save_checkpoint()
                last_eval = self.log_pending_epoch(log_path)
                loss_sum, loss_count = 0.0, 0
        bar.close()
        if self.dist.world > 1:
            self.write_replica_digest()
        if self.dist.is_main:
            self.finish(time.perf_counter() - started, last_eval or self.evaluate())
        return 0

    def log_pending_epoch(self, log_path: Path) -> dict[str, float]:
        """Evaluate and append the pending epoch record to `log_path`, unless it is there already."""
        record, self.pending_record = self.pending_record, None
        if record is None or not self.dist.is_main:
            return {}
        if log_path.exists():
            text = log_path.read_text()
            if text and not text.endswith("\n"):  # a line torn by a crash mid-write: drop it
                text = text[: text.rfind("\n") + 1]
                atomic_write_bytes(log_path, text.encode())
            for line in text.splitlines():
                try:
                    if json.loads(line).get("epoch") == record["epoch"]:
                        return {}
                except (json.JSONDecodeError, AttributeError):
                    continue
        evaluation = self.evaluate()
        record.update(evaluation)
        with log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.info("epoch %s", record)
        return evaluation

    def write_replica_digest(self) -> None:
        """Each DDP rank records a hash of its weights and of the children it trained, to compare replicas."""
        weights = hashlib.sha256()
        for name, tensor in sorted(self.supernet.state_dict().items()):
            weights.update(name.encode())
            weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        record = {"rank": self.dist.rank, "step": self.step, "weights_sha256": weights.hexdigest(),
                  "children": self.children_seen}
        (self.out / f"replica_{self.dist.rank}.json").write_text(json.dumps(record) + "\n")

    def finish(self, elapsed: float, final_eval: dict[str, float]) -> None:
        summary = {"profile": self.cfg.profile, "steps": self.step, "train_seconds_this_run": round(elapsed, 1),
                   "world": self.dist.world, **final_eval}
        save_supernet(self.out / SUPERNET_FILE, self.shipped, self.calibration_images,
                      {"config": self.cfg.to_dict(), "summary": summary, "classes": list(self.splits.classes)})
        (self.out / SUPERNET_SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
        log.info("supernet written to %s: %s", self.out / SUPERNET_FILE, summary)


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
                                               distill_temperature=args.distill_temperature)
    if args.arch is not None:
        if args.train_mode not in (None, "fixed"):
            raise NagError(f"--arch trains one fixed child; it does not combine with --train-mode {args.train_mode}")
        arch = resolve_arch(args.arch, load_space(cfg.space_path))
        cfg = cfg.with_overrides(train_mode="fixed", fixed_arch=arch.to_json())
    if args.data_kind or args.data_root:
        from nag.data import DataSource

        base = cfg.data
        cfg = cfg.with_overrides(data=DataSource(args.data_kind or base.kind, args.data_root or base.root))
    return cfg


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
