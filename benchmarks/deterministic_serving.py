"""Answers as a property of the bundle: the same budgets asked of real `nag serve` processes under changing
conditions, and the latency of budgets never asked before.

    python -m benchmarks.deterministic_serving [--bundle bundles/default] [--later-s 70]

Per device, 24 budgets (16 in the cheapest third of its range, where the front is dense) are asked of a
server with its defaults: idle; `--later-s` seconds later; with 4 busy processes on the cores; after a
restart; and of a second replica. Each condition's model bytes are compared with the idle ones. Then, from
one client, 100 budgets nobody asked before (p50, p99), and 32 clients at once, each with budgets of its own
(p99): once receiving every model, once keeping what they received (`known_sha256`). The 32 clients run
`--bursts` times (10 budgets each, all new, a few seconds apart), each client's channel connected before
its calls are timed; a burst lasts under a second, so each burst's p99 and the server's CPU time per answer
in it are reported beside the pooled figures: the 2-core machine's speed changes from one burst to the next.
Writes benchmarks/results/deterministic_serving.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from benchmarks.results_io import machine, write_results
from nag.bundle.bundle import load_bundle
from nag.client import channel, wait_until_serving
from nag.policy.frontier import serving_frontier
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

BUSY = "import time\nend = time.time() + 900\nwhile time.time() < end:\n    pass\n"


def budgets_over(lo: float, hi: float, cheap: int = 16, rest: int = 8) -> list[float]:
    third = lo + (hi - lo) / 3
    return [float(b) for b in np.geomspace(lo * 1.001, third, cheap)] + \
        [float(b) for b in np.linspace(third, hi, rest + 1)[1:]]


class Server:
    def __init__(self, bundle: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        started = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "nag.cli", "serve", "--bundle", bundle, "--port",
                                      str(self.port), "--metrics-port", "-1"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            with channel(f"127.0.0.1:{self.port}") as ch:
                wait_until_serving(ch, 300, alive=lambda: self.proc.poll() is None)
        except BaseException:
            self.stop()  # a server that never became SERVING is not left running
            raise
        self.ready_s = time.perf_counter() - started

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def ask(port: int, requests: list[pb.GenerateForBudgetRequest], keep: bool = False,
        start: threading.Barrier | None = None) -> list[tuple[str, float]]:
    """(sha256, seconds) per request, in order; `keep`: the client keeps the models it received and lists
    them in `known_sha256`, so the server does not send one again. With `start`, the channel is connected
    first and the calls begin when every client of the barrier is connected."""
    out: list[tuple[str, float]] = []
    held: dict[str, bytes] = {}
    with channel(f"127.0.0.1:{port}") as ch:
        if start is not None:
            grpc.channel_ready_future(ch).result(timeout=60)
            start.wait(timeout=120)
        stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
        for r in requests:
            if keep:
                r = pb.GenerateForBudgetRequest()
                r.CopyFrom(requests[len(out)])
                r.known_sha256.extend(held)
            t = time.perf_counter()
            reply = stub.GenerateForBudget(r, timeout=120)
            model = held[reply.onnx_sha256] if reply.model_omitted else reply.onnx_model
            out.append((reply.onnx_sha256, time.perf_counter() - t))
            if keep:
                held[reply.onnx_sha256] = model
    return out


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(server: Server, requests: list[pb.GenerateForBudgetRequest], keep: bool) -> tuple[list[float], float]:
    """32 clients at once, 10 of `requests` each, calls timed once every client is connected: the seconds of
    every call, and the server's CPU milliseconds per answer over the burst."""
    chunks = [requests[10 * i: 10 * i + 10] for i in range(32)]
    barrier = threading.Barrier(32)
    before = process_cpu_s(server.proc.pid)
    with ThreadPoolExecutor(32) as pool:
        times = [t for result in pool.map(lambda c: ask(server.port, c, keep, barrier), chunks) for _, t in result]
    return times, 1e3 * (process_cpu_s(server.proc.pid) - before) / len(requests)


def requests_for(device: str, unit: str, budgets: list[float]) -> list[pb.GenerateForBudgetRequest]:
    if unit == "MMACs":
        return [pb.GenerateForBudgetRequest(device=device, macs=b * 1e6) for b in budgets]
    return [pb.GenerateForBudgetRequest(device=device, latency_ms=b) for b in budgets]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--later-s", type=float, default=70.0)
    p.add_argument("--bursts", type=int, default=5, help="bursts of 32 clients (each way)")
    p.add_argument("--name", default="deterministic_serving")
    args = p.parse_args(argv)
    bundle = load_bundle(args.bundle)
    asked: dict[str, list[pb.GenerateForBudgetRequest]] = {}
    fresh: list[pb.GenerateForBudgetRequest] = []
    for name, models in sorted(bundle.devices.items()):
        lo, hi = models.min_cost, serving_frontier(bundle, models).best.cost
        asked[name] = requests_for(name, models.device.unit, budgets_over(lo, hi))
        if name == bundle.default_device:  # never asked before: off the 24-budget grid
            fresh = requests_for(name, models.device.unit, [float(b) for b in np.linspace(lo * 1.0005, hi * 1.2,
                                                                                         100 + 2 * args.bursts * 320)])
    server = Server(args.bundle)
    ready = [server.ready_s]
    idle = {d: [s for s, _ in ask(server.port, r)] for d, r in asked.items()}
    changed: dict[str, dict[str, int]] = {d: {} for d in asked}

    def compare(condition: str, port: int) -> None:
        for d, r in asked.items():
            now = [s for s, _ in ask(port, r)]
            changed[d][condition] = sum(a != b for a, b in zip(idle[d], now, strict=True))
        print(f"{condition}: changed " + ", ".join(f"{d} {changed[d][condition]}/24" for d in asked), flush=True)

    print(f"SERVING after {server.ready_s:.1f} s; asking again in {args.later_s:.0f} s", flush=True)
    time.sleep(args.later_s)
    compare(f"{args.later_s:.0f} s later", server.port)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(4)]
    try:
        compare("4 busy processes", server.port)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    replica = Server(args.bundle)
    ready.append(replica.ready_s)
    compare("another replica", replica.port)
    replica.stop()
    server.stop()
    server = Server(args.bundle)
    ready.append(server.ready_s)
    compare("after a restart", server.port)
    one = [t for _, t in ask(server.port, fresh[:100])]
    bursts: dict[str, list[tuple[list[float], float]]] = {"clients32": [], "clients32_keeping": []}
    start = 100
    for _ in range(args.bursts):
        for kind in bursts:
            bursts[kind].append(burst(server, fresh[start: start + 320], keep=kind == "clients32_keeping"))
            start += 320
            time.sleep(2)
    many = [t for times, _ in bursts["clients32"] for t in times]
    kept = [t for times, _ in bursts["clients32_keeping"] for t in times]
    server.stop()
    latency = {"one_client_p50_ms": 1e3 * float(np.percentile(one, 50)),
               "one_client_p99_ms": 1e3 * float(np.percentile(one, 99)),
               "clients32_p50_ms": 1e3 * float(np.percentile(many, 50)),
               "clients32_p99_ms": 1e3 * float(np.percentile(many, 99)),
               "clients32_keeping_p50_ms": 1e3 * float(np.percentile(kept, 50)),
               "clients32_keeping_p99_ms": 1e3 * float(np.percentile(kept, 99))}
    per_burst = {kind: [{"p50_ms": round(1e3 * float(np.percentile(times, 50)), 1),
                         "p99_ms": round(1e3 * float(np.percentile(times, 99)), 1),
                         "server_cpu_ms_per_answer": round(cpu, 3)} for times, cpu in runs]
                 for kind, runs in bursts.items()}
    result = {"bundle_id": bundle.bundle_id, "budgets": {d: 24 for d in asked}, "changed": changed,
              "ready_s": ready, "fresh_budgets": {"one_client": 100, "clients32": 320 * args.bursts,
                                                  "clients32_keeping": 320 * args.bursts},
              "latency": latency, "bursts": per_burst,
              "machine": machine()}
    conditions = list(next(iter(changed.values())))
    lines = [f"# Deterministic serving (bundle `{bundle.bundle_id}`)", "",
             "Model bytes that changed against the idle answers, of 24 budgets per device (16 in the cheapest "
             "third of its range):", "", "| device | " + " | ".join(conditions) + " |",
             "|---|" + "---|" * len(conditions)]
    lines += [f"| `{d}` | " + " | ".join(f"{c[k]}/24" for k in conditions) + " |" for d, c in changed.items()]
    lines += ["", f"Start to SERVING (2 cores): {', '.join(f'{s:.1f} s' for s in ready)}.", "",
              "Budgets never asked before, after SERVING: one client, 100 budgets: p50 "
              f"{latency['one_client_p50_ms']:.1f} ms, p99 {latency['one_client_p99_ms']:.1f} ms; 32 clients at "
              f"once, 10 budgets each, {args.bursts} bursts pooled: p50 {latency['clients32_p50_ms']:.1f} ms, p99 "
              f"{latency['clients32_p99_ms']:.1f} ms; 32 clients that keep the models they received (by SHA-256, "
              f"listed in `known_sha256`, so a model already held is not sent again), 10 other new budgets each: "
              f"p50 {latency['clients32_keeping_p50_ms']:.1f} ms, p99 {latency['clients32_keeping_p99_ms']:.1f} ms.",
              "", "Each burst of 32 clients (its p99, and the server's CPU time per answer in it: the machine's "
              "speed changes between bursts):", "", "| burst | receiving every model | keeping what they received |",
              "|---|---|---|"]
    lines += [f"| {i + 1} | p99 {a['p99_ms']:.1f} ms, {a['server_cpu_ms_per_answer']:.2f} ms CPU | p99 "
              f"{b['p99_ms']:.1f} ms, {b['server_cpu_ms_per_answer']:.2f} ms CPU |"
              for i, (a, b) in enumerate(zip(per_burst["clients32"], per_burst["clients32_keeping"], strict=True))]
    write_results(args.name, result, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
