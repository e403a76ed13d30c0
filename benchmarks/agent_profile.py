"""Profiling a device through a measurement agent (`nag-agent`) on loopback, and what the agent costs.

    python -m benchmarks.agent_profile [--archs 400] [--ratio-archs 40] [--checks 30] [--no-install]

1. A fresh venv gets `pip install ./agent` (with build isolation, as on a board): install time, the venv's
   size before and after, the wheel's size. That venv's `nag-agent` is agent A.
2. `profile_device` through agent A: `--archs` stratified children under the packaged `cpu` contract; wall
   time and the predictor's held-out accuracy (fitted here, on the host).
3. Agent B, another process, times `--ratio-archs` of those children under another contract (no graph
   optimisation, ORT_DISABLE_ALL): the ratio of its latencies to agent A's.
4. The cost of one remote quick check (`AgentClient.measure_model`, what a server's verification would call)
   against the same check in-process: p50 of `--checks` calls each.

Writes benchmarks/results/agent_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results_io import machine, markdown_table, write_results
from nag.cost import packaged_profile
from nag.cost.measure import latency_model_bytes, measure_latencies, measure_model
from nag.cost.profiling import profile_device
from nag.cost.remote import AgentClient
from nag.cost.store import device_dir, read_measurements
from nag.space import Architecture, load_space, sample_uniform

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "benchmark-token"


def _du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def fresh_install(work: Path) -> tuple[dict, Path]:
    """A fresh venv, `pip install ./agent` into it; returns the numbers and its nag-agent."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    before = _du_mb(venv)
    started = time.perf_counter()
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(ROOT / "agent")], capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"pip install ./agent failed:\n{done.stdout}\n{done.stderr}")
    after = _du_mb(venv)
    wheel_dir = work / "wheel"
    subprocess.run([str(venv / "bin" / "pip"), "wheel", "-q", "--no-deps", "-w", str(wheel_dir), str(ROOT / "agent")],
                   check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("nag_agent-*.whl")
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze"], capture_output=True, text=True,
                            check=True).stdout.split()
    version = subprocess.run([str(venv / "bin" / "nag-agent"), "--version"], capture_output=True, text=True,
                             check=True).stdout.strip()
    return {"install_seconds": round(seconds, 1), "venv_mb_before": round(before, 1), "venv_mb_after": round(after, 1),
            "installed_mb": round(after - before, 1), "wheel_kb": round(wheel.stat().st_size / 1e3, 1),
            "packages": sorted(listed), "nag_agent_version": version,
            "note": "pip's cache on this machine may hold some of the wheels"}, venv / "bin" / "nag-agent"


def start_agent(command: list[str], token_file: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([*command, "--port", "0", "--token-file", str(token_file)], stdout=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    found = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
    if not found:
        proc.kill()
        raise SystemExit(f"the agent did not start: {line!r}")
    return proc, found.group(1)


def p50_ms(seconds: list[float]) -> float:
    return round(1e3 * float(np.median(seconds)), 2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", type=int, default=400)
    p.add_argument("--ratio-archs", type=int, default=40)
    p.add_argument("--checks", type=int, default=30)
    p.add_argument("--no-install", action="store_true", help="skip the fresh venv; run agent A from this Python")
    args = p.parse_args(argv)
    space = load_space()
    work = Path(tempfile.mkdtemp(prefix="nag-agent-bench-"))
    token_file = work / "token"
    token_file.write_text(TOKEN)
    results: dict = {"machine": machine(), "archs": args.archs}
    procs: list[subprocess.Popen[str]] = []
    try:
        if args.no_install:
            agent_a_cmd = [sys.executable, "-m", "nag_agent"]
        else:
            results["install"], agent_bin = fresh_install(work)
            agent_a_cmd = [str(agent_bin)]
            print(f"pip install ./agent: {results['install']['install_seconds']} s, "
                  f"{results['install']['installed_mb']} MB", flush=True)
        proc_a, address_a = start_agent(agent_a_cmd, token_file)
        proc_b, address_b = start_agent([sys.executable, "-m", "nag_agent"], token_file)
        procs += [proc_a, proc_b]
        a, b = AgentClient(address_a, TOKEN), AgentClient(address_b, TOKEN)
        results["fingerprint"] = a.fingerprint()

        profile = dataclasses.replace(packaged_profile("cpu"), name="agent-cpu")
        bundle = work / "bundle"
        started = time.perf_counter()
        report = profile_device(bundle, space, profile, num_archs=args.archs, agent=a)
        held, base = report.holdout["predictor"], report.holdout["macs_linear_baseline"]
        results["profile"] = {
            "seconds": round(time.perf_counter() - started, 1), "measured": report.measurements,
            "unstable": report.unstable, "fit_on_unstable": report.fit_on_unstable,
            "holdout_n": held["n"], "holdout_within_10pct": held["within_10pct"],
            "holdout_mean_abs_rel_error": held["mean_abs_rel_error"], "holdout_kendall_tau": held["kendall_tau"],
            "macs_baseline_within_10pct": base["within_10pct"]}
        print(f"profiled {report.measurements} architectures through agent A in {results['profile']['seconds']} s; "
              f"held-out {held['n']}: {100 * held['within_10pct']:.1f}% within ±10%", flush=True)

        measured = read_measurements(device_dir(bundle, profile.name) / "measurements.jsonl")
        picks = random.Random(1).sample(measured, min(args.ratio_archs, len(measured)))
        archs = [Architecture.from_json(m.arch_json, space) for m in picks]
        plain = dataclasses.replace(profile, name="agent-plain", graph_optimization="disable")
        started = time.perf_counter()
        on_b = measure_latencies(archs, space, plain, timer=b)
        ratios = np.array([m.corrected / ref.corrected for m, ref in zip(on_b, picks, strict=True)])
        results["second_agent"] = {
            "contract": "ORT_DISABLE_ALL (agent A: ORT_ENABLE_ALL)", "archs": len(archs),
            "seconds": round(time.perf_counter() - started, 1), "ratio_median": round(float(np.median(ratios)), 3),
            "ratio_min": round(float(ratios.min()), 3), "ratio_max": round(float(ratios.max()), 3)}
        print(f"agent B / agent A latency: median {results['second_agent']['ratio_median']}", flush=True)

        model = latency_model_bytes(sample_uniform(space, random.Random(0)), space)
        shape = (space.input.channels, space.input.size, space.input.size)
        remote, local, latency = [], [], []
        for _ in range(args.checks):
            t = time.perf_counter()
            latency.append(a.measure_model(model, profile, shape))
            remote.append(time.perf_counter() - t)
            t = time.perf_counter()
            measure_model(model, profile, shape)
            local.append(time.perf_counter() - t)
        results["remote_check"] = {"calls": args.checks, "model_kb": round(len(model) / 1e3, 1),
                                   "model_median_ms": round(float(np.median(latency)), 4),
                                   "remote_p50_ms": p50_ms(remote), "local_p50_ms": p50_ms(local),
                                   "remote_p90_ms": round(1e3 * float(np.percentile(remote, 90)), 2)}
        print(f"one quick check: remote p50 {results['remote_check']['remote_p50_ms']} ms, local p50 "
              f"{results['remote_check']['local_p50_ms']} ms", flush=True)
        a.close()
        b.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    prof, second, check = results["profile"], results["second_agent"], results["remote_check"]
    rows = [["profile through agent A (loopback)", f"{prof['measured']} archs in {prof['seconds']} s; held-out "
             f"{prof['holdout_n']}: {100 * prof['holdout_within_10pct']:.1f}% within ±10% (MACs-only "
             f"{100 * prof['macs_baseline_within_10pct']:.1f}%), mean abs error "
             f"{100 * prof['holdout_mean_abs_rel_error']:.1f}%, Kendall tau {prof['holdout_kendall_tau']:.3f}"],
            ["agent B (ORT_DISABLE_ALL) / agent A (ORT_ENABLE_ALL)", f"{second['archs']} archs: median "
             f"{second['ratio_median']}, range {second['ratio_min']}-{second['ratio_max']}"],
            ["one quick check (10 warm-up + 40 runs)", f"{check['model_kb']} kB model: remote p50 "
             f"{check['remote_p50_ms']} ms (p90 {check['remote_p90_ms']}), in-process p50 {check['local_p50_ms']} ms"]]
    if "install" in results:
        inst = results["install"]
        rows.insert(0, ["fresh venv: pip install ./agent", f"{inst['install_seconds']} s, +{inst['installed_mb']} MB "
                        f"(venv {inst['venv_mb_before']} -> {inst['venv_mb_after']} MB), wheel {inst['wheel_kb']} kB"])
    fp = results["fingerprint"]
    markdown = (f"# Profiling through a measurement agent\n\nAgent A: {fp['cpu_model']}, {fp['logical_cores']} cores, "
                f"ONNX Runtime {fp['onnxruntime_version']}, Python {fp['python_version']}; both agents on loopback, "
                f"on the same shared machine as the host.\n\n" + markdown_table(["what", "measured"], rows))
    print(write_results("agent_profile", results, markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
