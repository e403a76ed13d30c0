"""The built-in device kinds, `onnxruntime` (measured latency) and `flops` (analytic MACs), and the two
bases a new kind extends: `AnalyticKind` (a cost formula) and `MeasuredKind` (a fitted latency predictor)."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nag.cost.device import GRAPH_OPTIMIZATION_LEVELS, DeviceError, DeviceProfile
from nag.cost.kinds import DeviceKind, register_kind
from nag.cost.measure import LatencyMeasurement, measure_model, measure_onnxruntime
from nag.cost.predictor import CostModel, FlopsCostModel, LatencyPredictor
from nag.cost.store import PREDICTOR_FILE
from nag.space.arch import Architecture, biggest, smallest
from nag.space.plan import count_macs
from nag.space.space import SearchSpace

log = logging.getLogger(__name__)


class AnalyticKind(DeviceKind):
    """A cost computed from the architecture alone: exact, so nothing to measure, fit or keep a margin for."""

    measured = False

    @abstractmethod
    def cost_model(self, space: SearchSpace) -> CostModel: ...

    def measure(self, archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile, *,
                chunk_size: int = 50, retries: int = 2, seed: int = 0,
                on_chunk: Callable[[list[LatencyMeasurement]], None] | None = None) -> list[LatencyMeasurement]:
        costs = [float(c) for c in self.cost_model(space).predict(archs)] if archs else []
        out = [LatencyMeasurement(a.arch_id, a.to_json(), count_macs(a, space), c, c, c, (c,), 1, True)
               for a, c in zip(archs, costs, strict=True)]
        if on_chunk and out:
            on_chunk(out)
        return out

    def load_cost_model(self, folder: Path, profile: DeviceProfile, space: SearchSpace
                        ) -> tuple[CostModel, tuple[float, float]]:
        model = self.cost_model(space)
        lo, hi = (float(v) for v in model.predict([smallest(space), biggest(space)]))
        return model, (lo, hi)


class MeasuredKind(DeviceKind):
    """Latencies measured on the device; served from the latency predictor fitted to them (`nag profile-device`)."""

    measured = True

    def load_cost_model(self, folder: Path, profile: DeviceProfile, space: SearchSpace
                        ) -> tuple[CostModel, tuple[float, float]]:
        predictor = LatencyPredictor.load(folder / PREDICTOR_FILE, space)
        if predictor.device != profile.name:
            raise DeviceError(f"{folder / PREDICTOR_FILE} was fitted for device {predictor.device!r}, "
                              f"not {profile.name!r}")
        return predictor, predictor.latency_range


class FlopsKind(AnalyticKind):
    """The `flops` pseudo-device: the cost is the analytic MACs count, in millions."""

    name = "flops"
    unit = "MMACs"

    def contract(self, profile: DeviceProfile) -> dict[str, Any]:
        return {"device": profile.name, "cost": "analytic multiply-accumulates (MMACs); no runtime settings"}

    def cost_model(self, space: SearchSpace) -> CostModel:
        return FlopsCostModel(space)


class OnnxRuntimeKind(MeasuredKind):
    """Latency in ONNX Runtime under the profile's execution provider, threads, batch and graph optimisation."""

    name = "onnxruntime"
    unit = "ms"

    def contract(self, profile: DeviceProfile) -> dict[str, Any]:
        contract = {
            "device": profile.name, "runtime": "onnxruntime",
            "runtime_version": profile.runtime_version or "unrecorded", "execution_provider": profile.provider,
            "graph_optimization_level": GRAPH_OPTIMIZATION_LEVELS[profile.graph_optimization],
            "intra_op_threads": profile.intra_op_threads, "inter_op_threads": 1, "execution_mode": "ORT_SEQUENTIAL",
            "batch_size": profile.batch_size, "model_format": profile.model_format,
        }
        if profile.measured_remotely:
            on = profile.measured_on
            contract["measured_on"] = f"{on.get('cpu_model', '?')} ({on.get('machine', '?')}, {on.get('os', '?')})"
        return contract

    def contract_problems(self, profile: DeviceProfile) -> tuple[list[str], list[str]]:
        """An error: the execution provider is missing, or the profile was measured with another ONNX Runtime
        major or minor version (its graph optimisations, hence the latencies, differ between releases).
        A warning: the profile predates the recorded version."""
        import onnxruntime as ort

        errors, warnings = [], []
        if profile.measured_remotely:
            # Measured on another machine: this runtime neither has to match nor may it stand in for it.
            warnings.append(f"device {profile.name!r} was measured through a measurement agent on "
                            f"{self.contract(profile)['measured_on']}: this machine does not time its models, so "
                            f"its latencies are predicted, not verified or calibrated here")
            return errors, warnings
        if profile.provider not in ort.get_available_providers():
            errors.append(f"device {profile.name!r} was measured with {profile.provider}, which this ONNX Runtime "
                          f"does not have (available: {ort.get_available_providers()})")
        if not profile.runtime_version:
            warnings.append(f"device {profile.name!r} does not record the ONNX Runtime version it was measured "
                            f"with; its budgets assume the one installed here ({ort.__version__}). Re-profile to "
                            f"record it")
        elif profile.runtime_version.split(".")[:2] != ort.__version__.split(".")[:2]:
            errors.append(f"device {profile.name!r} was measured with ONNX Runtime {profile.runtime_version}, this "
                          f"is {ort.__version__}: its latency budgets may not hold. Re-profile the device here "
                          f"(`nag profile-device --device {profile.name}`), or serve anyway with "
                          f"--allow-contract-mismatch")
        return errors, warnings

    def check_runnable(self, profile: DeviceProfile) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if profile.provider not in available:
            raise DeviceError(f"device {profile.name!r} needs the execution provider {profile.provider}, which "
                              f"this ONNX Runtime does not have (available: {available}); run the profiler on "
                              f"that device")

    def runs_here(self, profile: DeviceProfile) -> bool:
        return not profile.measured_remotely and not self.contract_problems(profile)[0]

    def measure_model(self, model: bytes, profile: DeviceProfile, input_shape: Sequence[int]) -> float:
        return measure_model(model, profile, input_shape)

    def prepare_profiling(self, profile: DeviceProfile, done: Sequence[LatencyMeasurement], path: Path
                          ) -> DeviceProfile:
        import onnxruntime as ort

        if done and profile.measured_remotely:
            raise DeviceError(f"{path} was measured through a measurement agent on "
                              f"{self.contract(profile)['measured_on']}: resume with --agent, or delete it to "
                              f"profile the device on this machine")
        if done and profile.runtime_version and profile.runtime_version != ort.__version__:
            raise DeviceError(f"{path} was measured with ONNX Runtime {profile.runtime_version}, this is "
                              f"{ort.__version__}: delete it to re-profile the device with this runtime")
        if done and not profile.runtime_version:
            log.warning("device %s: the %d measurements already taken do not record their ONNX Runtime version; "
                        "recording %s", profile.name, len(done), ort.__version__)
        return replace(profile, runtime_version=ort.__version__, measured_on={})  # part of the runtime contract

    def measure(self, archs: Sequence[Architecture], space: SearchSpace, profile: DeviceProfile, *,
                chunk_size: int = 50, retries: int = 2, seed: int = 0,
                on_chunk: Callable[[list[LatencyMeasurement]], None] | None = None) -> list[LatencyMeasurement]:
        return measure_onnxruntime(archs, space, profile, chunk_size=chunk_size, retries=retries, seed=seed,
                                   on_chunk=on_chunk)


# The order of the "kind must be one of" message.
register_kind(OnnxRuntimeKind())
register_kind(FlopsKind())
