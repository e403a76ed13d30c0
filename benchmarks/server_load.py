"""Server load over loopback: latency percentiles and throughput, uncached vs cached, 1 vs 32 clients.

    python -m benchmarks.server_load --bundle bundles/default [--soak-seconds 60]

The server runs in its own process (`nag serve`), as deployed. "Uncached" requests use a fresh seed
each (a new generation) against a server whose model cache is disabled, so every request samples,
chooses, slices, calibrates and exports; "cached" requests repeat one seeded request, so the server
answers from its pick and model caches. The soak test runs 32 clients for `--soak-seconds` with a
mix of both and reports unexpected errors and the server's resident memory growth.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.results_io import machine, markdown_table, write_results
from nag.client import channel, wait_until_serving
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def budget_request(device: pb.Device, budget: float, seed: int) -> pb.GenerateForBudgetRequest:
    """A request for `budget` in the device's own unit (ms, or MMACs for an analytic device)."""
    r = pb.GenerateForBudgetRequest(device=device.name, seed=seed)
    if device.cost_unit == "ms":
        r.latency_ms = budget
    else:
        r.macs = budget * 1e6
    return r


class Server:
    def __init__(self, bundle: str, cache_mb: float, max_concurrent: int, extra: list[str] | None = None,
                 cores: set[int] | None = None):
        """A `nag serve` process; `cores` confines it (every thread) to those CPU cores."""
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nag.cli", "serve", "--bundle", bundle, "--port", str(self.port),
             "--metrics-port", "-1", "--cache-mb", str(cache_mb), "--max-concurrent", str(max_concurrent),
             "--workers", str(max_concurrent + 8), *(extra or [])],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
        with channel(self.address) as ch:
            wait_until_serving(ch, alive=lambda: self.proc.poll() is None)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def run_clients(address: str, clients: int, requests_per_client: int | None, seconds: float | None,
                make_request: Any) -> dict[str, Any]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds if seconds else None
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        with channel(address) as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            stub.ListDevices(pb.ListDevicesRequest(), timeout=30)  # connect before timing
            barrier.wait()
            i = 0
            while (requests_per_client is None or i < requests_per_client) and \
                    (stop_at is None or time.perf_counter() < stop_at):
                req = make_request(index, i)
                start = time.perf_counter()
                try:
                    stub.GenerateForBudget(req, timeout=60)
                    with lock:
                        latencies.append(time.perf_counter() - start)
                except grpc.RpcError as exc:
                    with lock:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"clients": clients, "requests": len(latencies), "errors": errors, "wall_s": wall,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None,
            "req_per_s": len(latencies) / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--uncached-requests", type=int, default=60)
    p.add_argument("--cached-requests", type=int, default=3000)
    p.add_argument("--soak-seconds", type=float, default=60)
    args = p.parse_args(argv)

    probe = Server(args.bundle, 0, 8)
    with channel(probe.address) as ch:
        devices = pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=10)
    probe.stop()
    device = next(d for d in devices.devices if d.name == args.device)
    budgets = np.linspace(device.min_cost * 1.2, device.max_cost, 16)

    def request(budget: float, seed: int) -> pb.GenerateForBudgetRequest:
        return budget_request(device, budget, seed)

    def uncached(client: int, i: int) -> pb.GenerateForBudgetRequest:
        return request(float(budgets[(client + i) % len(budgets)]), 1_000_000 + client * 100_000 + i)

    def cached(client: int, i: int) -> pb.GenerateForBudgetRequest:
        return request(float(budgets[len(budgets) // 2]), 7)

    rows, data = [], {"machine": machine(), "bundle": args.bundle, "device": args.device, "runs": []}
    # Uncached: the model cache is off, every request has a new seed.
    server = Server(args.bundle, 0, 64)
    for clients in (1, 32):
        n = args.uncached_requests if clients == 1 else max(1, 4 * args.uncached_requests // clients)
        r = run_clients(server.address, clients, n, None, uncached)
        data["runs"].append({"kind": "uncached", **r})
        print("uncached", r, flush=True)
    server.stop()
    server = Server(args.bundle, 256, 64)
    for clients in (1, 32):
        n = args.cached_requests // clients
        r = run_clients(server.address, clients, n, None, cached)
        data["runs"].append({"kind": "cached", **r})
        print("cached", r, flush=True)
    server.stop()
    for run in data["runs"]:
        rows.append([run["kind"], run["clients"], run["requests"], f"{run['p50_ms']:.1f}", f"{run['p99_ms']:.1f}",
                     f"{run['req_per_s']:.0f}", sum(run["errors"].values())])

    # Soak: 32 clients, mixed uncached (1 in 8) and cached requests, 16 concurrent slots.
    server = Server(args.bundle, 64, 16)
    rss_start = _rss_mb(server.proc.pid)

    def mixed(client: int, i: int) -> pb.GenerateForBudgetRequest:
        return uncached(client, i) if i % 8 == 0 else request(float(budgets[i % len(budgets)]), client % 4)

    rss_samples: list[float] = []
    sampling = threading.Event()

    def sample_rss() -> None:
        while not sampling.wait(1.0):
            rss_samples.append(_rss_mb(server.proc.pid))

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    soak = run_clients(server.address, 32, None, args.soak_seconds, mixed)
    sampling.set()
    sampler.join()
    rss_end = _rss_mb(server.proc.pid)
    server.stop()
    unexpected = {k: v for k, v in soak["errors"].items() if k != "RESOURCE_EXHAUSTED"}
    data["soak"] = {**soak, "rss_start_mb": rss_start, "rss_end_mb": rss_end,
                    "rss_max_mb": max([*rss_samples, rss_end]), "unexpected_errors": unexpected}
    print("soak", data["soak"], flush=True)
    md = (f"# Server load over loopback (bundle `{args.bundle}`, device `{args.device}`)\n\n"
          f"Server in its own process; {os.cpu_count()} CPU cores shared by server and clients.\n\n")
    md += markdown_table(["requests", "clients", "n", "p50 ms", "p99 ms", "req/s", "errors"], rows)
    s = data["soak"]
    md += (f"\nSoak: 32 clients for {args.soak_seconds:.0f} s (1 in 8 requests uncached, 16 concurrent slots): "
           f"{s['requests']} requests, {s['req_per_s']:.0f} req/s, p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms; "
           f"errors {s['errors'] or 'none'} (unexpected: {unexpected or 'none'}); server RSS "
           f"{s['rss_start_mb']:.0f} MB at start (after warm-up), {s['rss_end_mb']:.0f} MB at the end, "
           f"max {s['rss_max_mb']:.0f} MB.\n")
    write_results("server_load", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
