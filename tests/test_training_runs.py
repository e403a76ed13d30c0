"""The benchmarks' side-by-side training launcher: deadline, checkpoints, resume, reuse of finished runs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from benchmarks.recipe_study import VARIANTS, paired_difference, study_runs
from nag.pipeline.training_runs import TrainingRun, finished, run_all


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


def test_frontier_children_trained_alone_are_counted_against_the_sliced_smallest(tiny_bundle: Path,
                                                                                   tmp_path: Path) -> None:
    from benchmarks import supernet_vs_standalone as bench
    from nag.bundle.bundle import SUPERNET_FILE
    from nag.space import load_space, sample_uniform

    space = load_space()
    rng = random.Random(3)
    children = [sample_uniform(space, rng) for _ in range(3)]
    rows = [{"name": "smallest", "resolution": 16, "mmacs": 0.3, "test_acc": 50.0, "arch": children[0].to_dict()}]
    rows += [{"name": f"random{i}", "resolution": a.resolution, "mmacs": float(i), "test_acc": acc,
              "arch": a.to_dict()} for i, (a, acc) in enumerate(zip(children, (40.0, 60.0, 45.0), strict=True))]
    frontier = tmp_path / "frontier.json"
    frontier.write_text(json.dumps({"summary": {"smallest_acc": 50.0}, "children": rows}))
    kept = bench.frontier_children(frontier, space, below_smallest=True)
    assert [label for label, _ in kept] == sorted(["random0", "random2"],
                                                  key=lambda n: (children[int(n[-1])].resolution, int(n[-1])))
    assert len(bench.frontier_children(frontier, space, below_smallest=False)) == 3

    supernet = str(tiny_bundle / SUPERNET_FILE)
    code = bench.main(["--supernet", supernet, "--frontier", str(frontier), "--below-smallest", "--arch",
                       f"again={json.dumps(children[0].to_dict())}", "--parallel", "2", "--work",
                       str(tmp_path / "work"), "--out", str(tmp_path), "--name", "t"])
    assert code == 0
    data = json.loads((tmp_path / "t.json").read_text())
    assert sorted(c["label"] for c in data["children"]) == ["again", "random0", "random2"]
    assert len(list((tmp_path / "work").glob("*-e1"))) == 2  # random0 asked for twice trains once
    below = data["below_sliced_smallest"]
    assert below["children"] == 3 and 0 <= below["sliced"] <= 3 and 0 <= below["trained_alone"] <= 3
    for key, side in (("sliced", "supernet_test_acc"), ("trained_alone", "standalone_test_acc")):
        assert below[key] == sum(c[side] < below["sliced_smallest_test_acc"] for c in data["children"])
    assert bench.main(["--supernet", supernet, "--below-smallest"]) == 2
    frontier.write_text("{not json")
    assert bench.main(["--supernet", supernet, "--frontier", str(frontier)]) == 2
