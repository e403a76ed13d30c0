"""The cost of a verified request when the device's agent measures it, against this host measuring it.

    python -m benchmarks.agent_verify [--bundle bundles/default] [--budgets 30]

One `nag-agent` on loopback; a server with `--agent cpu=...` and one without, each with `--measurement-ttl 0`
(every verification measures afresh). Per budget one request with `verify_latency` and one without, in turn;
p50 and p99 of each. Writes benchmarks/results/agent_verify.{json,md}.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results_io import machine, markdown_table, write_results
from nag.client import channel
from nag.config import ServiceConfig
from nag.server.app import RunningServer, ServerOptions
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc


def timed_requests(options: ServerOptions, budgets: list[float]) -> dict[str, list[float]]:
    server = RunningServer(options)
    server.load()
    out: dict[str, list[float]] = {"verified": [], "unverified": []}
    try:
        with channel(f"127.0.0.1:{server.port}") as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            for budget in budgets:
                for verify in (True, False):
                    started = time.perf_counter()
                    reply = stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=budget,
                                                                               verify_latency=verify), timeout=120)
                    out["verified" if verify else "unverified"].append(time.perf_counter() - started)
                    assert reply.latency_verified == verify
    finally:
        server.stop(0, drain=0)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    p.add_argument("--budgets", type=int, default=30)
    args = p.parse_args(argv)
    token = Path(tempfile.mkdtemp()) / "token"
    token.write_text("agent-verify-benchmark\n")
    agent = subprocess.Popen([sys.executable, "-m", "nag_agent", "--port", "0", "--token-file", str(token)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = agent.stdout.readline() if agent.stdout else ""
    found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    if not found:
        print(f"error: the agent did not start: {line!r}", file=sys.stderr)
        return 2
    budgets = [float(b) for b in np.linspace(0.1, 0.5, args.budgets)]
    service = ServiceConfig(measurement_ttl_s=0)
    try:
        remote = timed_requests(ServerOptions(bundle=args.bundle, port=0, metrics_port=-1, service=service,
                                              agents={"cpu": f"127.0.0.1:{found.group(1)}"},
                                              agent_token_file=token), budgets)
        local = timed_requests(ServerOptions(bundle=args.bundle, port=0, metrics_port=-1, service=service), budgets)
    finally:
        agent.terminate()
        agent.wait(30)
    rows, data = [], {}
    for where, times in (("through the agent", remote), ("on this host", local)):
        for kind, seconds in times.items():
            p50, p99 = (1e3 * float(np.percentile(seconds, q)) for q in (50, 99))
            data[f"{where} {kind}"] = {"p50_ms": p50, "p99_ms": p99, "requests": len(seconds)}
            rows.append([where, kind, len(seconds), f"{p50:.1f}", f"{p99:.1f}"])
    ratio = data["through the agent verified"]["p50_ms"] / data["on this host verified"]["p50_ms"]
    text = (f"# Verification through a measurement agent (bundle `{args.bundle}`, device `cpu`)\n\n"
            f"{args.budgets} budgets from 0.1 to 0.5 ms, one client, `--measurement-ttl 0`; the agent on loopback, "
            "on the same 2 cores as the server and the client.\n\n"
            + markdown_table(["verification", "request", "n", "p50 ms", "p99 ms"], rows)
            + f"\n\nVerified p50 through the agent / on this host: {ratio:.2f}.\n")
    write_results("agent_verify", {"budgets": budgets, "results": data, "ratio_verified_p50": ratio,
                                   "machine": machine()}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
