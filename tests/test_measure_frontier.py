"""Measured serving frontiers: a local device's picks are costed by measurement, not by the predictor."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nag.bundle.bundle import load_bundle
from nag.config import pipeline
from nag.cost.device import packaged_profile
from nag.cost.predictor import FlopsCostModel
from nag.cost.profiling import profile_device
from nag.cost.store import SERVING_MEASUREMENTS_FILE, Device, device_dir, read_measurements
from nag.pipeline.measure_frontier import measure_frontier
from nag.pipeline.train_generator import build
from nag.policy.frontier import serving_frontier
from nag.space.arch import biggest, smallest
from nag.space.space import SearchSpace


def test_a_measured_cost_replaces_the_prediction_for_that_child_only(space: SearchSpace) -> None:
    model = FlopsCostModel(space)
    small, big = smallest(space), biggest(space)
    predicted = model.predict([small, big])
    device = Device(packaged_profile("flops"), model, (float(predicted[0]), float(predicted[1])),
                    {small.arch_id: 123.0})
    assert device.predict([small, big]).tolist() == [123.0, float(predicted[1])]
    assert model.predict([small]).tolist() == [float(predicted[0])]  # the cost model's own answer is untouched


@pytest.fixture(scope="module")
def measured_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with a quickly profiled local ONNX Runtime device, built (its front measured too)."""
    root = tmp_path_factory.mktemp("measured") / "tiny"
    shutil.copytree(tiny_bundle, root)
    space = load_bundle(root).space
    quick = dataclasses.replace(packaged_profile("cpu"), name="quick", warmup_runs=2, timed_runs=3, rounds=2,
                                max_noise=1.0, max_drift=10.0)
    profile_device(root, space, quick, num_archs=16, progress=False)
    build(root, pipeline("tiny"), run_dir=root.parent / "run", progress=False)
    return root


def test_the_pipeline_measures_the_front_of_a_local_device_only(measured_bundle: Path) -> None:
    assert (device_dir(measured_bundle, "quick") / SERVING_MEASUREMENTS_FILE).is_file()
    assert not (device_dir(measured_bundle, "flops") / SERVING_MEASUREMENTS_FILE).exists()


def test_every_member_of_the_front_is_measured_and_the_bundle_stays_sealed(measured_bundle: Path) -> None:
    result = measure_frontier(measured_bundle, "quick", fresh=True)
    path = device_dir(measured_bundle, "quick") / SERVING_MEASUREMENTS_FILE
    records = {m.arch_id: m for m in read_measurements(path)}
    bundle = load_bundle(measured_bundle)  # the manifest was sealed again over the new file
    models = bundle.devices["quick"]
    front = serving_frontier(bundle, models)
    # The stored frontier was materialized again from the new measurements: current, and what is served.
    assert models.stored is not None and front.materialized
    assert result.members == len(front.entries) and result.measured == len(records)
    for entry in front.entries:
        assert entry.arch.arch_id in records
        assert entry.cost == pytest.approx(records[entry.arch.arch_id].corrected)
    assert models.min_cost == pytest.approx(records[smallest(bundle.space).arch_id].corrected)
    summary = bundle.manifest["metrics"]["devices"]["quick"]["serving_measurements"]
    assert summary["members"] == result.members
    # Measuring again finds nothing new to measure.
    again = measure_frontier(measured_bundle, "quick")
    assert again.rounds == 1 and again.measured == result.measured


def test_an_analytic_device_is_refused_in_one_line(measured_bundle: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "nag.pipeline.measure_frontier", "--bundle", str(measured_bundle),
                          "--device", "flops"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "nothing to measure" in run.stderr and "Traceback" not in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_the_measured_costs_travel_with_the_device_folder(measured_bundle: Path) -> None:
    measure_frontier(measured_bundle, "quick")
    raw = (device_dir(measured_bundle, "quick") / SERVING_MEASUREMENTS_FILE).read_text().splitlines()
    assert raw and all(json.loads(line)["runs"] > 0 for line in raw)
    costs = load_bundle(measured_bundle).devices["quick"].device.measured
    assert len(costs) == len(raw) and all(np.isfinite(list(costs.values())))
