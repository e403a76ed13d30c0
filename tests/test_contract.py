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

from nag.bundle.bundle import MANIFEST_FILE, _sha256, seal_manifest
from nag.client import channel
from nag.cost.device import DeviceError, DeviceProfile, contract_problems, packaged_profile
from nag.cost.measure import session_options
from nag.errors import NagError
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
    manifest["files"][rel] = _sha256(root / rel)
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
    running = RunningServer(ServerOptions(bundle=DEFAULT, port=0, metrics_port=-1))
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


def test_a_pick_measured_over_the_budget_is_replaced_by_a_cheaper_one(default_server: RunningServer) -> None:
    """With the speed wrongly calibrated at half the real one (this machine's speed, whatever it is), the first
    pick targets about twice what fits and runs over the budget; verification measures that and steps down to
    cheaper picks."""
    calibration = default_server.service.calibration
    assert calibration is not None
    real = calibration.speed("cpu")
    assert real is not None
    calibration._speeds["cpu"] = Speed(real.value / 2, real.measured_at, real.seconds)
    try:
        with channel(f"127.0.0.1:{default_server.port}") as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            unverified = stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=0.25, seed=5,
                                                                            verify_latency=False), timeout=60)
            verified = stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=0.25, seed=5,
                                                                          verify_latency=True), timeout=60)
    finally:
        calibration._speeds["cpu"] = real  # type: ignore[assignment]
    assert not unverified.latency_verified and unverified.measured_latency_ms == 0.0
    # Generated for 0.25 / (real speed / 2) at the profile's speed: at the machine's real speed it is predicted
    # to run over the budget (whether this machine is faster or slower than the profiled one).
    assert unverified.predicted_cost * real.value > 0.25
    assert verified.latency_verified and verified.verification_steps >= 1 and verified.timings.verify_ms > 0
    assert verified.predicted_cost < unverified.predicted_cost
    assert verified.measured_latency_ms > 0
