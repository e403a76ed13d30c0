"""Supernet training: resume bit-for-bit, SIGTERM, corrupt checkpoints, DDP replicas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nag.config import profile
from nag.supernet.io import load_supernet
from training.train_supernet import Distributed, SupernetTrainer

REPO = Path(__file__).resolve().parents[1]


def _run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nag.cli", "train-supernet", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def test_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    cfg = profile("tiny")
    straight = SupernetTrainer(cfg, tmp_path / "a", Distributed())
    for _ in range(6):
        straight.train_step()

    first = SupernetTrainer(cfg, tmp_path / "b", Distributed())
    for _ in range(3):
        first.train_step()
    first.out.mkdir(parents=True)
    first.save_checkpoint()
    resumed = SupernetTrainer(cfg, tmp_path / "b", Distributed())
    resumed.load_checkpoint()
    assert resumed.step == 3
    for _ in range(3):
        resumed.train_step()

    expected, got = straight.supernet.state_dict(), resumed.supernet.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert straight.optimizer.param_groups[0]["lr"] == resumed.optimizer.param_groups[0]["lr"]


def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    trainer = SupernetTrainer(profile("tiny"), tmp_path, Distributed())
    trainer.out.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint()
    other = SupernetTrainer(profile("tiny").with_overrides(seed=9), tmp_path, Distributed())
    with pytest.raises(Exception, match="another config"):
        other.load_checkpoint()


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_finishes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [sys.executable, "-m", "training.train_supernet", "--profile", "tiny", "--epochs", "3", "--out", str(out)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out / "log.jsonl").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "continue with --resume" in err
    assert not (out / "supernet.pt").exists()

    done = _run_cli("--profile", "tiny", "--epochs", "3", "--out", str(out), "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 24
    trained = load_supernet(out / "supernet.pt")
    assert trained.calibration_images.shape == (250, 1, 28, 28)
    assert len(trained.meta["classes"]) == 10
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all({"test_acc_biggest", "test_acc_smallest"} <= set(r) for r in records)


def test_corrupt_checkpoint_is_refused_without_traceback(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"NAGART1 0000\ngarbage")
    proc = _run_cli("--profile", "tiny", "--out", str(out), "--resume", timeout=120)
    assert proc.returncode == 2
    assert "corrupt" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ddp_two_gloo_processes_hold_identical_weights(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "training.train_supernet", "--profile", "tiny", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    replicas = [json.loads((out / f"replica_{r}.json").read_text()) for r in (0, 1)]
    assert replicas[0]["step"] == replicas[1]["step"] == 4  # 256 images / (32 per rank x 2 ranks)
    assert replicas[0]["children"] == replicas[1]["children"]
    assert len(replicas[0]["children"]) == 4 and len(replicas[0]["children"][0]) == 4
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]
    assert json.loads((out / "summary.json").read_text())["world"] == 2


def test_config_errors_are_clear() -> None:
    from nag.config import SupernetTrainConfig
    from nag.errors import NagError

    with pytest.raises(NagError, match="unknown profile 'nope'"):
        profile("nope")
    with pytest.raises(NagError, match="train_mode"):
        profile("tiny").with_overrides(train_mode="all")
    with pytest.raises(NagError, match="unknown training config fields"):
        SupernetTrainConfig.from_dict({"epochz": 3})
    assert SupernetTrainConfig.from_dict(profile("demo").to_dict()) == profile("demo")


def test_standalone_mode_trains_and_reports_one_child(tmp_path: Path) -> None:
    trainer = SupernetTrainer(profile("tiny").with_overrides(train_mode="smallest-only"), tmp_path, Distributed())
    before = trainer.supernet.stages[3][3].expand.weight.detach().clone()
    trainer.train_step()
    # Weights the smallest child never uses only feel weight decay's pull towards zero, no data gradient.
    after = trainer.supernet.stages[3][3].expand.weight.detach()
    assert torch.all(after.abs() <= before.abs())
    assert set(trainer.evaluate()) == {"test_acc_smallest"}
