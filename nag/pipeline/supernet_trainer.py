"""The supernet trainer: the model, optimizer and samplers of a run, one sandwich step, and the per-epoch
evaluation. Every step is a pure function of (seed, step): data order, crops, children and dropout."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from nag.bundle.bundle import CHECKPOINT_FILE
from nag.config import SupernetTrainConfig
from nag.data import DataSplits, load_splits, random_crop_flip
from nag.errors import NagError
from nag.export.evaluate import child_accuracy, torch_child_accuracy
from nag.pipeline.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from nag.pipeline.distributed import Distributed, write_replica_digest
from nag.pipeline.training_loop import run_training
from nag.recipe.attentive import AttentiveSampler
from nag.recipe.sandwich import (
    SandwichObjective,
    lowest_resolution_first,
    sandwich_children,
    uniform_first,
    uniform_middle,
)
from nag.recipe.schedule import floor_start, lr_at
from nag.recipe.specialise import SpecialiseObjective, cached_teacher_probabilities
from nag.recipe.stratified import StratifiedSampler
from nag.space import Architecture, biggest, load_space, resolve_arch, smallest
from nag.space.space import SearchSpace
from nag.supernet.io import load_supernet
from nag.supernet.model import Supernet

log = logging.getLogger("nag.recipe")


def step_seed(cfg: SupernetTrainConfig, step: int, stream: int) -> int:
    return (cfg.seed * 1_000_003 + step) * 4 + stream


def epoch_order(cfg: SupernetTrainConfig, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))


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
        self.objective: torch.nn.Module = SandwichObjective(self.supernet, cfg.label_smoothing, cfg.weight_decay,
                                                            cfg.middle_slices, cfg.student_label_weight,
                                                            cfg.distill_temperature)
        if cfg.specialise_from is not None:
            self.objective = self._specialising(cfg.specialise_from)
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

    def _specialising(self, path: str) -> SpecialiseObjective:
        """Start from the weights of the supernet at `path`; its biggest child's predictions on the training
        images are the teacher's."""
        teacher = load_supernet(path)
        if teacher.supernet.space != self.space:
            raise NagError(f"{path} was trained on another search space than this run's")
        try:
            self.supernet.load_state_dict(teacher.supernet.state_dict())
        except RuntimeError as exc:
            raise NagError(f"{path}: its weights do not fit this run's supernet (size transforms?): {exc}") from None
        probs = cached_teacher_probabilities(teacher, path, self.cfg, self.train)
        log.info("specialising from %s: the child starts from its slice; the teacher is its biggest child", path)
        return SpecialiseObjective(self.supernet, probs, self.cfg.label_smoothing, self.cfg.weight_decay,
                                   self.cfg.student_label_weight, self.cfg.distill_temperature)

    # -- checkpoints ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT_FILE

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        averaged = None if self.averaged is None else self.averaged.state_dict()
        write_checkpoint(self.checkpoint_path, self.cfg, self.dist.world,
                         Checkpoint(self.step, self.supernet.state_dict(), self.optimizer.state_dict(), averaged,
                                    self.pending_record))
        log.info("checkpoint written at step %d to %s", self.step, self.checkpoint_path)

    def load_checkpoint(self) -> None:
        saved = read_checkpoint(self.checkpoint_path, self.cfg, self.dist.world)
        self.supernet.load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.optimizer)
        if saved.averaged is not None:
            self.averaged = AveragedModel(self.supernet)
            self.averaged.load_state_dict(saved.averaged)
        self.step = saved.step
        self.pending_record = saved.pending_record
        log.info("resumed from %s at step %d", self.checkpoint_path, self.step)

    # -- one step -------------------------------------------------------------------------------
    def batch_index(self, step: int) -> torch.Tensor:
        """Indices into the training images of this step's batch on this rank."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.cfg, epoch, len(self.train))
        start = (within * self.dist.world + self.dist.rank) * self.cfg.batch_size
        return order[start : start + self.cfg.batch_size]

    def batch(self, step: int, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's augmented images and labels (`index`: its `batch_index`, when already known)."""
        index = self.batch_index(step) if index is None else index
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
        index = self.batch_index(self.step)
        images, labels = self.batch(self.step, index)
        children = self.step_children(images, labels)
        if self.dist.world > 1:
            self.children_seen.append([a.arch_id for a in children])
        self.seed_step_dropout()
        lr = lr_at(self.step, self.total_steps, cfg.lr, cfg.warmup_steps, cfg.lr_floor, cfg.decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.supernet.train()
        self.optimizer.zero_grad(set_to_none=True)
        extra = (index,) if isinstance(self.objective, SpecialiseObjective) else ()
        loss = self.model(images, labels, children, *extra)
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

    # -- the run --------------------------------------------------------------------------------
    def run(self, resume: bool) -> int:
        """Train to the end (0) or until a signal (143, after a checkpoint); see `training_loop`."""
        return run_training(self, resume)

    def write_replica_digest(self) -> None:
        write_replica_digest(self.out, self.dist.rank, self.step, self.supernet.state_dict(), self.children_seen)
