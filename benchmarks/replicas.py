"""Several replicas behind nginx: throughput and latency with 1 vs 2 replicas, and a replica killed under load.

    python -m benchmarks.replicas --bundle bundles/default [--clients 16] [--seconds 15] [--repeats 2]

Each replica is a `nag serve` process with its defaults (no verification, no speed; every serving-frontier
member exported in the portable form before SERVING) and more slots than there are clients (nobody is refused
for overload); nginx (deploy/nginx, one worker) balances them. The 1-replica and 2-replica runs go through
the same nginx config, in turn, so the ratio compares replicas, not proxies; one direct run (no nginx) shows
the proxy's cost. "Fresh": every call a budget never asked before (distinct across the run); "repeated": 16
budgets cycled. Both are answered from the models exported at start. "Cold": fresh budgets in the standard
graph form (not warmed) on replicas with `--cache-mb 0`, so every call slices and exports, the only work
left per call. The kill runs SIGKILL one of two replicas a third of the way into a fresh-budget run and count
the calls that failed, with and without the client's retry policy (nag.client.channel), and with and without
`non_idempotent` in nginx's grpc_next_upstream.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from benchmarks.results_io import machine, markdown_table, write_results
from benchmarks.server_load import FreshBudgets, Server, _free_port, budget_request
from deploy.nginx.render import Nginx, find_nginx
from nag.client import channel
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

SLOTS = 64  # --max-concurrent of each replica: above the clients, so no call is refused for overload


def run_load(address: str, clients: int, seconds: float, make_request: Callable[[int, int], Any],
             retries: bool = True, at: tuple[float, Callable[[], None]] | None = None) -> dict[str, Any]:
    """`clients` threads, each with its own channel, call GenerateForBudget for `seconds`; `at=(t, f)`
    calls f() t seconds in."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    cached = [0]
    lock = threading.Lock()
    barrier, go = threading.Barrier(clients + 1), threading.Event()
    stop_at = [0.0]

    def client(index: int) -> None:
        with channel(address, retries=retries) as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            stub.ListDevices(pb.ListDevicesRequest(), timeout=30)  # connect before timing
            barrier.wait()
            go.wait()
            i = 0
            while time.perf_counter() < stop_at[0]:
                req = make_request(index, i)
                start = time.perf_counter()
                try:
                    reply = stub.GenerateForBudget(req, timeout=60)
                    with lock:
                        latencies.append(time.perf_counter() - start)
                        cached[0] += reply.cached
                except grpc.RpcError as exc:
                    with lock:
                        errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()  # every client connected
    started = time.perf_counter()
    stop_at[0] = started + seconds
    go.set()
    if at is not None:
        time.sleep(max(0.0, started + at[0] - time.perf_counter()))
        at[1]()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"clients": clients, "ok": len(latencies), "cached_replies": cached[0], "errors": errors,
            "lost": sum(errors.values()),
            "wall_s": wall, "req_per_s": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=15, help="length of each throughput run")
    p.add_argument("--repeats", type=int, default=2, help="throughput runs per replica count and workload")
    p.add_argument("--kill-seconds", type=float, default=15, help="length of each kill run")
    p.add_argument("--name", default="replicas")
    args = p.parse_args(argv)
    if find_nginx() is None:
        print("error: nginx is not installed (apt-get install -y nginx-light)", file=sys.stderr)
        return 2

    def start(count: int, cache_mb: float) -> list[Server]:  # in parallel: each warms up for seconds
        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(lambda _: Server(args.bundle, cache_mb, SLOTS), range(count)))

    servers = start(2, 256)
    with channel(servers[0].address) as ch:
        devices = pb_grpc.ArchitectureGeneratorServiceStub(ch).ListDevices(pb.ListDevicesRequest(), timeout=10)
    device = next(d for d in devices.devices if d.name == args.device)
    budgets = np.linspace(device.min_cost * 1.2, device.max_cost, 16)
    fresh = FreshBudgets(device.min_cost * 1.001, device.max_cost)

    def fresh_request(client: int, i: int) -> pb.GenerateForBudgetRequest:
        return budget_request(device, fresh())

    def repeated(client: int, i: int) -> pb.GenerateForBudgetRequest:
        return budget_request(device, float(budgets[(client + i) % len(budgets)]))

    def cold(client: int, i: int) -> pb.GenerateForBudgetRequest:
        return budget_request(device, fresh(), "standard")

    data: dict[str, Any] = {"machine": machine(), "load_average_at_start": os.getloadavg(), "bundle": args.bundle,
                            "device": args.device, "clients": args.clients, "slots_per_replica": SLOTS,
                            "seconds": args.seconds, "runs": [], "kills": [], "ready_s": [s.ready_s for s in servers]}
    tmp = Path(tempfile.mkdtemp(prefix="nag-replicas-"))
    # (replicas' --cache-mb, request maker); fresh and repeated share the replicas.
    workloads = {"fresh": (256.0, fresh_request), "repeated": (256.0, repeated), "cold": (0.0, cold)}
    run_id = 0
    for kind, (cache_mb, make) in workloads.items():
        if kind == "cold":
            servers = start(2, cache_mb)
            data["ready_s"] += [s.ready_s for s in servers]
        for repeat in range(args.repeats):  # 1 and 2 replicas in turn: drift on a shared machine hits both
            for replicas in (1, 2):
                with Nginx([s.address for s in servers[:replicas]], _free_port(), tmp / f"nginx{run_id}") as lb:
                    run_id += 1
                    r = run_load(lb.address, args.clients, args.seconds, make)
                data["runs"].append({"path": "nginx", "replicas": replicas, "kind": kind, "repeat": repeat, **r})
                print(f"nginx, {replicas} replica(s), {kind}:", r, flush=True)
        r = run_load(servers[0].address, args.clients, args.seconds, make)  # the proxy's cost: no nginx
        data["runs"].append({"path": "direct", "replicas": 1, "kind": kind, "repeat": 0, **r})
        print(f"direct, 1 replica, {kind}:", r, flush=True)
        if kind == "fresh":
            # Kill runs: a fresh second replica each time, SIGKILLed a third of the way into a fresh-budget run.
            for non_idempotent in (False, True):
                for retries in (True, False):
                    (victim,) = start(1, cache_mb)
                    data["ready_s"].append(victim.ready_s)
                    with Nginx([servers[0].address, victim.address], _free_port(), tmp / f"kill{run_id}",
                               non_idempotent=non_idempotent) as lb:
                        run_id += 1
                        r = run_load(lb.address, args.clients, args.kill_seconds, fresh_request, retries=retries,
                                     at=(args.kill_seconds / 3, victim.proc.kill))
                    victim.proc.wait()
                    data["kills"].append({"nginx_non_idempotent": non_idempotent, "client_retries": retries, **r})
                    print(f"kill: nginx non_idempotent {non_idempotent}, client retries {retries}:", r, flush=True)
        if kind != "fresh":
            for s in servers:
                s.stop()

    def ratio(kind: str) -> float:
        rate = {n: sum(run["req_per_s"] for run in data["runs"] if run["path"] == "nginx" and run["kind"] == kind
                       and run["replicas"] == n) for n in (1, 2)}
        return rate[2] / rate[1]

    data["speedup"] = {kind: ratio(kind) for kind in workloads}
    rows = [[run["path"], run["replicas"], run["kind"], run["ok"], run["cached_replies"], f"{run['req_per_s']:.1f}",
             f"{run['p50_ms']:.1f}", f"{run['p99_ms']:.1f}", run["lost"]] for run in data["runs"]]
    kills = [["yes" if k["nginx_non_idempotent"] else "no", "yes" if k["client_retries"] else "no", k["ok"],
              k["lost"], ", ".join(f"{c} {n}" for c, n in k["errors"].items()) or "-", f"{k['p99_ms']:.0f}"]
             for k in data["kills"]]
    load = ", ".join(f"{x:.1f}" for x in data["load_average_at_start"])
    ready = ", ".join(f"{x:.1f}" for x in data["ready_s"])
    md = (f"# Several replicas behind nginx (bundle `{args.bundle}`, device `{args.device}`)\n\n"
          f"{os.cpu_count()} CPU cores shared by the replicas, nginx (1 worker) and {args.clients} client threads "
          f"(one channel each; load average {load} at the start; other work on the machine); {args.seconds:.0f} s "
          f"per run, 1 and 2 replicas in turn, {args.repeats} times; each replica `nag serve` with its defaults "
          f"(no verification, no speed) and `--max-concurrent {SLOTS}`. Fresh: every call a budget never asked "
          "before; repeated: 16 budgets cycled; both answered from the portable models every replica exports "
          "before SERVING (`cached` replies). Cold: fresh budgets in the standard form on replicas with "
          "`--cache-mb 0`, so every call slices and exports. Replica start to SERVING: "
          f"{ready} s (pairs start in parallel).\n\n")
    md += markdown_table(["path", "replicas", "workload", "ok", "cached", "req/s", "p50 ms", "p99 ms", "failed"], rows)
    md += ("\n2 replicas / 1 replica through nginx (req/s summed over the runs): "
           + ", ".join(f"{data['speedup'][kind]:.2f}x {kind}" for kind in workloads) + ".\n\n"
           f"One of two replicas SIGKILLed {args.kill_seconds / 3:.0f} s into a {args.kill_seconds:.0f} s "
           f"fresh-budget run ({args.clients} clients):\n\n")
    md += markdown_table(["nginx non_idempotent", "client retries", "ok", "lost", "errors", "p99 ms"], kills)
    write_results(args.name, data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
