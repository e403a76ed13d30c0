"""The gRPC server over real loopback: status codes, health, reflection, metrics, cache, auth, SIGTERM."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from nag.bundle import load_bundle
from nag.client import channel, wait_until_serving
from nag.config import ServiceConfig
from nag.server.app import RunningServer, ServerOptions
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[RunningServer]:
    options = ServerOptions(bundle=tiny_bundle, port=0, metrics_port=0,
                            service=ServiceConfig(max_concurrent=2, cache_mb=64))
    running = RunningServer(options)
    with channel(f"127.0.0.1:{running.port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        code, _ = _code(lambda: pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(pb.ListDevicesRequest(),
                                                                                          timeout=5))
    running.not_serving_before_load = (status, code)  # type: ignore[attr-defined]
    running.load()
    yield running
    running.stop(1)


@pytest.fixture()
def stub(server: RunningServer) -> Iterator[pb_grpc.ArchitectureGeneratorServiceStub]:
    with channel(f"127.0.0.1:{server.port}", retries=False) as ch:  # every status code reaches the test
        yield pb_grpc.ArchitectureGeneratorServiceStub(ch)


def _code(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_health_goes_from_not_serving_to_serving(server: RunningServer) -> None:
    status, code = server.not_serving_before_load  # type: ignore[attr-defined]
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING and code == grpc.StatusCode.UNAVAILABLE
    with channel(f"127.0.0.1:{server.port}") as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for name in ("", "nag.v1.ArchitectureGeneratorService"):
            assert h.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_service(server: RunningServer) -> None:
    with channel(f"127.0.0.1:{server.port}") as ch:
        services = ProtoReflectionDescriptorDatabase(ch).get_services()
    assert "nag.v1.ArchitectureGeneratorService" in services and "grpc.health.v1.Health" in services


def test_generated_model_is_servable_and_cached(stub, tiny_bundle: Path) -> None:  # type: ignore[no-untyped-def]
    bundle = load_bundle(tiny_bundle)
    lo, hi = bundle.devices["flops"].device.cost_range
    # The standard form is not exported at start (the portable default is, for every frontier member).
    req = pb.GenerateForBudgetRequest(macs=(lo + 0.6 * (hi - lo)) * 1e6, graph_form=pb.GRAPH_FORM_STANDARD)
    r = stub.GenerateForBudget(req, timeout=30)
    assert hashlib.sha256(r.onnx_model).hexdigest() == r.onnx_sha256
    assert r.macs <= req.macs and r.device == "flops" and r.cost_unit == "MMACs" and not r.cached
    assert list(r.input_shape) == [-1, 1, 28, 28] and r.timings.export_ms > 0
    portable = stub.GenerateForBudget(pb.GenerateForBudgetRequest(macs=req.macs), timeout=30)
    assert portable.cached and portable.timings.export_ms == 0 and portable.architecture_id == r.architecture_id
    session = ort.InferenceSession(r.onnx_model, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.shape[1:] == [1, 28, 28]
    out = session.run(None, {"images": np.random.rand(3, 1, 28, 28).astype(np.float32)})[0]
    assert out.shape == (3, 10)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["nag.arch_json"]) == json.loads(r.architecture_json)
    assert json.loads(meta["nag.classes"]) == list(r.class_names) and len(r.class_names) == 10
    assert json.loads(meta["nag.input"])["range"] == [0.0, 1.0]
    again = stub.GenerateForBudget(req, timeout=30)
    assert again.cached and again.architecture_id == r.architecture_id and again.onnx_sha256 == r.onnx_sha256
    assert r.architecture.resolution == json.loads(r.architecture_json)["resolution"]


def test_bad_requests_get_clear_status_codes_and_the_server_survives(stub, server: RunningServer) -> None:  # type: ignore[no-untyped-def]
    minimum = server.service.bundle.devices["flops"].min_cost
    cases = [
        (pb.GenerateForBudgetRequest(macs=math.nan), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (pb.GenerateForBudgetRequest(macs=math.inf), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (pb.GenerateForBudgetRequest(macs=-math.inf), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (pb.GenerateForBudgetRequest(macs=0), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (pb.GenerateForBudgetRequest(macs=-5e6), grpc.StatusCode.INVALID_ARGUMENT, "finite"),
        (pb.GenerateForBudgetRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no budget"),
        (pb.GenerateForBudgetRequest(macs=5e6, candidates=100_000), grpc.StatusCode.INVALID_ARGUMENT, "candidates"),
        (pb.GenerateForBudgetRequest(latency_ms=1.0, device="flops"), grpc.StatusCode.INVALID_ARGUMENT, "macs"),
        (pb.GenerateForBudgetRequest(macs=5e6, device="tpu"), grpc.StatusCode.NOT_FOUND, "['flops']"),
        (pb.GenerateForBudgetRequest(macs=minimum * 0.5e6), grpc.StatusCode.OUT_OF_RANGE,
         f"minimum is {minimum:.4g}"),
    ]
    for req, code, text in cases:
        got, details = _code(lambda req=req: stub.GenerateForBudget(req, timeout=10))
        assert got == code, (req, details)
        assert text in details, details
    code, _ = _code(lambda: stub.GetFrontier(pb.GetFrontierRequest(points=1), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.ListDevices(pb.ListDevicesRequest(), timeout=10).devices[0].name == "flops"  # still serving


def test_frontier_and_devices(stub) -> None:  # type: ignore[no-untyped-def]
    devices = stub.ListDevices(pb.ListDevicesRequest(), timeout=10)
    (d,) = devices.devices
    assert d.kind == pb.DEVICE_KIND_FLOPS and d.cost_unit == "MMACs" and len(d.budgets) == 10
    assert devices.default_device == "flops" and d.min_cost < d.max_cost
    frontier = stub.GetFrontier(pb.GetFrontierRequest(points=6, seed=1), timeout=60)
    assert len(frontier.points) == 6
    assert all(p.predicted_cost <= p.budget for p in frontier.points)


def test_metrics_count_what_was_asked(stub, server: RunningServer) -> None:  # type: ignore[no-untyped-def]
    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    key = ("nag_requests_total", (("code", "OK"), ("method", "ListDevices")))
    before = scrape().get(key, 0.0)
    for _ in range(3):
        stub.ListDevices(pb.ListDevicesRequest(), timeout=10)
    _code(lambda: stub.GenerateForBudget(pb.GenerateForBudgetRequest(macs=math.nan), timeout=10))
    after = scrape()
    assert after[key] == before + 3
    assert after[("nag_requests_total", (("code", "INVALID_ARGUMENT"), ("method", "GenerateForBudget")))] >= 1
    assert any(name == "nag_stage_duration_seconds_count" for name, _ in after)


def test_overload_is_answered_resource_exhausted(stub, server: RunningServer) -> None:  # type: ignore[no-untyped-def]
    # max_concurrent=2: two slow frontier calls occupy the slots, the third call is refused at once.
    results: list[object] = []

    def slow() -> None:
        try:
            results.append(stub.GetFrontier(pb.GetFrontierRequest(points=60, candidates=128), timeout=120))
        except grpc.RpcError as exc:
            results.append(exc.code())

    threads = [threading.Thread(target=slow) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while server.service._slots._value > 0 and time.time() < deadline:
        time.sleep(0.01)
    code, details = _code(lambda: stub.ListDevices(pb.ListDevicesRequest(), timeout=10))
    for t in threads:
        t.join()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in details
    assert all(isinstance(r, pb.GetFrontierResponse) for r in results)


def test_bearer_token_is_required_when_configured(tiny_bundle: Path) -> None:
    running = RunningServer(ServerOptions(bundle=tiny_bundle, port=0, metrics_port=-1, token="s3cret"))
    running.load()
    try:
        with channel(f"127.0.0.1:{running.port}") as ch:
            s = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            code, _ = _code(lambda: s.ListDevices(pb.ListDevicesRequest(), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            ok = s.ListDevices(pb.ListDevicesRequest(), timeout=10, metadata=[("authorization", "Bearer s3cret")])
            assert ok.devices
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING  # health stays open
    finally:
        running.stop(1)


@pytest.mark.slow
def test_sigterm_finishes_in_flight_calls(tiny_bundle: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nag.cli", "serve", "--bundle", str(tiny_bundle), "--port",
                             str(port), "--metrics-port", "-1", "--max-concurrent", "8"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with channel(f"127.0.0.1:{port}") as ch:
            wait_until_serving(ch)
            s = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            futures = [s.GetFrontier.future(pb.GetFrontierRequest(points=60, candidates=128, seed=i), timeout=120)
                       for i in range(4)]
            time.sleep(0.5)  # the calls are in flight
            os.kill(proc.pid, signal.SIGTERM)
            results = [f.result() for f in futures]  # raises if any call was lost
            assert all(len(r.points) == 60 for r in results)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cli_generate_remote_and_local(server: RunningServer, tiny_bundle: Path, tmp_path: Path) -> None:
    def nag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "nag.cli", "generate", *args], capture_output=True, text=True,
                              cwd=REPO, timeout=120)

    remote = nag("--macs", "6e6", "--seed", "4", "-o", str(tmp_path / "r.onnx"), "--server",
                 f"127.0.0.1:{server.port}")
    assert remote.returncode == 0, remote.stderr
    assert "predicted accuracy" in remote.stdout and "wrote" in remote.stdout
    local = nag("--macs", "6e6", "--seed", "4", "-o", str(tmp_path / "l.onnx"), "--local", "--bundle", str(tiny_bundle))
    assert local.returncode == 0, local.stderr
    arch_line = [line for line in remote.stdout.splitlines() if line.startswith("architecture")]
    assert arch_line == [line for line in local.stdout.splitlines() if line.startswith("architecture")]
    # The same serving policy in-process: the same model bytes, runtime contract metadata included.
    assert (tmp_path / "r.onnx").read_bytes() == (tmp_path / "l.onnx").read_bytes()
    ort.InferenceSession(str(tmp_path / "l.onnx"), providers=["CPUExecutionProvider"])
    bad = nag("--macs", "-1", "-o", str(tmp_path / "x.onnx"), "--server", f"127.0.0.1:{server.port}")
    assert bad.returncode != 0 and "INVALID_ARGUMENT" in bad.stderr and "Traceback" not in bad.stderr


def test_client_deadline_is_reported(stub) -> None:  # type: ignore[no-untyped-def]
    code, _ = _code(lambda: stub.GetFrontier(pb.GetFrontierRequest(points=200, candidates=64), timeout=0.001))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0,
                    reason="needs the openssl command to make a test certificate")
def test_tls(tiny_bundle: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    running = RunningServer(ServerOptions(bundle=tiny_bundle, port=0, metrics_port=-1, tls_cert=cert, tls_key=key))
    running.load()
    try:
        creds = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(f"localhost:{running.port}", creds) as ch:
            r = pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=10)
            assert r.devices
        with channel(f"127.0.0.1:{running.port}") as plain:  # a plaintext client cannot talk to it
            code, _ = _code(lambda: pb_grpc.ArchitectureGeneratorServiceStub(plain).ListDevices(
                pb.ListDevicesRequest(), timeout=5))
            assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(1)
