"""Training runs of `nag.pipeline.train_supernet` side by side, each in its own folder, with a deadline.

A run whose folder already holds `summary.json` is done and skipped; one stopped at the deadline gets
SIGTERM, writes its checkpoint and continues with `--resume` next time (on any machine: checkpoints
hold CPU tensors).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from nag.bundle.bundle import SUPERNET_FILE, SUPERNET_SUMMARY_FILE


@dataclass(frozen=True)
class TrainingRun:
    name: str
    args: tuple[str, ...]  # train_supernet arguments besides --out, --resume, --device and --threads


def finished(folder: Path) -> bool:
    return (folder / SUPERNET_SUMMARY_FILE).is_file() and (folder / SUPERNET_FILE).is_file()


def run_all(runs: list[TrainingRun], work: Path, parallel: int = 2, threads: int = 1, device: str = "cpu",
            deadline_s: float | None = None, extra: tuple[str, ...] = (),
            first_alone: bool = False) -> dict[str, dict[str, object]]:
    """Run every unfinished run, `parallel` at a time (the first of `runs` alone when `first_alone` and it is
    unfinished: it writes what the others read); returns per run its status and wall seconds."""
    work.mkdir(parents=True, exist_ok=True)
    pending = [r for r in runs if not finished(work / r.name)]
    lead = runs[0].name if first_alone and runs and runs[0] in pending else None
    status: dict[str, dict[str, object]] = {r.name: {"status": "done before"} for r in runs if r not in pending}
    active: dict[str, tuple[subprocess.Popen[bytes], float]] = {}
    started = time.monotonic()
    stopping = False
    while pending or active:
        late = deadline_s is not None and time.monotonic() - started > deadline_s
        if late and not stopping:
            stopping = True
            print(f"deadline of {deadline_s:.0f} s: stopping {sorted(active)}", flush=True)
            for proc, _ in active.values():
                proc.send_signal(signal.SIGTERM)
        while pending and len(active) < (1 if lead in active or pending[0].name == lead else parallel) \
                and not stopping:
            run = pending.pop(0)
            folder = work / run.name
            folder.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "nag.pipeline.train_supernet", *run.args, *extra, "--out", str(folder),
                   "--resume", "--device", device, "--threads", str(threads)]
            log = (work / f"{run.name}.log").open("ab")
            active[run.name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.monotonic())
            print(f"started {run.name}: {' '.join(cmd[3:])}", flush=True)
        for name, (proc, began) in list(active.items()):
            code = proc.poll()
            if code is None:
                continue
            del active[name]
            if code == 0 and finished(work / name):
                outcome = "finished"
            else:  # 143: stopped by the deadline after a checkpoint; -15: stopped before it had one
                outcome = "stopped" if code in (143, -signal.SIGTERM) else "failed"
            status[name] = {"status": outcome, "exit": code, "wall_s": round(time.monotonic() - began, 1)}
            print(f"{name}: {outcome} (exit {code}) after {status[name]['wall_s']} s", flush=True)
        if stopping and not active:
            break
        time.sleep(0.5)
    for run in pending:
        status[run.name] = {"status": "not started"}
    (work / "runs.json").write_text(json.dumps(status, indent=1) + "\n")
    return status
