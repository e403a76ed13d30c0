"""Server load over loopback: latency percentiles and throughput of budgets never asked before vs one repeated
budget, 1 vs 32 clients; the cold path (a graph form not exported at start); a soak; the time to SERVING.

    python -m benchmarks.server_load --bundle bundles/default [--soak-seconds 60]

The server runs in its own process (`nag serve` with its defaults: no latency verification, no speed), as
deployed. Before SERVING it exports every member of each device's serving frontier in the warmed (portable)
graph form, and it answers any budget with one of those models: so "fresh" requests (every request a budget
nobody asked before, distinct across the whole run) and "repeated" ones (one budget, again and again) take the
same path. The only path that still slices and exports is a graph form that was not warmed (standard, mobile):
its first use per member is "cold", later uses come from an LRU of `--cache-mb` (which holds nothing else that a
budget request can reach, except the space's cheapest child); with `--cache-mb 0` every such request is cold.
The soak runs 32 clients against 16 slots for `--soak-seconds`: mostly fresh budgets, 1 in 8 in a non-warmed
form with a small LRU (`--soak-cache-mb`), so that exports and evictions keep happening; it reports unexpected
errors and the server's resident memory.
"""

from __future__ import annotations

import argparse
import itertools
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
GOLDEN = (5 ** 0.5 - 1) / 2
FORMS = {"portable": pb.GRAPH_FORM_PORTABLE, "standard": pb.GRAPH_FORM_STANDARD, "mobile": pb.GRAPH_FORM_MOBILE}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def budget_request(device: pb.Device, budget: float, form: str = "portable", **fields: Any
                   ) -> pb.GenerateForBudgetRequest:
    """A request for `budget` in the device's own unit (ms, or MMACs for an analytic device)."""
    r = pb.GenerateForBudgetRequest(device=device.name, graph_form=FORMS[form], **fields)
    if device.cost_unit == "ms":
        r.latency_ms = budget
    else:
        r.macs = budget * 1e6
    return r


class FreshBudgets:
    """Budgets across [lo, hi] that never repeat (a Weyl sequence), from any thread."""

    def __init__(self, lo: float, hi: float):
        self.lo, self.hi, self._k = lo, hi, itertools.count()

    def __call__(self) -> float:
        return self.lo + (self.hi - self.lo) * ((next(self._k) * GOLDEN + 0.5) % 1.0)


class Server:
    def __init__(self, bundle: str, cache_mb: float, max_concurrent: int, extra: list[str] | None = None,
                 cores: set[int] | None = None):
        """A `nag serve` process; `cores` confines it (every thread) to those CPU cores. `ready_s`: seconds
        from the process's start to health SERVING."""
        self.port = _free_port()
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nag.cli", "serve", "--bundle", bundle, "--port", str(self.port),
             "--metrics-port", "-1", "--cache-mb", str(cache_mb), "--max-concurrent", str(max_concurrent),
             "--workers", str(max_concurrent + 8), *(extra or [])],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
        with channel(self.address) as ch:
            wait_until_serving(ch, 600, alive=lambda: self.proc.poll() is None)
        self.ready_s = time.perf_counter() - started

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _percentiles(seconds: list[float]) -> dict[str, float | None]:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


def run_clients(address: str, clients: int, requests_per_client: int | None, seconds: float | None,
                make_request: Any) -> dict[str, Any]:
    """`clients` threads, one channel each; latencies overall and split by the reply's `cached`."""
    latencies: dict[bool, list[float]] = {True: [], False: []}
    errors: dict[str, int] = {}
    sizes: list[int] = []
    server_ms: list[float] = []  # the reply's own timings.total_ms: time inside the server's handler
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
                    reply = stub.GenerateForBudget(req, timeout=60)
                    with lock:
                        latencies[reply.cached].append(time.perf_counter() - start)
                        sizes.append(len(reply.onnx_model))
                        server_ms.append(reply.timings.total_ms)
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
    every = latencies[True] + latencies[False]
    return {"clients": clients, "requests": len(every), "cached_replies": len(latencies[True]), "errors": errors,
            "wall_s": wall, **_percentiles(every), "req_per_s": len(every) / wall,
            "model_mb_mean": float(np.mean(sizes)) / 1e6 if sizes else None,
            "server_ms_p50": float(np.median(server_ms)) if server_ms else None,
            "cold": {"requests": len(latencies[False]), **_percentiles(latencies[False])},
            "from_cache": {"requests": len(latencies[True]), **_percentiles(latencies[True])}}


def soak(bundle: str, device: pb.Device, fresh: FreshBudgets, seconds: float, cache_mb: float) -> dict[str, Any]:
    """32 clients, 16 slots: fresh portable budgets, 1 in 8 in a non-warmed form; RSS sampled every second."""
    server = Server(bundle, cache_mb, 16)
    rss: list[tuple[float, float]] = [(0.0, _rss_mb(server.proc.pid))]
    sampling, started = threading.Event(), time.perf_counter()

    def sample_rss() -> None:
        while not sampling.wait(1.0):
            rss.append((time.perf_counter() - started, _rss_mb(server.proc.pid)))

    def mixed(client: int, i: int) -> pb.GenerateForBudgetRequest:
        form = ("standard" if (client + i) % 16 == 0 else "mobile") if (client + i) % 8 == 0 else "portable"
        return budget_request(device, fresh(), form)

    sampler = threading.Thread(target=sample_rss)
    sampler.start()
    result = run_clients(server.address, 32, None, seconds, mixed)
    sampling.set()
    sampler.join()
    rss_end = _rss_mb(server.proc.pid)
    server.stop()
    half = next(mb for t, mb in rss if t >= seconds / 2) if rss[-1][0] >= seconds / 2 else float("nan")
    return {**result, "ready_s": server.ready_s, "cache_mb": cache_mb, "rss_start_mb": rss[0][1],
            "rss_half_mb": half, "rss_end_mb": rss_end, "rss_max_mb": max([mb for _, mb in rss] + [rss_end]),
            "unexpected_errors": {k: v for k, v in result["errors"].items() if k != "RESOURCE_EXHAUSTED"}}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--requests", type=int, default=3000, help="requests per fresh/repeated run (all clients)")
    p.add_argument("--cold-requests", type=int, default=60, help="requests per run in a non-warmed graph form")
    p.add_argument("--soak-seconds", type=float, default=60)
    p.add_argument("--soak-cache-mb", type=float, default=8.0, help="LRU of the soak's server (a few models)")
    args = p.parse_args(argv)

    data: dict[str, Any] = {"machine": machine(), "load_average_at_start": os.getloadavg(), "bundle": args.bundle,
                            "device": args.device, "runs": [], "ready_s": []}
    server = Server(args.bundle, 256, 64)  # --cache-mb 256: the default
    data["ready_s"].append(server.ready_s)
    print(f"SERVING {server.ready_s:.1f} s after the process started", flush=True)
    with channel(server.address) as ch:
        devices = pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=10)
    device = next(d for d in devices.devices if d.name == args.device)
    fresh = FreshBudgets(device.min_cost * 1.001, device.max_cost)
    repeated = float(device.min_cost + device.max_cost) / 2

    def record(name: str, form: str, cache_mb: float, r: dict[str, Any]) -> None:
        data["runs"].append({"kind": name, "form": form, "cache_mb": cache_mb, **r})
        print(name, form, cache_mb, {k: v for k, v in r.items() if k not in ("cold", "from_cache")}, flush=True)

    for clients in (1, 32):
        n = args.requests // clients
        record("fresh budgets", "portable", 256, run_clients(
            server.address, clients, n, None, lambda c, i: budget_request(device, fresh())))
        record("repeated budget", "portable", 256, run_clients(
            server.address, clients, n, None, lambda c, i: budget_request(device, repeated)))
    # A non-warmed form: the first use of each member is cold; then the LRU of --cache-mb answers.
    record("fresh budgets", "standard", 256, run_clients(
        server.address, 1, args.cold_requests, None, lambda c, i: budget_request(device, fresh(), "standard")))
    server.stop()
    server = Server(args.bundle, 0, 64)  # --cache-mb 0: every request in a non-warmed form is cold
    data["ready_s"].append(server.ready_s)
    record("fresh budgets", "mobile", 0, run_clients(
        server.address, 1, args.cold_requests, None, lambda c, i: budget_request(device, fresh(), "mobile")))
    record("fresh budgets", "standard", 0, run_clients(
        server.address, 32, max(1, 4 * args.cold_requests // 32), None,
        lambda c, i: budget_request(device, fresh(), "standard")))
    server.stop()
    data["soak"] = soak(args.bundle, device, fresh, args.soak_seconds, args.soak_cache_mb)
    data["ready_s"].append(data["soak"]["ready_s"])
    print("soak", {k: v for k, v in data["soak"].items() if k not in ("cold", "from_cache")}, flush=True)

    base = {r["clients"]: r for r in data["runs"] if r["kind"] == "repeated budget"}
    rows = []
    for r in data["runs"]:
        parts = [("", r)] if r["form"] == "portable" or r["cache_mb"] == 0 else \
            [(": first use (cold)", r["cold"]), (": again (LRU)", r["from_cache"])]
        for label, part in parts:
            b = base[r["clients"]]
            rows.append([r["kind"] + label, r["form"], f"{r['cache_mb']:g}", r["clients"], part["requests"],
                         r["cached_replies"] if not label else part["requests"] * ("LRU" in label),
                         _ms(part["p50_ms"]), _ms(part["p99_ms"]),
                         f"{r['req_per_s']:.0f}" if not label else "-",
                         _ms(r["server_ms_p50"]) if not label else "-",
                         f"{r['model_mb_mean']:.2f}" if not label else "-",
                         f"{part['p50_ms'] / b['p50_ms']:.2f}" if part["p50_ms"] else "-",
                         sum(r["errors"].values())])
    s = data["soak"]
    ready = ", ".join(f"{x:.1f}" for x in data["ready_s"])
    load = ", ".join(f"{x:.1f}" for x in data["load_average_at_start"])
    md = (f"# Server load over loopback (bundle `{args.bundle}`, device `{args.device}`)\n\n"
          f"`nag serve` in its own process with its defaults (no latency verification, no speed; every serving-"
          f"frontier member exported in the portable form before SERVING); {os.cpu_count()} CPU cores shared by "
          f"the server, the clients and other work (load average {load} at the start). Fresh budgets: every "
          "request a budget never asked before (distinct across the run); repeated: one budget again and again. "
          "Standard and mobile forms are not exported at start: their first use per member slices and exports "
          "(cold), then the LRU of `--cache-mb` answers; with `--cache-mb 0` every such request is cold. "
          "`cached`: replies the server marked cached; server p50: the median of the replies' own "
          "`timings.total_ms` (inside the handler, queueing for the compute slot included); model MB: mean ONNX "
          "bytes per reply. Baseline: the repeated budget with as many clients, measured in the same run.\n\n")
    md += markdown_table(["requests", "form", "cache MB", "clients", "n", "cached", "p50 ms", "p99 ms", "req/s",
                          "server p50 ms", "model MB", "p50 / repeated p50", "errors"], rows)
    md += (f"\nStart of the process to SERVING (bundle loaded, frontier members exported, biggest child checked): "
           f"{ready} s (the servers of this run, in order).\n\n"
           f"Soak: 32 clients for {args.soak_seconds:.0f} s against 16 slots, fresh budgets, 1 in 8 requests in "
           f"the standard or mobile form with `--cache-mb {s['cache_mb']:g}` (so exports and evictions keep "
           f"happening): {s['requests']} answered ({s['requests'] - s['cached_replies']} cold), "
           f"{s['req_per_s']:.0f} req/s, p50 {_ms(s['p50_ms'])} ms, p99 {_ms(s['p99_ms'])} ms; errors "
           f"{s['errors'] or 'none'} (unexpected: {s['unexpected_errors'] or 'none'}); server RSS "
           f"{s['rss_start_mb']:.0f} MB at SERVING, {s['rss_half_mb']:.0f} MB half-way, {s['rss_end_mb']:.0f} MB at "
           f"the end (max {s['rss_max_mb']:.0f} MB): {s['rss_end_mb'] - s['rss_start_mb']:+.0f} MB over the soak, "
           f"{s['rss_end_mb'] - s['rss_half_mb']:+.0f} MB over its second half.\n")
    write_results("server_load", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
