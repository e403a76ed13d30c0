from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from nag.cost import (
    DeviceError,
    DeviceProfile,
    FlopsCostModel,
    LatencyPredictor,
    check_runnable,
    latency_model_bytes,
    load_device,
    measure_latencies,
    packaged_profile,
    prediction_metrics,
    read_measurements,
)
from nag.cost.features import features_matrix
from nag.cost.measure import robust_relative_error
from nag.cost.profiling import fit_device, profile_device
from nag.cost.speed import measure_against_profile, reference_architectures
from nag.cost.store import MEASUREMENTS_FILE, PREDICTOR_FILE, device_dir
from nag.errors import CheckpointError
from nag.space import SearchSpace, biggest, count_macs, sample_stratified, sample_uniform, smallest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def quick_cpu() -> DeviceProfile:
    return dataclasses.replace(packaged_profile("cpu"), name="quick", warmup_runs=2, timed_runs=3, rounds=2,
                               max_noise=1.0, max_drift=10.0)


def test_packaged_profiles_are_valid() -> None:
    cpu = packaged_profile("cpu")
    assert (cpu.kind, cpu.intra_op_threads, cpu.batch_size, cpu.unit) == ("onnxruntime", 1, 1, "ms")
    assert packaged_profile("flops").unit == "MMACs"


def test_bad_profiles_are_refused_with_the_problem_named(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="unknown fields"):
        DeviceProfile.from_dict({"name": "x", "threads": 2})
    with pytest.raises(DeviceError, match="kind"):
        DeviceProfile(name="x", kind="tpu")
    with pytest.raises(DeviceError, match="timed_runs"):
        DeviceProfile(name="x", timed_runs=0)
    bad = tmp_path / "p.json"
    bad.write_text("{not json")
    with pytest.raises(DeviceError, match="not valid JSON"):
        DeviceProfile.load(bad)
    with pytest.raises(DeviceError, match="unknown device 'nosuch'"):
        packaged_profile("nosuch")


def test_unavailable_execution_provider_is_named() -> None:
    gpu = DeviceProfile(name="gpu", provider="CUDAExecutionProvider")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        check_runnable(gpu)


def test_stratified_sample_covers_the_cost_range(space: SearchSpace) -> None:
    archs = sample_stratified(space, 60, random.Random(0))
    assert len({a.arch_id for a in archs}) == 60
    assert archs[0] == smallest(space) and archs[1] == biggest(space)
    macs = np.array([count_macs(a, space) for a in archs])
    lo, hi = count_macs(smallest(space), space), count_macs(biggest(space), space)
    counts, _ = np.histogram(macs, bins=5, range=(lo, hi))
    assert counts.min() >= 8, counts  # every fifth of the range is represented
    assert sample_stratified(space, 60, random.Random(0)) == archs  # seeded


def test_latency_model_is_a_servable_graph(space: SearchSpace) -> None:
    arch = sample_uniform(space, random.Random(3))
    session = ort.InferenceSession(latency_model_bytes(arch, space), providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": np.random.rand(2, 1, 28, 28).astype(np.float32)})[0]
    assert out.shape == (2, space.num_classes)
    assert session.get_modelmeta().custom_metadata_map["nag.arch_id"] == arch.arch_id


def test_measurement_orders_the_extremes(space: SearchSpace, quick_cpu: DeviceProfile) -> None:
    archs = [smallest(space), biggest(space)]
    small, big = measure_latencies(archs, space, quick_cpu)
    for m in (small, big):
        assert 0 < m.p10 <= m.median <= m.p90
        assert m.runs == quick_cpu.timed_runs * quick_cpu.rounds and len(m.round_medians) == quick_cpu.rounds
    # 50x the MACs: the biggest child is slower by far more than any noise of this machine.
    assert big.median > 2 * small.median


def test_noisy_measurements_get_extra_rounds(space: SearchSpace, quick_cpu: DeviceProfile) -> None:
    # A near-zero noise bar makes a measurement noisy whenever its round medians differ at all: it gets
    # extra rounds (at most as many again), one at a time, until it is quiet. Rounds are timed to the
    # microsecond, so two of three can tie and leave a zero MAD (CI saw 0.054231, 0.080901, 0.054231):
    # then it stops early, stable.
    strict = dataclasses.replace(quick_cpu, max_noise=1e-12)
    (m,) = measure_latencies([smallest(space)], space, strict)
    medians = m.round_medians
    assert strict.rounds <= len(medians) <= 2 * strict.rounds and m.runs == len(medians) * strict.timed_runs

    def noisy(rounds: tuple[float, ...]) -> bool:
        return robust_relative_error(rounds, float(np.median(rounds))) > strict.max_noise

    for taken in range(strict.rounds, len(medians)):
        assert noisy(medians[:taken]), f"an extra round after quiet rounds: {medians}"
    if len(medians) < 2 * strict.rounds:
        assert m.stable and not noisy(medians), f"stopped early while still noisy: {medians}"
    else:
        assert m.stable == (not noisy(medians)), medians


def test_one_slow_round_does_not_make_a_measurement_noisy() -> None:
    steady = [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0]
    burst = [*steady[:-1], 3.0]  # one round hit by other work: the median barely moves
    assert robust_relative_error(burst, 1.0) < 0.01
    scattered = [0.7, 1.3, 0.8, 1.2, 0.75, 1.25, 0.9, 1.1, 0.85, 1.15]
    assert robust_relative_error(scattered, 1.0) > 0.05


def test_flops_device_is_exact(space: SearchSpace) -> None:
    archs = [sample_uniform(space, random.Random(i)) for i in range(5)]
    assert np.allclose(FlopsCostModel(space).predict(archs), [count_macs(a, space) / 1e6 for a in archs])
    measured = measure_latencies(archs, space, packaged_profile("flops"))
    assert [m.median for m in measured] == [count_macs(a, space) / 1e6 for a in archs]


def test_predictor_recovers_an_additive_cost_and_round_trips(space: SearchSpace, tmp_path: Path) -> None:
    archs = sample_stratified(space, 120, random.Random(1))
    x = features_matrix(archs, space)
    true_w = np.random.default_rng(0).uniform(0.001, 0.02, x.shape[1])
    y = x @ true_w * np.random.default_rng(1).uniform(0.99, 1.01, len(archs))
    pred = LatencyPredictor.fit(archs[:100], y[:100], space, "synthetic")
    metrics = prediction_metrics(pred.predict(archs[100:]), y[100:])
    assert metrics["within_10pct"] == 1.0 and metrics["kendall_tau"] > 0.9
    pred.save(tmp_path / "p.json")
    again = LatencyPredictor.load(tmp_path / "p.json", space)
    assert np.allclose(again.predict(archs), pred.predict(archs))
    other = SearchSpace.from_dict({**json.loads(space.to_json()), "resolutions": [24, 28]})
    with pytest.raises(CheckpointError, match="another search space"):
        LatencyPredictor.load(tmp_path / "p.json", other)
    (tmp_path / "p.json").write_text((tmp_path / "p.json").read_text()[:50])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        LatencyPredictor.load(tmp_path / "p.json", space)


def test_profile_device_resumes_and_loads(space: SearchSpace, quick_cpu: DeviceProfile, tmp_path: Path) -> None:
    first = profile_device(tmp_path, space, quick_cpu, num_archs=16, progress=False, chunk_size=8)
    path = device_dir(tmp_path, "quick") / MEASUREMENTS_FILE
    lines = path.read_text().splitlines()
    assert first.measurements == 16 and len(lines) == 16
    second = profile_device(tmp_path, space, quick_cpu, num_archs=24, progress=False, chunk_size=8)
    assert second.measurements == 24
    assert path.read_text().splitlines()[:16] == lines  # the first 16 were kept, not measured again
    device = load_device(tmp_path, "quick", space)
    assert device.unit == "ms" and device.cost_range[0] < device.cost_range[1]
    assert device.predict([smallest(space), biggest(space)]).shape == (2,)
    assert device.profile.runtime_version == ort.__version__  # the runtime contract records its runtime
    other = DeviceProfile.from_dict({**device.profile.to_dict(), "runtime_version": "0.1.0"})
    with pytest.raises(DeviceError, match=r"measured with ONNX Runtime 0\.1\.0"):
        profile_device(tmp_path, space, other, num_archs=24, progress=False, chunk_size=8)


def test_measuring_against_the_profile_reports_the_machine_speed(space: SearchSpace, quick_cpu: DeviceProfile,
                                                                 tmp_path: Path) -> None:
    profile_device(tmp_path, space, quick_cpu, num_archs=12, progress=False)
    folder = device_dir(tmp_path, "quick")
    profiled = read_measurements(folder / MEASUREMENTS_FILE)
    refs = reference_architectures(profiled, space, 4)
    latencies = sorted(m.corrected for m in profiled)
    by_id = {m.arch_id: m.corrected for m in profiled}
    assert len(refs) == 4 and by_id[refs[0].arch_id] == latencies[0] and by_id[refs[-1].arch_id] == latencies[-1]
    archs = [smallest(space), sample_uniform(space, random.Random(9)), smallest(space)]
    now = measure_against_profile(archs, space, quick_cpu, folder, references=4)
    assert [m.arch_id for m in now.measurements] == [a.arch_id for a in archs]
    # The smallest child is itself a reference candidate, so it is measured once and not used as one.
    assert smallest(space).arch_id not in now.reference_ratios and 3 <= len(now.reference_ratios) <= 4
    assert now.speed == float(np.median(list(now.reference_ratios.values()))) and now.speed > 0
    assert np.allclose(now.at_profile_speed(), [m.corrected / now.speed for m in now.measurements])


def test_a_too_noisy_machine_still_gets_a_flagged_predictor(space: SearchSpace, quick_cpu: DeviceProfile) -> None:
    archs = sample_stratified(space, 12, random.Random(2))
    measured = measure_latencies(archs, space, quick_cpu)
    clean = fit_device(measured, space, quick_cpu)
    assert not clean.fit_on_unstable and clean.unstable == 0
    noisy = [dataclasses.replace(m, stable=False) for m in measured[:-1]] + measured[-1:]
    report = fit_device(noisy, space, quick_cpu)
    assert report.fit_on_unstable and report.unstable == 11
    assert report.predictor is not None and report.predictor.metrics["fit_on_unstable"] is True
    assert report.predictor.metrics["train_size"] == 12  # every measurement, not the one stable one
    with pytest.raises(DeviceError, match="needs at least 10"):
        fit_device(measured[:5], space, quick_cpu)


def test_truncated_measurements_and_unknown_devices_are_named(space: SearchSpace, tmp_path: Path) -> None:
    folder = device_dir(tmp_path, "cpu")
    folder.mkdir(parents=True)
    (folder / "device.json").write_text(packaged_profile("cpu").to_json())
    line = json.dumps({"arch_id": "x", "arch_json": "{}", "macs": 1, "median": 1.0, "p10": 1.0, "p90": 1.0,
                       "round_medians": [1.0], "runs": 1, "stable": True})
    (folder / MEASUREMENTS_FILE).write_text(line + "\n" + line[:40] + "\n")
    with pytest.raises(CheckpointError, match="line 2 is truncated"):
        read_measurements(folder / MEASUREMENTS_FILE)
    with pytest.raises(DeviceError, match=r"unknown device 'tpu'.*\['cpu'\]"):
        load_device(tmp_path, "tpu", space)
    with pytest.raises(CheckpointError, match="profile-device"):
        load_device(tmp_path, "cpu", space)  # no predictor.json yet
    assert not (folder / PREDICTOR_FILE).exists()


def test_cli_profile_device_errors_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "nag.cli", "profile-device", "--device", "nosuch", "--bundle",
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "unknown device 'nosuch'" in proc.stderr and "Traceback" not in proc.stderr


def test_every_kernel_of_the_space_gets_its_own_latency_features(space: SearchSpace) -> None:
    from nag.cost.features import arch_features, feature_names

    names = feature_names(space)
    assert [n for n in names if n.startswith("s0_dw")] == ["s0_dw3_mmacs", "s0_dw5_mmacs", "s0_dw7_mmacs",
                                                          "s0_dw3_100ch", "s0_dw5_100ch", "s0_dw7_100ch"]
    raw = space.to_dict()
    for stage in raw["stages"]:
        stage["kernels"] = [3, 9]
    wide = SearchSpace.from_dict(raw)
    assert "s0_dw9_mmacs" in feature_names(wide) and "s0_dw7_mmacs" not in feature_names(wide)
    arch = biggest(wide)  # every kernel 9
    row = dict(zip(feature_names(wide), arch_features(arch, wide), strict=True))
    assert row["s0_dw9_mmacs"] > 0 and row["s0_dw3_mmacs"] == 0 and row["s3_dw9_100ch"] > 0
