"""Malformed calls against a real server: random bytes, bit flips of valid requests, extreme and huge values
on all three methods. Counts the status codes, checks the server is SERVING afterwards and measures how
much its log grew per call.

    python -m benchmarks.fuzz_server --bundle bundles/default [--calls 10000]

The server runs in its own process (`nag serve`), its stdout and stderr going to a log file, as deployed.
Valid requests produced by a bit flip are answered normally (OK, OUT_OF_RANGE, ...); what must never come
back is INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.results_io import machine, markdown_table, write_results
from benchmarks.server_load import _free_port
from nag.client import channel
from nag.v1 import generator_pb2 as pb

REPO = Path(__file__).resolve().parents[1]
SERVICE = "/nag.v1.ArchitectureGeneratorService/"
FORBIDDEN = {"INTERNAL", "UNKNOWN"}
EXTREME_FLOATS = [0.0, -0.0, 5e-324, 1e-320, 1e-9, 0.2, 3.5e44, 1e300, 1e308, -1e308, math.inf, -math.inf, math.nan]
EXTREME_UINT32 = [0, 1, 2, 200, 201, 4096, 4097, 2**31, 2**32 - 1]
EXTREME_SEEDS = [0, 1, 2**63, 2**64 - 1]
DEVICES = ["", "cpu", "flops", "tpu", "x" * 20_000, "\x00", "ü" * 100, "../../etc/passwd"]


def _extreme_requests(rng: random.Random) -> tuple[str, bytes]:
    method = rng.choice(["GenerateForBudget", "GetFrontier", "ListDevices"])
    if method == "GenerateForBudget":
        req = pb.GenerateForBudgetRequest(device=rng.choice(DEVICES), candidates=rng.choice(EXTREME_UINT32),
                                          seed=rng.choice(EXTREME_SEEDS))
        if rng.random() < 0.5:
            req.latency_ms = rng.choice(EXTREME_FLOATS)
        else:
            req.macs = rng.choice(EXTREME_FLOATS) * rng.choice([1.0, 1e6])
        return method, req.SerializeToString()
    if method == "GetFrontier":
        # candidates kept small so that the valid ones stay cheap; the server bounds points x candidates
        req_f = pb.GetFrontierRequest(device=rng.choice(DEVICES), points=rng.choice(EXTREME_UINT32),
                                      candidates=rng.choice([0, 1, 8, 4097, 2**32 - 1]), seed=rng.choice(EXTREME_SEEDS))
        return method, req_f.SerializeToString()
    return method, pb.ListDevicesRequest().SerializeToString() + bytes(rng.randrange(256) for _ in range(3))


def _valid(method: str) -> bytes:
    if method == "GenerateForBudget":
        return pb.GenerateForBudgetRequest(latency_ms=0.25, device="cpu", candidates=16, seed=3).SerializeToString()
    if method == "GetFrontier":
        return pb.GetFrontierRequest(device="cpu", points=3, candidates=4, seed=1).SerializeToString()
    return pb.ListDevicesRequest().SerializeToString()


def _bit_flip(rng: random.Random) -> tuple[str, bytes]:
    method = rng.choice(["GenerateForBudget", "GetFrontier", "ListDevices"])
    data = bytearray(_valid(method) or b"\x00")
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return method, bytes(data)


def _random_bytes(rng: random.Random) -> tuple[str, bytes]:
    method = rng.choice(["GenerateForBudget", "GetFrontier", "ListDevices"])
    return method, bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


KINDS = {"random bytes": _random_bytes, "bit flips": _bit_flip, "extreme values": _extreme_requests}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default", help="bundle the server serves")
    p.add_argument("--calls", type=int, default=10_000, help="malformed calls at least (split evenly over the kinds)")
    p.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated calls")
    args = p.parse_args(argv)

    port = _free_port()
    log_file = Path(tempfile.mkdtemp(prefix="nag-fuzz-")) / "server.log"
    with log_file.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "nag.cli", "serve", "--bundle", args.bundle, "--port",
                                 str(port), "--metrics-port", "-1", "--max-concurrent", "64",
                                 "--workers", str(args.clients + 8)], cwd=REPO, stdout=log, stderr=log)
    address = f"127.0.0.1:{port}"
    try:
        with channel(address) as ch:
            grpc.channel_ready_future(ch).result(timeout=120)
            health = health_pb2_grpc.HealthStub(ch)
            while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                    health_pb2.HealthCheckResponse.SERVING:
                time.sleep(0.2)
        log_at_start = log_file.stat().st_size
        rng = random.Random(args.seed)
        per_kind = -(-args.calls // len(KINDS))  # at least --calls in all
        calls = [(kind, *make(rng)) for kind, make in KINDS.items() for _ in range(per_kind)]
        rng.shuffle(calls)
        codes: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
        forbidden_examples: list[dict[str, Any]] = []
        lock = threading.Lock()
        queue = iter(enumerate(calls))
        started = time.perf_counter()

        def client() -> None:
            with channel(address) as ch:
                stubs = {m: ch.unary_unary(SERVICE + m, request_serializer=None, response_deserializer=None)
                         for m in ("GenerateForBudget", "GetFrontier", "ListDevices")}
                while True:
                    with lock:
                        item = next(queue, None)
                    if item is None:
                        return
                    _, (kind, method, payload) = item
                    try:
                        stubs[method](payload, timeout=120)
                        code, details = "OK", ""
                    except grpc.RpcError as exc:
                        code, details = exc.code().name, exc.details() or ""
                    with lock:
                        codes[kind][code] += 1
                        if code in FORBIDDEN and len(forbidden_examples) < 20:
                            forbidden_examples.append({"method": method, "payload": payload.hex()[:200],
                                                       "code": code, "details": details[:300]})
                    done = sum(sum(c.values()) for c in codes.values())
                    if done % 1000 == 0:
                        print(f"{done}/{len(calls)} calls", flush=True)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        with channel(address) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        serving = status == health_pb2.HealthCheckResponse.SERVING
        log_growth = log_file.stat().st_size - log_at_start
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    total = Counter[str]()
    for c in codes.values():
        total.update(c)
    forbidden = sum(total[c] for c in FORBIDDEN)
    n = sum(total.values())
    data = {"machine": machine(), "bundle": args.bundle, "calls": n, "seconds": round(wall, 1),
            "codes_by_kind": {k: dict(v) for k, v in codes.items()}, "codes": dict(total),
            "internal_or_unknown": forbidden, "serving_after": serving, "log_bytes_grown": log_growth,
            "log_bytes_per_call": log_growth / max(1, n), "forbidden_examples": forbidden_examples}
    all_codes = sorted(total)
    rows = [[kind, sum(codes[kind].values()), *(codes[kind].get(c, 0) for c in all_codes)] for kind in KINDS]
    rows.append(["all", n, *(total.get(c, 0) for c in all_codes)])
    md = (f"# Malformed calls against `nag serve` (bundle `{args.bundle}`)\n\n"
          f"{n} calls from {args.clients} clients in {wall:.0f} s, on all three methods. "
          f"INTERNAL or UNKNOWN: **{forbidden}**. Health afterwards: **{'SERVING' if serving else status}**. "
          f"Server log grew {log_growth} bytes ({log_growth / max(1, n):.2f} bytes per call).\n\n")
    md += markdown_table(["kind", "calls", *all_codes], rows)
    write_results("fuzz_server", data, md)
    print(md)
    return 0 if forbidden == 0 and serving else 1


if __name__ == "__main__":
    sys.exit(main())
