"""The runtime contract: every setting a latency budget depends on, in the profile, the models and ListDevices;
a profile this runtime cannot honour is refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest

from nag.artifacts import file_sha256
from nag.bundle.bundle import MANIFEST_FILE, seal_manifest
from nag.client import channel
from nag.config import ServiceConfig
from nag.cost.device import DeviceError, DeviceProfile, contract_problems, packaged_profile
from nag.cost.measure import session_options
from nag.errors import NagError
from nag.policy.answer import AnswerOptions, ServingPolicy, rounded_speed
from nag.policy.request import resolve_request
from nag.server.app import RunningServer, ServerOptions
from nag.server.app import main as serve_main
from nag.server.calibration import Speed
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "bundles" / "default"


def test_the_contract_names_everything_latency_depends_on() -> None:
    contract = DeviceProfile(name="edge", runtime_version="1.2.3", graph_optimization="basic").contract()
    assert contract == {
        "device": "edge", "runtime": "onnxruntime", "runtime_version": "1.2.3",
        "execution_provider": "CPUExecutionProvider", "graph_optimization_level": "ORT_ENABLE_BASIC",
        "intra_op_threads": 1, "inter_op_threads": 1, "execution_mode": "ORT_SEQUENTIAL", "batch_size": 1,
        "model_format": "onnx",
    }
    assert "runtime" not in packaged_profile("flops").contract()
    with pytest.raises(DeviceError, match="graph_optimization 'fast' must be one of"):
        DeviceProfile(name="edge", graph_optimization="fast")


@pytest.mark.parametrize("level, expected", [("disable", "ORT_DISABLE_ALL"), ("all", "ORT_ENABLE_ALL")])
def test_latency_is_measured_under_the_profiles_optimisation_level(level: str, expected: str) -> None:
    options = session_options(DeviceProfile(name="edge", graph_optimization=level))
    assert options.graph_optimization_level == getattr(ort.GraphOptimizationLevel, expected)


def test_contract_problems() -> None:
    here = DeviceProfile(name="edge", runtime_version=ort.__version__)
    assert contract_problems(here) == ([], [])
    errors, _ = contract_problems(DeviceProfile(name="edge", runtime_version="0.1.0"))
    assert len(errors) == 1 and "measured with ONNX Runtime 0.1.0" in errors[0]
    errors, _ = contract_problems(DeviceProfile(name="edge", provider="NoSuchExecutionProvider",
                                                runtime_version=ort.__version__))
    assert len(errors) == 1 and "NoSuchExecutionProvider" in errors[0]
    errors, warnings = contract_problems(DeviceProfile(name="edge"))
    assert not errors and "does not record the ONNX Runtime version" in warnings[0]


@pytest.fixture(scope="module")
def mismatched_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default bundle with its cpu device recorded as measured by another ONNX Runtime (manifest resealed)."""
    root = tmp_path_factory.mktemp("mismatch") / "bundle"
    shutil.copytree(DEFAULT, root)
    rel = "devices/cpu/device.json"
    profile = json.loads((root / rel).read_text())
    (root / rel).write_text(json.dumps({**profile, "runtime_version": "0.1.0"}))
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    manifest["files"][rel] = file_sha256(root / rel)
    (root / MANIFEST_FILE).write_text(json.dumps(seal_manifest(manifest)))
    return root


def test_a_mismatched_contract_is_refused_unless_allowed(mismatched_bundle: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert serve_main(["--bundle", str(mismatched_bundle), "--port", "0", "--metrics-port", "-1"]) == 2
    err = capsys.readouterr().err
    assert "measured with ONNX Runtime 0.1.0" in err and "--allow-contract-mismatch" in err
    assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1
    running = RunningServer(ServerOptions(bundle=mismatched_bundle, port=0, metrics_port=-1))
    try:
        with pytest.raises(NagError, match=r"0\.1\.0"):
            running.load()
    finally:
        running.stop(0, drain=0)
    allowed = RunningServer(ServerOptions(bundle=mismatched_bundle, port=0, metrics_port=-1,
                                          allow_contract_mismatch=True))
    try:
        allowed.load()
    finally:
        allowed.stop(0, drain=0)


@pytest.fixture(scope="module")
def default_server() -> Iterator[RunningServer]:
    """The default bundle served with speed calibration on (`nag serve --calibrate-speed`)."""
    running = RunningServer(ServerOptions(bundle=DEFAULT, port=0, metrics_port=-1,
                                          service=ServiceConfig(calibrate_speed=True)))
    running.load()
    yield running
    running.stop(0, drain=0)


def test_every_served_model_carries_the_contract_listdevices_states(default_server: RunningServer) -> None:
    with channel(f"127.0.0.1:{default_server.port}") as ch:
        stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
        devices = {d.name: d for d in stub.ListDevices(pb.ListDevicesRequest(), timeout=10).devices}
        cpu = devices["cpu"]
        assert cpu.graph_optimization_level == "ORT_ENABLE_ALL" and cpu.model_format == "onnx"
        assert json.loads(cpu.runtime_contract_json)["intra_op_threads"] == 1
        for request in (pb.GenerateForBudgetRequest(latency_ms=0.3, seed=0),
                        pb.GenerateForBudgetRequest(macs=5e6, seed=0)):
            reply = stub.GenerateForBudget(request, timeout=60)
            meta = {p.key: p.value for p in onnx.load_from_string(reply.onnx_model).metadata_props}
            assert meta["nag.device"] == reply.device
            assert json.loads(meta["nag.runtime_contract"]) == json.loads(reply.runtime_contract_json) == \
                json.loads(devices[reply.device].runtime_contract_json)


def test_local_devices_are_calibrated_and_listed(default_server: RunningServer) -> None:
    with channel(f"127.0.0.1:{default_server.port}") as ch:
        devices = {d.name: d for d in pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(
            pb.ListDevicesRequest(), timeout=10).devices}
    assert devices["cpu"].local and not devices["flops"].local
    assert 0.2 < devices["cpu"].speed < 5 and devices["cpu"].speed_measured_unix > 0  # measured at start
    assert devices["flops"].speed == 1.0


def _ask(port: int, budgets: list[float], **fields: object) -> list[pb.GenerateForBudgetResponse]:
    with channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
        return [stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=b, **fields), timeout=60)
                for b in budgets]


def test_speed_is_applied_only_when_asked_and_reported(default_server: RunningServer) -> None:
    (applied,) = _ask(default_server.port, [0.2])  # the server's flag makes it the default
    (plain,) = _ask(default_server.port, [0.2], apply_speed=False)
    speed = default_server.service.calibration.speed("cpu")  # type: ignore[union-attr]
    assert applied.speed_applied and applied.device_speed == rounded_speed(speed.value)  # type: ignore[union-attr]
    assert not plain.speed_applied and plain.device_speed == 1.0
    bundle = default_server.service.bundle
    local = ServingPolicy(bundle).answer(resolve_request(bundle, latency_ms=0.2), AnswerOptions())
    assert plain.onnx_sha256 == local.model.sha256  # without the speed: what any host answers


def test_verification_steps_down_one_frontier_member_at_a_time(default_server: RunningServer) -> None:
    """With the speed wrongly calibrated at half the real one, the pick targets about twice what fits and runs
    over the budget; each step serves the next cheaper frontier member, never a jump to the cheapest child."""
    calibration = default_server.service.calibration
    assert calibration is not None
    real = calibration.speed("cpu")
    assert real is not None
    calibration._speeds["cpu"] = Speed(real.value / 2, real.measured_at, real.seconds)
    try:
        (unverified,) = _ask(default_server.port, [0.25], verify_latency=False)
        (verified,) = _ask(default_server.port, [0.25], verify_latency=True)
    finally:
        calibration._speeds["cpu"] = real  # type: ignore[assignment]
    assert not unverified.latency_verified and unverified.measured_latency_ms == 0.0
    assert unverified.predicted_cost * real.value > 0.25  # over the budget at the machine's real speed
    assert verified.latency_verified and verified.measured_latency_ms > 0 and verified.timings.verify_ms > 0
    assert 1 <= verified.verification_steps <= 3
    assert verified.frontier_member == unverified.frontier_member - verified.verification_steps
    assert verified.predicted_cost < unverified.predicted_cost


