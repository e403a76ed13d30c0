"""ONNX Runtime's side of `benchmarks.portable_graphs`: sessions under the latency contract, logits at each
optimisation level, the forms' latency in interleaved rounds, and the mobile usability checker."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from nag.export import INPUT_NAME, GraphForm

LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def session(model: bytes, level: str = "ORT_ENABLE_ALL", threads: int = 1) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.log_severity_level = 3
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def ort_logits(model: bytes, images: np.ndarray, level: str = "ORT_ENABLE_ALL", batch: int = 1000) -> np.ndarray:
    s = session(model, level, threads=os.cpu_count() or 1)
    shape = s.get_inputs()[0].shape
    if shape[0] == 1:  # the mobile form: a static batch of one
        batch = 1
    return np.concatenate([s.run(None, {INPUT_NAME: images[i : i + batch]})[0] for i in range(0, len(images), batch)])


# (b) latency


def latency(models: dict[GraphForm, bytes], image: np.ndarray, rounds: int, runs: int, seed: int
            ) -> dict[str, Any]:
    sessions = {f: session(m) for f, m in models.items()}
    feed = {INPUT_NAME: image}
    for s in sessions.values():
        for _ in range(20):
            s.run(None, feed)
    times: dict[GraphForm, list[list[float]]] = {f: [] for f in sessions}
    rng = random.Random(seed)
    order = list(sessions)
    for _ in range(rounds):
        rng.shuffle(order)
        for f in order:
            s = sessions[f]
            for _ in range(2):  # the previous session evicted this one's weights from the cache
                s.run(None, feed)
            round_times = []
            for _ in range(runs):
                start = time.perf_counter_ns()
                s.run(None, feed)
                round_times.append((time.perf_counter_ns() - start) / 1e3)
            times[f].append(round_times)
    medians = {f: float(np.median(np.concatenate(t))) for f, t in times.items()}
    round_medians = {f: np.array([np.median(r) for r in t]) for f, t in times.items()}
    base = GraphForm.STANDARD
    out: dict[str, Any] = {"median_us": {f.value: medians[f] for f in sessions}, "ratio": {}, "round_ratio_p25_p75": {}}
    for f in sessions:
        per_round = round_medians[f] / round_medians[base]
        out["ratio"][f.value] = medians[f] / medians[base]
        out["round_ratio_p25_p75"][f.value] = [float(np.percentile(per_round, 25)), float(np.percentile(per_round, 75))]
    return out


# (d) the mobile usability checker

_PARTITIONS = re.compile(r"(\d+) partitions with a total of (\d+)/(\d+) nodes can be handled by the (.+?) EP\.")
EPS = ("NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram")


def mobile_usability(model: bytes) -> dict[str, dict[str, int]]:
    """EP -> partitions, nodes taken and nodes in all, as the model is (the checker's first verdict per EP)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(model)
        run = subprocess.run([sys.executable, "-m", "onnxruntime.tools.check_onnx_model_mobile_usability", str(path)],
                             capture_output=True, text=True, check=True)
    found: dict[str, dict[str, int]] = {}
    for m in _PARTITIONS.finditer(run.stdout + run.stderr):
        found.setdefault(m.group(4), {"partitions": int(m.group(1)), "taken": int(m.group(2)),
                                      "nodes": int(m.group(3))})
    return found
