"""Each defect an outside probe found, reproduced: bad input gets a clear status or error and loses nothing."""

from __future__ import annotations

import logging
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
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nag.cli import main as nag_main
from nag.client import channel, wait_until_serving
from nag.config import ServiceConfig
from nag.errors import NagError
from nag.policy.inference import SATURATION, generate
from nag.server.app import RunningServer, ServerOptions
from nag.server.app import main as serve_main
from nag.server.slots import FifoSlots
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "GenerateForBudget": pb.GenerateForBudgetResponse,
    "ListDevices": pb.ListDevicesResponse,
    "GetFrontier": pb.GetFrontierResponse,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _code(call) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.fixture(scope="module")
def server(tiny_bundle: Path) -> Iterator[RunningServer]:
    running = RunningServer(ServerOptions(bundle=tiny_bundle, port=0, metrics_port=0,
                                          service=ServiceConfig(max_concurrent=4, cache_mb=64)))
    running.load()
    yield running
    running.stop(1, drain=0)


@pytest.fixture()
def stub(server: RunningServer) -> Iterator[pb_grpc.ArchitectureGeneratorServiceStub]:
    with channel(f"127.0.0.1:{server.port}", retries=False) as ch:  # every status code reaches the test
        yield pb_grpc.ArchitectureGeneratorServiceStub(ch)


# 1. Budgets beyond float32 -------------------------------------------------------------------------------

@pytest.mark.parametrize("macs", [3.5e44, 1e308])
def test_huge_macs_budget_gets_a_model(stub, server: RunningServer, macs: float) -> None:  # type: ignore[no-untyped-def]
    r = stub.GenerateForBudget(pb.GenerateForBudgetRequest(macs=macs, seed=0), timeout=60)
    dearest = server.service.bundle.devices["flops"].device.cost_range[1]
    assert r.onnx_model and r.predicted_cost <= dearest * SATURATION
    assert r.target_budget == pytest.approx(SATURATION * dearest)


def test_huge_latency_budget_gets_a_model_in_the_library_and_the_cli(tmp_path: Path) -> None:
    from nag.bundle import load_bundle

    bundle = load_bundle(REPO / "bundles" / "default")
    assert generate(bundle, 1e308, "cpu", seed=0).predicted_cost <= bundle.devices["cpu"].device.cost_range[1] * 2
    for flag, value in (("--budget-ms", "1e308"), ("--macs", "1e300")):
        proc = subprocess.run([sys.executable, "-m", "nag.cli", "generate", "--local", flag, value, "--seed", "0",
                               "-o", str(tmp_path / "m.onnx")], capture_output=True, text=True, cwd=tmp_path,
                              timeout=180, env={**os.environ, "NAG_BUNDLE": str(REPO / "bundles" / "default")})
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert "wrote" in proc.stdout


# 2. Malformed request bytes --------------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(METHODS))
def test_malformed_bytes_are_invalid_argument_without_a_traceback(server: RunningServer, method: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with channel(f"127.0.0.1:{server.port}") as ch:
        raw = ch.unary_unary(f"/nag.v1.ArchitectureGeneratorService/{method}",
                             request_serializer=None, response_deserializer=None)
        # An invalid tag, a length beyond the end, a truncated varint, and invalid UTF-8 in `device`.
        payloads = [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff", b"\x08"]
        for payload in payloads + ([b"\x1a\x02\xff\xfe"] if method == "GenerateForBudget" else []):
            code, details = _code(lambda payload=payload: raw(payload, timeout=10))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert "not a valid" in details
    assert not [r for r in caplog.records if r.exc_info], "a bad request logged a traceback"
    assert not [r for r in caplog.records if "deserializ" in r.getMessage().lower()]


# 3. One GetFrontier call cannot starve the others -----------------------------------------------------------

def test_frontier_work_per_call_is_bounded(stub) -> None:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    code, details = _code(lambda: stub.GetFrontier(pb.GetFrontierRequest(points=200, candidates=4096), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "points x candidates" in details
    assert time.perf_counter() - started < 5


def test_fifo_slots_hand_a_released_slot_to_the_longest_waiter() -> None:
    slots = FifoSlots(1)
    order: list[str] = []
    hog_holds = threading.Event()
    waiter_queued = threading.Event()

    def hog() -> None:
        for i in range(20):
            with slots.hold():
                order.append(f"hog{i}")
                hog_holds.set()
                if i == 0:
                    waiter_queued.wait(5)
                    time.sleep(0.05)  # the waiter is parked on the slot

    def waiter() -> None:
        hog_holds.wait(5)
        threading.Timer(0.01, waiter_queued.set).start()
        with slots.hold():
            order.append("waiter")

    threads = [threading.Thread(target=hog), threading.Thread(target=waiter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # A plain threading.Semaphore lets the hog take the slot back 19 more times first.
    assert order.index("waiter") == 1, order
    assert not slots.acquire(timeout=0) or slots.release() is None


def test_fifo_slots_time_out() -> None:
    slots = FifoSlots(1)
    assert slots.acquire()
    assert not slots.acquire(timeout=0.05)
    slots.release()
    assert slots.acquire(timeout=0.05)


# 4. Long device names -----------------------------------------------------------------------------------------

def test_a_huge_device_name_is_not_found_with_a_short_message(stub) -> None:  # type: ignore[no-untyped-def]
    for call in (lambda: stub.GenerateForBudget(pb.GenerateForBudgetRequest(macs=5e6, device="x" * 20_000),
                                                timeout=10),
                 lambda: stub.GetFrontier(pb.GetFrontierRequest(device="y" * 20_000), timeout=10)):
        code, details = _code(call)
        assert code == grpc.StatusCode.NOT_FOUND and len(details) < 1000 and "20000 characters" in details


# 5-7. Ports, TLS files, seeds --------------------------------------------------------------------------------

def test_a_second_server_on_the_same_port_fails(server: RunningServer, tiny_bundle: Path) -> None:
    with pytest.raises(NagError, match="cannot bind"):
        RunningServer(ServerOptions(bundle=tiny_bundle, port=server.port, metrics_port=-1))


def _serve_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = serve_main(list(args))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must lie in [0, 65535]"),
    (["--port", "-1"], "--port must lie in [0, 65535]"),
    (["--metrics-port", "65536"], "--metrics-port must lie"),
    (["--tls-cert", "/nonexistent/cert.pem", "--tls-key", "/nonexistent/key.pem"], "cannot read the TLS"),
    (["--tls-cert", "/nonexistent/cert.pem"], "go together"),
    (["--token-file", "/nonexistent/token"], "cannot read --token-file"),
    (["--max-concurrent", "0"], "--max-concurrent and --candidates must be at least 1, --cache-mb not negative"),
])
def test_serve_refuses_bad_options_in_one_line(tiny_bundle: Path, capsys: pytest.CaptureFixture[str],
                                               args: list[str], message: str) -> None:
    code, err = _serve_cli(capsys, "--bundle", str(tiny_bundle), *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_metrics_port_in_use_is_a_clear_error_and_frees_the_grpc_port(tiny_bundle: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        grpc_port = _free_port()
        code, err = _serve_cli(capsys, "--bundle", str(tiny_bundle), "--port", str(grpc_port), "--metrics-port",
                               str(busy.getsockname()[1]))
    assert code == 2 and "cannot serve metrics" in err and "Traceback" not in err
    with socket.socket() as again:  # the gRPC port it had bound is free again
        again.bind(("127.0.0.1", grpc_port))


@pytest.mark.parametrize("seed", ["18446744073709551616", "-1"])
def test_generate_refuses_a_seed_beyond_uint64(tiny_bundle: Path, tmp_path: Path, seed: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    for where in (["--local", "--bundle", str(tiny_bundle)], ["--server", "127.0.0.1:1"]):
        code = nag_main(["generate", "--macs", "5e6", "--seed", seed, "-o", str(tmp_path / "m.onnx"), *where])
        err = capsys.readouterr().err
        assert code == 2 and "--seed must lie in [0, 2**64 - 1]" in err


def test_the_largest_seed_works(stub) -> None:  # type: ignore[no-untyped-def]
    r = stub.GenerateForBudget(pb.GenerateForBudgetRequest(macs=5e6, seed=2**64 - 1), timeout=60)
    assert r.seed == 2**64 - 1


# 10. Shutdown and the token -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_after_sigterm_new_calls_get_unavailable_shutting_down(tiny_bundle: Path, tmp_path: Path) -> None:
    port = _free_port()
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    proc = subprocess.Popen([sys.executable, "-m", "nag.cli", "serve", "--bundle", str(tiny_bundle), "--port",
                             str(port), "--metrics-port", "-1", "--token-file", str(token)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    auth = [("authorization", "Bearer s3cret")]
    try:
        with channel(f"127.0.0.1:{port}", retries=False) as ch:
            wait_until_serving(ch)
            s = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            code, _ = _code(lambda: s.ListDevices(pb.ListDevicesRequest(), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED
            in_flight = s.GetFrontier.future(pb.GetFrontierRequest(points=100, candidates=160, seed=0), timeout=120,
                                             metadata=auth)
            time.sleep(0.5)
            os.kill(proc.pid, signal.SIGTERM)
            while True:  # the first answer that is not OK must be the service's own, not a refused connection
                try:
                    s.ListDevices(pb.ListDevicesRequest(), timeout=10, metadata=auth)
                    time.sleep(0.02)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in exc.details(), \
                        exc.details()
                    break
            assert len(in_flight.result().points) == 100  # the call in flight still finishes
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "--token is readable" not in proc.stdout.read()  # type: ignore[union-attr]


def test_a_token_on_the_command_line_is_warned_about(tiny_bundle: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    import argparse

    from nag.server.app import add_server_arguments, options_from_args

    p = argparse.ArgumentParser()
    add_server_arguments(p)
    with caplog.at_level(logging.WARNING):
        options = options_from_args(p.parse_args(["--bundle", str(tiny_bundle), "--token", "abc"]))
    assert options.token == "abc" and any("/proc/PID/cmdline" in r.getMessage() for r in caplog.records)


# Metrics operators can alert on -----------------------------------------------------------------------------------

def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_error_counters_exist_from_zero_with_process_and_build_info(tiny_bundle: Path) -> None:
    running = RunningServer(ServerOptions(bundle=tiny_bundle, port=0, metrics_port=0))
    try:
        before = _scrape(running.metrics_port)  # type: ignore[arg-type]
        for method in METHODS:
            for code in ("OK", "INVALID_ARGUMENT", "NOT_FOUND", "OUT_OF_RANGE", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
                         "INTERNAL", "DEADLINE_EXCEEDED", "UNAUTHENTICATED"):
                assert before[("nag_requests_total", (("code", code), ("method", method)))] == 0.0
        assert ("process_resident_memory_bytes", ()) in before
        assert before[("nag_request_duration_seconds_bucket", (("le", "60.0"), ("method", "GetFrontier")))] == 0
        running.load()
        after = _scrape(running.metrics_port)  # type: ignore[arg-type]
        info = [labels for name, labels in after if name == "nag_build_info"]
        assert info and dict(info[0])["bundle_id"] == running.service.bundle.bundle_id
    finally:
        running.stop(0, drain=0)
