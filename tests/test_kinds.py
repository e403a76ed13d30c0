"""A device kind of the user's own: one class, registered once, served by the same library paths."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nag.cost import kinds
from nag.cost.builtin_kinds import AnalyticKind, FlopsKind, MeasuredKind
from nag.cost.device import DeviceError, DeviceProfile, check_runnable, contract_problems
from nag.cost.kinds import register_kind, registered_kinds
from nag.cost.measure import LatencyMeasurement, measure_latencies
from nag.cost.predictor import CostModel
from nag.cost.profiling import profile_device
from nag.cost.store import PREDICTOR_FILE, PROFILE_FILE, device_dir, load_device
from nag.space import Architecture, SearchSpace, biggest, count_macs, count_params, sample_uniform, smallest


@dataclass(frozen=True)
class ParamsCostModel:
    space: SearchSpace
    unit: str = "kparams"

    def predict(self, archs: Sequence[Architecture]) -> np.ndarray:
        return np.array([count_params(a, self.space) / 1e3 for a in archs], dtype=float)


class ParamsKind(AnalyticKind):
    name = "params"
    unit = "kparams"

    def contract(self, profile: DeviceProfile) -> dict[str, Any]:
        return {"device": profile.name, "cost": "parameters (thousands)"}

    def cost_model(self, space: SearchSpace) -> CostModel:
        return ParamsCostModel(space)


class DoubleMacsKind(MeasuredKind):
    """A "measured" device whose latency is 2 µs per kMAC: profiled, fitted and loaded like a real one."""

    name = "double-macs"
    unit = "ms"

    def contract(self, profile: DeviceProfile) -> dict[str, Any]:
        return {"device": profile.name, "runtime": "simulated"}

    def measure(self, archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile, *,
                chunk_size: int = 50, retries: int = 2, seed: int = 0,
                on_chunk: Callable[[list[LatencyMeasurement]], None] | None = None) -> list[LatencyMeasurement]:
        out = []
        for a in archs:
            macs = count_macs(a, space)
            ms = 2 * macs / 1e6
            out.append(LatencyMeasurement(a.arch_id, a.to_json(), macs, ms, ms, ms, (ms,), 1, True))
        if on_chunk and out:
            on_chunk(out)
        return out


@pytest.fixture()
def user_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))  # registered for this test only
    with pytest.raises(DeviceError, match=r"kind 'params' must be one of \['onnxruntime', 'flops'\]"):
        DeviceProfile(name="p", kind="params")
    register_kind(ParamsKind())
    register_kind(DoubleMacsKind())


@pytest.mark.usefixtures("user_kinds")
def test_an_analytic_kind_of_ones_own_is_profiled_loaded_and_measured(space: SearchSpace, tmp_path: Path) -> None:
    profile = DeviceProfile(name="p", kind="params")
    assert profile.unit == "kparams" and profile.contract() == {"device": "p", "cost": "parameters (thousands)"}
    assert contract_problems(profile) == ([], []) and check_runnable(profile) is None
    assert not profile.device_kind.runs_here(profile)

    report = profile_device(tmp_path, space, profile, progress=False)
    assert report.predictor is None and report.measurements == 0  # nothing to measure
    assert DeviceProfile.load(device_dir(tmp_path, "p") / PROFILE_FILE) == profile
    device = load_device(tmp_path, "p", space)
    assert device.unit == "kparams"
    ends = [smallest(space), biggest(space)]
    assert device.cost_range == tuple(count_params(a, space) / 1e3 for a in ends)
    archs = [sample_uniform(space, random.Random(i)) for i in range(4)]
    assert list(device.predict(archs)) == [count_params(a, space) / 1e3 for a in archs]
    assert [m.median for m in measure_latencies(archs, space, profile)] == list(device.predict(archs))


@pytest.mark.usefixtures("user_kinds")
def test_a_measured_kind_of_ones_own_gets_a_fitted_predictor(space: SearchSpace, tmp_path: Path) -> None:
    profile = DeviceProfile(name="sim", kind="double-macs")
    report = profile_device(tmp_path, space, profile, num_archs=20, progress=False)
    assert report.measurements == 20 and (device_dir(tmp_path, "sim") / PREDICTOR_FILE).is_file()
    device = load_device(tmp_path, "sim", space)
    assert device.unit == "ms" and device.profile.device_kind.measured
    arch = sample_uniform(space, random.Random(5))
    assert device.predict([arch])[0] == pytest.approx(2 * count_macs(arch, space) / 1e6, rel=0.1)


def test_kinds_are_registered_once(monkeypatch: pytest.MonkeyPatch) -> None:
    assert list(registered_kinds()) == ["onnxruntime", "flops"]
    monkeypatch.setattr(kinds, "_KINDS", dict(kinds._KINDS))
    with pytest.raises(ValueError, match="registered already"):
        register_kind(FlopsKind())
