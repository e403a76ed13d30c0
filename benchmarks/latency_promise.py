"""Does a served model keep its latency budget where it runs? 10 budgets on the `cpu` device, each pick measured
by this benchmark under the device's runtime contract (raw median, no correction), on a quiet machine and on a
machine deliberately slowed: a busy process on core 0, with the server and this benchmark's measurements confined
to that same core, so the slowdown reaches the model (a busy core the scheduler can avoid slows nothing); with
the server's speed calibration and latency verification on, and for contrast off. Also the uncached request p50
with and without verification (every verification measured afresh).

    python -m benchmarks.latency_promise --bundle bundles/default

Each condition starts its own `nag serve` process (after the busy process, when there is one), so that the
server calibrates under that condition, as a deployed server would at start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.results_io import machine, markdown_table, write_results
from benchmarks.server_load import Server
from nag.bundle import load_bundle
from nag.client import channel
from nag.cost.measure import measure_model
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


SLOW_CORE = 0


@contextmanager
def busy_core(seconds: float) -> Iterator[None]:
    """A busy loop pinned to `SLOW_CORE` for at most `seconds` (bounded even if this process dies)."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=seconds)])
    try:
        os.sched_setaffinity(proc.pid, {SLOW_CORE})
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextmanager
def on_cores(cores: set[int] | None) -> Iterator[None]:
    """Run the calling thread (ONNX Runtime's one intra-op thread is the caller) on `cores` for a while."""
    before = os.sched_getaffinity(0)
    if cores:
        os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def run_condition(bundle: str, budgets: list[float], seeds: int, profile: Any, shape: list[int],
                  server_flags: list[str], cores: set[int] | None) -> dict[str, Any]:
    server = Server(bundle, 256, 16, extra=server_flags, cores=cores)
    picks = []
    try:
        with channel(server.address) as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            speed = next(d.speed for d in stub.ListDevices(pb.ListDevicesRequest(), timeout=10).devices
                         if d.name == "cpu")
            for budget in budgets:
                for seed in range(seeds):
                    r = stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=budget, device="cpu",
                                                                           seed=seed), timeout=120)
                    with on_cores(cores):
                        measured = measure_model(r.onnx_model, profile, shape, warmup=20, runs=200)
                    picks.append({"budget": budget, "seed": seed, "arch_id": r.architecture_id,
                                  "predicted": r.predicted_cost, "server_measured": r.measured_latency_ms,
                                  "verified": r.latency_verified, "steps": r.verification_steps,
                                  "measured": measured, "feasible": measured <= budget})
    finally:
        server.stop()
    feasible = sum(p["feasible"] for p in picks)
    return {"speed_at_start": speed, "picks": picks, "feasible": feasible, "n": len(picks),
            "feasible_share": feasible / len(picks),
            "worst_ratio": max(p["measured"] / p["budget"] for p in picks)}


def request_p50(bundle: str, budgets: list[float], requests: int, verify: bool) -> dict[str, float]:
    """Uncached requests (model cache off, a fresh seed each), one client: wall time per request."""
    server = Server(bundle, 0, 16, extra=["--measurement-ttl", "0"])
    try:
        with channel(server.address) as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            stub.ListDevices(pb.ListDevicesRequest(), timeout=10)
            times, verify_ms = [], []
            for i in range(requests):
                req = pb.GenerateForBudgetRequest(latency_ms=budgets[i % len(budgets)], device="cpu",
                                                  seed=10_000 + i, verify_latency=verify)
                start = time.perf_counter()
                r = stub.GenerateForBudget(req, timeout=120)
                times.append(time.perf_counter() - start)
                verify_ms.append(r.timings.verify_ms)
    finally:
        server.stop()
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "verify_ms_median": float(np.median(verify_ms)), "requests": requests}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default", help="bundle with a local `cpu` device")
    p.add_argument("--seeds", type=int, default=3, help="picks per budget")
    p.add_argument("--requests", type=int, default=40, help="uncached requests per p50 measurement")
    args = p.parse_args(argv)
    bundle = load_bundle(args.bundle)
    cpu = bundle.devices["cpu"]
    profile = cpu.device.profile
    shape = [bundle.space.input.channels, bundle.space.input.size, bundle.space.input.size]
    lo, hi = cpu.min_cost, cpu.device.cost_range[1]
    budgets = [float(b) for b in np.linspace(lo * 1.15, hi * 1.1, 10)]
    off = ["--no-calibrate", "--no-verify-latency"]
    conditions = {
        ("quiet", "on"): (["--verify-latency"], False), ("quiet", "off"): (off, False),
        ("slowed", "on"): (["--verify-latency"], True), ("slowed", "off"): (off, True),
    }
    data: dict[str, Any] = {"machine": machine(), "bundle": args.bundle, "budgets": budgets,
                            "contract": profile.contract(), "conditions": {}}
    for (load, features), (flags, slowed) in conditions.items():
        started = time.perf_counter()
        if slowed:
            with busy_core(900):
                result = run_condition(args.bundle, budgets, args.seeds, profile, shape, flags, {SLOW_CORE})
        else:
            result = run_condition(args.bundle, budgets, args.seeds, profile, shape, flags, None)
        result["seconds"] = round(time.perf_counter() - started, 1)
        data["conditions"][f"{load}, calibration+verification {features}"] = result
        print(load, features, {k: v for k, v in result.items() if k != "picks"}, flush=True)
    data["p50"] = {"verify on": request_p50(args.bundle, budgets, args.requests, True),
                   "verify off": request_p50(args.bundle, budgets, args.requests, False)}
    print(json.dumps(data["p50"]), flush=True)

    rows = [[name, f"{r['speed_at_start']:.3f}", f"{r['feasible']}/{r['n']}", f"{100 * r['feasible_share']:.0f}%",
             f"{r['worst_ratio']:.2f}", sum(p["steps"] > 0 for p in r["picks"])]
            for name, r in data["conditions"].items()]
    on, off = data["p50"]["verify on"], data["p50"]["verify off"]
    md = (f"# Latency promise on `cpu` (bundle `{args.bundle}`)\n\n"
          f"10 budgets from {budgets[0]:.3f} to {budgets[-1]:.3f} ms x {args.seeds} seeds. Each served model "
          "measured by the benchmark under the runtime contract (raw median of 200 runs, batch 1): feasible when "
          f"that is within the budget. Slowed: a busy process pinned to core {SLOW_CORE} of {os.cpu_count()}, "
          "started before the server; the server and the benchmark's own measurements run on that core too.\n\n"
          f"Contract: `{json.dumps(profile.contract(), sort_keys=True)}`\n\n")
    md += markdown_table(["condition", "speed at start", "feasible", "share", "worst measured/budget",
                          "picks stepped down"], rows)
    md += ("\nUncached request (model cache off, every verification measured afresh, a new seed each, 1 client), "
           f"{args.requests} requests: p50 {on['p50_ms']:.0f} ms with verification (median verification "
           f"{on['verify_ms_median']:.0f} ms), {off['p50_ms']:.0f} ms without; p99 {on['p99_ms']:.0f} / "
           f"{off['p99_ms']:.0f} ms.\n")
    write_results("latency_promise", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
