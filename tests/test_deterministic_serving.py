"""An answer is a property of (bundle, device, budget, graph form): the same model bytes on an idle host, a busy
one, after a restart and in-process (`nag generate --local`), from the bundle's materialized serving frontier."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from nag.bundle.bundle import load_bundle
from nag.client import channel
from nag.config import ServiceConfig
from nag.policy.answer import AnswerOptions, ServingPolicy
from nag.policy.frontier import serving_frontier
from nag.policy.request import resolve_request
from nag.server.app import RunningServer, ServerOptions
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "bundles" / "default"
BUSY = "import time\nend = time.time() + 600\nwhile time.time() < end:\n    pass\n"


def budgets_over(lo: float, hi: float, cheap: int = 16, rest: int = 8) -> list[float]:
    """`cheap` budgets in the cheapest third of [lo, hi] (where the front is dense), `rest` above it."""
    third = lo + (hi - lo) / 3
    return [float(b) for b in np.geomspace(lo * 1.001, third, cheap)] + \
        [float(b) for b in np.linspace(third, hi, rest + 1)[1:]]


def _ask(port: int, budgets: list[float], **fields: object) -> list[pb.GenerateForBudgetResponse]:
    with channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
        return [stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=b, **fields), timeout=60)
                for b in budgets]


@pytest.fixture(scope="module")
def cpu_budgets() -> list[float]:
    bundle = load_bundle(DEFAULT)
    models = bundle.devices["cpu"]
    return budgets_over(models.min_cost, serving_frontier(bundle, models).best.cost)


def _server(**service: object) -> RunningServer:
    running = RunningServer(ServerOptions(bundle=DEFAULT, port=0, metrics_port=-1, service=ServiceConfig(**service)))
    running.load()
    return running


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = _server()
    yield running
    running.stop(0, drain=0)


def test_the_committed_bundle_serves_its_materialized_frontier(server: RunningServer) -> None:
    bundle = server.service.bundle
    for name, models in bundle.devices.items():
        assert models.stored is not None, name
        assert serving_frontier(bundle, models).materialized
        assert models.stored.calibration_images == len(bundle.trained.calibration_images) == 2000


def test_the_same_budget_gives_the_same_bytes_idle_busy_after_a_restart_and_in_process(
        server: RunningServer, cpu_budgets: list[float]) -> None:
    idle = [r.onnx_sha256 for r in _ask(server.port, cpu_budgets)]
    assert len(idle) == 24 and len(set(idle)) > 5  # many different members across the range
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(4)]  # real load on the 2 cores
    try:
        loaded = [r.onnx_sha256 for r in _ask(server.port, cpu_budgets)]
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert loaded == idle
    restarted = _server()
    try:
        again = [r.onnx_sha256 for r in _ask(restarted.port, cpu_budgets)]
    finally:
        restarted.stop(0, drain=0)
    assert again == idle
    bundle = load_bundle(DEFAULT)
    policy = ServingPolicy(bundle)
    local = [policy.answer(resolve_request(bundle, latency_ms=b), AnswerOptions()).model.sha256 for b in cpu_budgets]
    assert local == idle


def test_a_served_model_says_what_it_is(server: RunningServer) -> None:
    specialised = server.service.bundle.specialised
    assert specialised  # the committed bundle serves its cheap members specialised
    cheap, dear = _ask(server.port, [0.2, 0.4])  # in the cheapest third of the `cpu` range, and above it
    for reply in (cheap, dear):
        meta = {p.key: p.value for p in onnx.load_from_string(reply.onnx_model).metadata_props}
        assert int(meta["nag.frontier_member"]) == reply.frontier_member >= 0
        assert json.loads(meta["nag.runtime_contract"]) == json.loads(reply.runtime_contract_json)
        assert reply.cached  # exported when the server started
        assert not reply.speed_applied and reply.device_speed == 1.0 and not reply.latency_verified
        assert meta["nag.model_kind"] == reply.model_kind
        assert meta["nag.bn_statistics"] == reply.bn_statistics
    assert cheap.architecture_id in specialised and dear.architecture_id not in specialised
    assert (cheap.model_kind, cheap.bn_statistics) == ("specialised", "specialised:2000")
    assert cheap.specialised_from.startswith(f"slice {cheap.architecture_id} of supernet sha256:")
    assert (dear.model_kind, dear.bn_statistics, dear.specialised_from) == ("slice", "stored:2000", "")


def test_deprecated_fields_change_nothing_and_are_listed(server: RunningServer) -> None:
    plain, seeded = _ask(server.port, [0.2]), _ask(server.port, [0.2], seed=7, candidates=5)
    assert plain[0].onnx_sha256 == seeded[0].onnx_sha256
    assert list(plain[0].deprecated_fields) == [] and list(seeded[0].deprecated_fields) == ["candidates", "seed"]
    assert seeded[0].seed == 7


def test_verification_where_it_cannot_be_done_is_refused(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as info, channel(f"127.0.0.1:{server.port}") as ch:
        pb_grpc.ArchitectureGeneratorServiceStub(ch).GenerateForBudget(
            pb.GenerateForBudgetRequest(macs=5e6, verify_latency=True), timeout=60)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "flops" in info.value.details()


def test_a_speed_asked_of_a_server_that_does_not_calibrate_is_refused(server: RunningServer) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _ask(server.port, [0.2], apply_speed=True)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--calibrate-speed" in info.value.details()


def test_a_budget_in_the_devices_own_unit_is_the_same_request(server: RunningServer) -> None:
    """`cost` takes a budget in any device's unit (a device kind with a new unit needs no proto change)."""
    with channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
        for own, classic in ((pb.GenerateForBudgetRequest(cost=0.2), pb.GenerateForBudgetRequest(latency_ms=0.2)),
                             (pb.GenerateForBudgetRequest(device="flops", cost=5.0),
                              pb.GenerateForBudgetRequest(macs=5e6))):
            a, b = stub.GenerateForBudget(own, timeout=60), stub.GenerateForBudget(classic, timeout=60)
            assert a.onnx_sha256 == b.onnx_sha256 and a.device == b.device


def test_a_model_the_client_holds_is_not_sent_again(server: RunningServer, tmp_path: Path) -> None:
    (first,) = _ask(server.port, [0.2])
    (again,) = _ask(server.port, [0.2], known_sha256=[first.onnx_sha256, "0" * 64])
    assert again.model_omitted and again.onnx_model == b"" and again.onnx_sha256 == first.onnx_sha256
    assert again.architecture_id == first.architecture_id and again.frontier_member == first.frontier_member
    (other,) = _ask(server.port, [0.45], known_sha256=[first.onnx_sha256])
    assert not other.model_omitted and other.onnx_model and other.onnx_sha256 != first.onnx_sha256
    # `nag generate --model-cache DIR` keeps what it received and is not sent it again.
    cache, out = tmp_path / "models", tmp_path / "m.onnx"
    for _ in range(2):
        run = subprocess.run([sys.executable, "-m", "nag.cli", "generate", "--budget-ms", "0.2", "-o", str(out),
                              "--server", f"127.0.0.1:{server.port}", "--model-cache", str(cache)],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        assert run.returncode == 0, run.stderr
        assert out.read_bytes() == first.onnx_model
    assert [p.name for p in cache.iterdir()] == [f"{first.onnx_sha256}.onnx"]
