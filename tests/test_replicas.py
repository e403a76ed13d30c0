"""Several replicas behind a real nginx (deploy/nginx): calls reach both, and a replica killed under load
loses no call thanks to nginx's passive checks and the client's retry policy (nag.client.channel)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.nginx.render import INSTALL_HINT, Nginx, find_nginx
from nag.client import channel, wait_until_serving
from nag.config import ServiceConfig
from nag.server.app import RunningServer, ServerOptions
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _served_ok(metrics_port: int) -> float:
    """GenerateForBudget calls a replica answered OK, from its Prometheus endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if s.name == "nag_requests_total" and s.labels == {"method": "GenerateForBudget", "code": "OK"})


@dataclass
class Fleet:
    a: RunningServer  # in this process
    b: subprocess.Popen[str]  # its own process, so that it can be SIGKILLed
    b_port: int
    b_metrics_port: int
    lb: Nginx
    budgets: list[float]  # MACs, spread over the tiny bundle's range


@pytest.fixture(scope="module")
def fleet(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if find_nginx() is None:
        pytest.fail(f"nginx is not installed (this test runs a real one): {INSTALL_HINT}", pytrace=False)
    tmp = tmp_path_factory.mktemp("replicas")
    b_port, b_metrics = _free_port(), _free_port()
    log = (tmp / "replica_b.log").open("w")
    b = subprocess.Popen([sys.executable, "-m", "nag.cli", "serve", "--bundle", str(tiny_bundle), "--port",
                          str(b_port), "--metrics-port", str(b_metrics), "--max-concurrent", "8"],
                         cwd=REPO, stdout=log, stderr=subprocess.STDOUT, text=True)
    a: RunningServer | None = None
    lb: Nginx | None = None
    try:
        a = RunningServer(ServerOptions(bundle=tiny_bundle, port=0, metrics_port=0,
                                        service=ServiceConfig(max_concurrent=8, cache_mb=64)))
        a.load()
        with channel(f"127.0.0.1:{b_port}") as ch:
            wait_until_serving(ch, alive=lambda: b.poll() is None, why=(tmp / "replica_b.log").read_text)
        lb = Nginx([f"127.0.0.1:{a.port}", f"127.0.0.1:{b_port}"], _free_port(), tmp / "nginx").start()
        with channel(lb.address) as ch:
            devices = pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=30)
        (d,) = devices.devices
        budgets = [(d.min_cost + f * (d.max_cost - d.min_cost)) * 1e6 for f in (0.2, 0.4, 0.6, 0.8, 1.0)]
        yield Fleet(a, b, b_port, b_metrics, lb, budgets)
    finally:
        if lb is not None:
            lb.stop()
        if b.poll() is None:
            b.kill()
        b.wait()
        log.close()
        if a is not None:
            a.stop(1)


def _request(fleet: Fleet, seed: int) -> pb.GenerateForBudgetRequest:
    # A new seed every call: each one samples, chooses and exports (no cache hit), so calls are in flight.
    return pb.GenerateForBudgetRequest(macs=fleet.budgets[seed % len(fleet.budgets)], seed=seed)


def test_calls_through_nginx_reach_both_replicas(fleet: Fleet) -> None:
    a_before, b_before = _served_ok(fleet.a.metrics_port), _served_ok(fleet.b_metrics_port)  # type: ignore[arg-type]
    with channel(fleet.lb.address) as ch:
        stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
        replies = [stub.GenerateForBudget(_request(fleet, seed), timeout=60) for seed in range(12)]
    assert all(r.onnx_model and r.macs <= fleet.budgets[i % len(fleet.budgets)] for i, r in enumerate(replies))
    a_calls = _served_ok(fleet.a.metrics_port) - a_before  # type: ignore[arg-type]
    b_calls = _served_ok(fleet.b_metrics_port) - b_before
    # Round robin: each replica answered some, and every call was answered exactly once.
    assert a_calls > 0 and b_calls > 0 and a_calls + b_calls == 12, (a_calls, b_calls)


def test_killing_a_replica_under_load_loses_no_call(fleet: Fleet) -> None:
    clients, ok, failed = 4, [0, 0], []  # ok: before, after the kill
    killed = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()

    def client(index: int) -> None:
        with channel(fleet.lb.address) as ch:  # the retry policy of nag.client
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            i = 0
            while not stop.is_set():
                after = killed.is_set()
                try:
                    stub.GenerateForBudget(_request(fleet, 1000 * (index + 1) + i), timeout=60)
                    with lock:
                        ok[after] += 1
                except grpc.RpcError as exc:
                    with lock:
                        failed.append(f"{exc.code().name}: {exc.details()}")
                i += 1

    b_before = _served_ok(fleet.b_metrics_port)
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    deadline = time.time() + 30
    while _served_ok(fleet.b_metrics_port) - b_before < 4 and time.time() < deadline:
        time.sleep(0.1)  # under load, and replica b has been answering its share
    os.kill(fleet.b.pid, signal.SIGKILL)
    killed.set()
    a_at_kill = _served_ok(fleet.a.metrics_port)  # type: ignore[arg-type]
    time.sleep(4)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert fleet.b.wait(timeout=10) == -signal.SIGKILL
    assert not failed, f"{len(failed)} calls lost: {failed[:5]}"
    assert ok[0] >= 4 and ok[1] >= clients, ok
    assert _served_ok(fleet.a.metrics_port) - a_at_kill >= clients  # type: ignore[arg-type]
    # nginx noticed (passive check): it logs the refused or broken connection to the dead replica.
    assert f"127.0.0.1:{fleet.b_port}" in fleet.lb.read_error_log(), fleet.lb.read_error_log()
