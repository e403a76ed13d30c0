"""The loop of a supernet run: resume, steps, a checkpoint and a log record per epoch, a clean stop on
SIGTERM/SIGINT, and at the end the shipped supernet and its summary."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from nag.bundle.bundle import SUPERNET_FILE, SUPERNET_LOG_FILE, SUPERNET_SUMMARY_FILE
from nag.pipeline.distributed import any_rank
from nag.pipeline.epoch_log import append_record, is_logged
from nag.pipeline.signals import StopRequested
from nag.supernet.io import save_supernet

if TYPE_CHECKING:
    from pathlib import Path

    from nag.pipeline.supernet_trainer import SupernetTrainer

log = logging.getLogger("nag.recipe")


def run_training(trainer: SupernetTrainer, resume: bool) -> int:
    """Train `trainer` to its last step (0) or until a signal (143, after a checkpoint)."""
    trainer.out.mkdir(parents=True, exist_ok=True)
    if resume and trainer.checkpoint_path.exists():
        trainer.load_checkpoint()
    elif resume:
        log.info("no checkpoint at %s; starting from step 0", trainer.checkpoint_path)
    stop = StopRequested()
    log_path = trainer.out / SUPERNET_LOG_FILE
    log_pending_epoch(trainer, log_path)  # an epoch whose evaluation a crash interrupted
    started = time.perf_counter()
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc=f"supernet[{trainer.cfg.profile}]",
               disable=not trainer.dist.is_main, unit="step", dynamic_ncols=True)
    loss_sum, loss_count = 0.0, 0
    last_eval: dict[str, float] = {}
    while trainer.step < trainer.total_steps:
        loss_sum += trainer.train_step()
        loss_count += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / loss_count:.3f}")
        if trainer.dist.world > 1:
            stop.flag = any_rank(stop.flag)
        if stop.flag:
            trainer.save_checkpoint()
            bar.close()
            log.warning("stopped by a signal at step %d; continue with --resume", trainer.step)
            return 143
        if trainer.step % trainer.steps_per_epoch == 0:
            trainer.pending_record = {
                "epoch": trainer.step // trainer.steps_per_epoch,
                "step": trainer.step,
                "lr": trainer.optimizer.param_groups[0]["lr"],
                "train_loss": round(loss_sum / max(1, loss_count), 4),
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
            if trainer.attentive is not None:
                trainer.pending_record.update(trainer.attentive.stats())
            trainer.save_checkpoint()
            last_eval = log_pending_epoch(trainer, log_path)
            loss_sum, loss_count = 0.0, 0
    bar.close()
    if trainer.dist.world > 1:
        trainer.write_replica_digest()
    if trainer.dist.is_main:
        finish(trainer, time.perf_counter() - started, last_eval or trainer.evaluate())
    return 0


def log_pending_epoch(trainer: SupernetTrainer, log_path: Path) -> dict[str, float]:
    """Evaluate and append the pending epoch record to `log_path`, unless it is there already."""
    record, trainer.pending_record = trainer.pending_record, None
    if record is None or not trainer.dist.is_main or is_logged(log_path, record["epoch"]):
        return {}
    evaluation = trainer.evaluate()
    record.update(evaluation)
    append_record(log_path, record)
    log.info("epoch %s", record)
    return evaluation


def finish(trainer: SupernetTrainer, elapsed: float, final_eval: dict[str, float]) -> None:
    summary: dict[str, Any] = {"profile": trainer.cfg.profile, "steps": trainer.step,
                               "train_seconds_this_run": round(elapsed, 1), "world": trainer.dist.world,
                               **final_eval}
    save_supernet(trainer.out / SUPERNET_FILE, trainer.shipped, trainer.calibration_images,
                  {"config": trainer.cfg.to_dict(), "summary": summary, "classes": list(trainer.splits.classes)})
    (trainer.out / SUPERNET_SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    log.info("supernet written to %s: %s", trainer.out / SUPERNET_FILE, summary)
