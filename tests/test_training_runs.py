"""The benchmarks' side-by-side training launcher: deadline, checkpoints, resume, reuse of finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from benchmarks.recipe_study import VARIANTS, paired_difference, study_runs
from benchmarks.training_runs import TrainingRun, finished, run_all


def test_a_run_stopped_at_the_deadline_resumes_and_finished_runs_are_reused(tmp_path: Path) -> None:
    runs = [TrainingRun("a", ("--profile", "tiny", "--epochs", "3")),
            TrainingRun("b", ("--profile", "tiny", "--arch", "smallest"))]
    status = run_all(runs, tmp_path, parallel=2, deadline_s=0.0)
    assert {s["status"] for s in status.values()} <= {"stopped", "not started"}
    assert not finished(tmp_path / "a")
    status = run_all(runs, tmp_path, parallel=2)
    assert [status[n]["status"] for n in ("a", "b")] == ["finished", "finished"]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["steps"] == 24
    assert "test_acc_fixed" in json.loads((tmp_path / "b" / "summary.json").read_text())
    again = run_all(runs, tmp_path, parallel=2)
    assert {s["status"] for s in again.values()} == {"done before"}


def test_study_variants_differ_from_today_by_their_lever_only() -> None:
    runs = {r.name: r.args for r in study_runs()}
    assert set(runs) == set(VARIANTS)
    assert runs["today"][:4] == ("--profile", "default", "--epochs", "3")
    assert "--epochs" in runs["today-2x-steps"] and runs["today-2x-steps"].count("--epochs") == 1


def test_paired_difference_and_its_standard_error() -> None:
    a = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], dtype=float)
    b = np.array([[1, 0, 0, 1], [0, 0, 0, 1]], dtype=float)
    diff, se = paired_difference(a, b)
    per_image = np.array([0.5, 0.5, 0.0, 0.0])
    assert np.isclose(diff, 25.0)
    assert np.isclose(se, 100 * per_image.std(ddof=1) / 2)
