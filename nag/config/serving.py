"""Serving: the choices of `nag.generate` and of the gRPC service (`nag serve`)."""

from __future__ import annotations

from dataclasses import dataclass

from nag.config.checks import check
from nag.graph_form import GraphForm


@dataclass(frozen=True)
class GenerationConfig:
    """Serving-time choices of `nag.generate`."""

    # Share of a measured-latency budget kept free for the latency predictor's error and the machine's
    # drift since profiling: the pick is generated for B·(1 − margin). The default cpu predictor is off
    # by more than 5% on 13% of held-out children, most often below 0.1 ms, and picks sit at 90-99% of
    # their budget; analytic costs (`flops`) are exact and get no margin.
    latency_margin: float = 0.03


GENERATION = GenerationConfig()

# BN calibration dominates an uncached request (133 ms for 250 images at ~9 MMACs here). Test accuracy
# of four generated children with 64 / 128 / 250 / 2000 calibration images: 86.91/87.67/87.68/87.83,
# 89.51/90.04/89.92/90.25, 89.68/90.16/90.16/90.31, 89.84/90.18/90.36/90.42: 128 is a tie with 250
# (within the 0.3-point standard error) at under half the time; 64 costs up to 0.8 points.
SERVING_CALIBRATION_IMAGES = 128


@dataclass(frozen=True)
class ServiceConfig:
    default_candidates: int = 64
    # RPCs handled at once; more are answered RESOURCE_EXHAUSTED. An answer from the exported frontier is a
    # lookup (about a millisecond), so only the worker threads (`nag serve --workers`) bound it by default.
    max_concurrent: int = 32
    cache_mb: float = 256.0  # models beyond the warmed frontier members (other forms, ...): an LRU of this size
    calibration_images: int = SERVING_CALIBRATION_IMAGES
    # Generation and export are CPU-bound torch work: running more at once only oversubscribes the
    # cores and multiplies memory (a 32-client soak peaked at 1.3 GB RSS without this bound).
    compute_concurrency: int = 1
    frontier_points: int = 20
    max_frontier_points: int = 200
    # One GetFrontier call samples points x candidates architectures; this bounds its work (~2 s on the
    # default bundle here) so that no call can hold the server for minutes.
    max_frontier_samples: int = 16384
    # Portable: right in OpenCV DNN 4.x/5.x and at every ONNX Runtime level, at no measured latency cost
    # (portable / standard 0.995, geometric mean of 5 children: benchmarks/results/portable_graphs.md).
    default_graph_form: GraphForm = GraphForm.PORTABLE
    # Measure picks under the device's runtime contract before replying (a request can ask either way);
    # over the budget, step down to the next cheaper frontier member, up to `verification_steps` times.
    # Off by default: the answer then depends on (bundle, device, budget, graph form) alone.
    verify_latency: bool = False
    verification_steps: int = 3
    measurement_ttl_s: float = 30.0
    # Measure this host's speed against the device profiles, and target budget / speed for requests that
    # do not say (`nag serve --calibrate-speed`). Off by default, for the same reason.
    calibrate_speed: bool = False
    # Export every serving-frontier member of every device in these forms before SERVING (others on first use).
    warm_forms: tuple[GraphForm, ...] = (GraphForm.PORTABLE,)

    def __post_init__(self) -> None:
        problems = []
        # Named by their `nag serve` flags, as `nag serve` prints the message as it is.
        if self.max_concurrent < 1 or self.cache_mb < 0 or self.default_candidates < 1:
            problems.append("--max-concurrent and --candidates must be at least 1, --cache-mb not negative")
        if not self.measurement_ttl_s >= 0:
            problems.append(f"--measurement-ttl must be a number of seconds >= 0, got {self.measurement_ttl_s}")
        check(problems, "")
