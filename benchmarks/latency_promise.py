"""Does a served model keep its latency budget where it runs? `--budgets` distinct budgets on the `cpu` device,
each pick measured by this benchmark under the device's runtime contract (raw median, no correction), on a quiet
machine and on a machine deliberately slowed: a busy process on core 0, with the server and this benchmark's
measurements confined to that same core, so the slowdown reaches the model (a busy core the scheduler can avoid
slows nothing); with the server's defaults (no speed, no verification: a budget is the device's latency at the
profile's speed) and with `--calibrate-speed --verify-latency`. Also the request p50 with verification on vs off
(`--measurement-ttl 0`: every verification measures afresh).

    python -m benchmarks.latency_promise --bundle bundles/default

Each condition starts its own `nag serve` process (after the busy process, when there is one), so that a server
with `--calibrate-speed` calibrates under that condition, as a deployed server would at start.
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
from benchmarks.server_load import FreshBudgets, Server
from nag.bundle import load_bundle
from nag.client import channel
from nag.cost.measure import measure_model
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
SLOW_CORE = 0
FEATURES = {"server defaults": [], "--calibrate-speed --verify-latency": ["--calibrate-speed", "--verify-latency"]}


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


def run_condition(bundle: str, budgets: list[float], profile: Any, shape: list[int], server_flags: list[str],
                  cores: set[int] | None) -> dict[str, Any]:
    server = Server(bundle, 256, 16, extra=server_flags, cores=cores)
    picks = []
    try:
        with channel(server.address) as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            speed = next(d.speed for d in stub.ListDevices(pb.ListDevicesRequest(), timeout=10).devices
                         if d.name == "cpu")
            for budget in budgets:
                r = stub.GenerateForBudget(pb.GenerateForBudgetRequest(latency_ms=budget, device="cpu"), timeout=120)
                with on_cores(cores):
                    measured = measure_model(r.onnx_model, profile, shape, warmup=20, runs=200)
                picks.append({"budget": budget, "arch_id": r.architecture_id, "sha256": r.onnx_sha256,
                              "member": r.frontier_member, "predicted": r.predicted_cost,
                              "speed_applied": r.speed_applied, "device_speed": r.device_speed,
                              "server_measured": r.measured_latency_ms, "verified": r.latency_verified,
                              "steps": r.verification_steps, "measured": measured, "feasible": measured <= budget})
    finally:
        server.stop()
    feasible = sum(p["feasible"] for p in picks)
    return {"speed_at_start": speed if "--calibrate-speed" in server_flags else None, "ready_s": server.ready_s,
            "picks": picks, "feasible": feasible,
            "n": len(picks), "feasible_share": feasible / len(picks),
            "worst_ratio": max(p["measured"] / p["budget"] for p in picks),
            "median_ratio": float(np.median([p["measured"] / p["budget"] for p in picks]))}


def request_p50(bundle: str, fresh: FreshBudgets, requests: int) -> dict[str, dict[str, float]]:
    """One server with its defaults and `--measurement-ttl 0`, one client, a budget never asked before per
    request; requests alternate verify_latency on and off, so that drift hits both alike."""
    server = Server(bundle, 256, 16, extra=["--measurement-ttl", "0"])
    times: dict[bool, list[float]] = {True: [], False: []}
    verify_ms: list[float] = []
    steps: list[int] = []
    try:
        with channel(server.address) as ch:
            stub = pb_grpc.ArchitectureGeneratorServiceStub(ch)
            stub.ListDevices(pb.ListDevicesRequest(), timeout=10)
            for i in range(2 * requests):
                verify = i % 2 == 0
                req = pb.GenerateForBudgetRequest(latency_ms=fresh(), device="cpu", verify_latency=verify)
                start = time.perf_counter()
                r = stub.GenerateForBudget(req, timeout=120)
                times[verify].append(time.perf_counter() - start)
                if verify:
                    assert r.latency_verified
                    verify_ms.append(r.timings.verify_ms)
                    steps.append(r.verification_steps)
    finally:
        server.stop()
    out = {}
    for verify, seconds in times.items():
        ms = np.array(seconds) * 1e3
        out["verify on" if verify else "verify off"] = {"p50_ms": float(np.percentile(ms, 50)),
                                                       "p99_ms": float(np.percentile(ms, 99)), "requests": len(ms)}
    out["verify on"].update(verify_ms_median=float(np.median(verify_ms)), stepped_down=sum(s > 0 for s in steps))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="bundles/default", help="bundle with a local `cpu` device")
    p.add_argument("--budgets", type=int, default=30, help="distinct budgets per condition")
    p.add_argument("--requests", type=int, default=40, help="requests per p50 measurement (each of on, off)")
    args = p.parse_args(argv)
    bundle = load_bundle(args.bundle)
    cpu = bundle.devices["cpu"]
    profile = cpu.device.profile
    shape = [bundle.space.input.channels, bundle.space.input.size, bundle.space.input.size]
    lo, hi = cpu.min_cost, cpu.device.cost_range[1]
    budgets = [float(b) for b in np.linspace(lo * 1.15, hi * 1.1, args.budgets)]
    data: dict[str, Any] = {"machine": machine(), "load_average_at_start": os.getloadavg(), "bundle": args.bundle,
                            "budgets": budgets, "contract": profile.contract(), "conditions": {}}
    for load in ("quiet", "slowed"):
        for features, flags in FEATURES.items():
            started = time.perf_counter()
            if load == "slowed":
                with busy_core(900):
                    result = run_condition(args.bundle, budgets, profile, shape, flags, {SLOW_CORE})
            else:
                result = run_condition(args.bundle, budgets, profile, shape, flags, None)
            result["seconds"] = round(time.perf_counter() - started, 1)
            data["conditions"][f"{load}, {features}"] = result
            print(load, features, {k: v for k, v in result.items() if k != "picks"}, flush=True)
    data["p50"] = request_p50(args.bundle, FreshBudgets(lo * 1.001, hi), args.requests)
    print(json.dumps(data["p50"]), flush=True)

    conditions = data["conditions"]
    pairs = list(zip(conditions["quiet, server defaults"]["picks"], conditions["slowed, server defaults"]["picks"],
                     strict=True))
    data["slowed_defaults_same_models"] = sum(q["sha256"] == s["sha256"] for q, s in pairs)
    # How far the slowing reached the models: the same models' measured latency, slowed / quiet.
    data["slowed_over_quiet_median"] = float(np.median([s["measured"] / q["measured"] for q, s in pairs]))
    rows = [[name, "not measured" if r["speed_at_start"] is None else f"{r['speed_at_start']:.3f}",
             f"{r['picks'][0]['device_speed']:.2f}" if r["picks"][0]["speed_applied"] else "not applied",
             f"{r['feasible']}/{r['n']}",
             f"{100 * r['feasible_share']:.0f}%", f"{r['median_ratio']:.2f}", f"{r['worst_ratio']:.2f}",
             sum(p["verified"] for p in r["picks"]), sum(p["steps"] > 0 for p in r["picks"])]
            for name, r in conditions.items()]
    on, off = data["p50"]["verify on"], data["p50"]["verify off"]
    md = (f"# Latency promise on `cpu` (bundle `{args.bundle}`)\n\n"
          "What a budget means: by default `nag serve` answers with the best member of the device's serving frontier "
          "whose *profiled* latency (the bundle's predictor, at the speed of the machine the device was profiled "
          "on, less a margin for the predictor's error) fits the budget, so a budget means the device's latency at "
          "the profile's speed, and the answer is a function of (bundle, device, budget, graph form): "
          "deterministic, the same on a busy host as on a quiet one. Two explicit options make it depend on this "
          "host: `--calibrate-speed` (or a request's `apply_speed`) measures this machine's speed against the "
          "profile and targets budget / speed; `--verify-latency` (or a request's `verify_latency`) measures the "
          "model under the contract before replying and steps down to the next cheaper frontier member while it "
          "runs over the budget.\n\n"
          f"{len(budgets)} distinct budgets from {budgets[0]:.3f} to {budgets[-1]:.3f} ms. Each served model "
          "measured by the benchmark under the runtime contract (raw median of 200 runs, batch 1): within budget "
          f"when that is at most the budget. Slowed: a busy process pinned to core {SLOW_CORE} of {os.cpu_count()}, "
          "started before the server; the server and the benchmark's own measurements run on that core too. "
          "Load average at the start "
          f"{', '.join(f'{x:.1f}' for x in data['load_average_at_start'])} (a machine shared with other work).\n\n"
          f"Contract: `{json.dumps(profile.contract(), sort_keys=True)}`\n\n")
    md += markdown_table(["condition", "speed measured at start", "speed applied", "within budget", "share",
                          "median measured/budget", "worst measured/budget", "verified", "picks stepped down"], rows)
    md += (f"\nSlowed with the server's defaults served the same model bytes as quiet for "
           f"{data['slowed_defaults_same_models']}/{len(budgets)} budgets (deterministic answers); the benchmark "
           f"measured those models {data['slowed_over_quiet_median']:.2f}x as slow as quiet (median over the "
           "budgets): that is how far the slowing reached a raw median of sub-millisecond runs in this run (likely "
           "because the busy process takes the core in scheduler time slices longer than a run, so most runs "
           "complete undisturbed), and the speed the calibrating servers measured at start should be read with it.\n\n"
           f"Request cost of verification (one server with its defaults and `--measurement-ttl 0`, so every "
           f"verification measures afresh; one client; a budget never asked before per request; requests "
           f"alternating `verify_latency` true and false, {args.requests} each): p50 {on['p50_ms']:.1f} ms with "
           f"verification (median verification {on['verify_ms_median']:.1f} ms; {on['stepped_down']} stepped "
           f"down), {off['p50_ms']:.1f} ms without ({on['p50_ms'] / off['p50_ms']:.1f}x); p99 {on['p99_ms']:.1f} / "
           f"{off['p99_ms']:.1f} ms.\n")
    over = [f"{name}: budget {p['budget']:.3f} ms, measured {p['measured']:.3f} ms"
            + (f" (the server's verification had measured {p['server_measured']:.3f} ms)" if p["verified"] else "")
            for name, r in conditions.items() for p in r["picks"] if not p["feasible"]]
    md += ("\nOver budget (the benchmark's measurement, after the reply):\n\n"
           + "".join(f"- {line}\n" for line in over) if over else "\nNo served model over its budget.\n")
    data["load_average_at_end"] = os.getloadavg()
    md += f"\nLoad average at the end: {', '.join(f'{x:.1f}' for x in data['load_average_at_end'])}.\n"
    write_results("latency_promise", data, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
