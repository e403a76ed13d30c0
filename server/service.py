"""The ArchitectureGeneratorService servicer: validation, generation, the model cache and metrics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc
import numpy as np

from nag.bundle.bundle import Bundle
from nag.core.inference import (
    MAX_CANDIDATES,
    BudgetOutOfRangeError,
    Generated,
    InvalidBudgetError,
    check_budget,
    generate,
    resolve_device,
)
from nag.core.materialize import SERVING_CALIBRATION_IMAGES, ExportedModel, export_child
from nag.cost.device import DeviceError
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc
from server.cache import ByteLRU
from server.metrics import ServerMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class ServiceConfig:
    default_candidates: int = 64
    max_concurrent: int = 8  # RPCs handled at once; more are answered RESOURCE_EXHAUSTED
    cache_mb: float = 256.0
    calibration_images: int = SERVING_CALIBRATION_IMAGES
    # Generation and export are CPU-bound torch work: running more at once only oversubscribes the
    # cores and multiplies memory (a 32-client soak peaked at 1.3 GB RSS without this bound).
    compute_concurrency: int = 1
    pick_cache_entries: int = 100_000
    frontier_points: int = 20
    max_frontier_points: int = 200


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _architecture_message(g: Generated) -> pb.Architecture:
    return pb.Architecture(
        resolution=g.arch.resolution, stem_width=g.arch.stem_width,
        stages=[pb.Stage(depth=s.depth, width=s.width, kernels=list(s.kernels), expansions=list(s.expansions))
                for s in g.arch.stages],
    )


class GeneratorService(pb_grpc.ArchitectureGeneratorServiceServicer):
    def __init__(self, config: ServiceConfig, metrics: ServerMetrics):
        self.config = config
        self.metrics = metrics
        self.cache: ByteLRU[ExportedModel] = ByteLRU(int(config.cache_mb * 1e6))
        # A seeded request is deterministic, so its generated architecture is cached too (by request).
        self.picks: ByteLRU[Generated] = ByteLRU(config.pick_cache_entries)
        self._slots = threading.BoundedSemaphore(config.max_concurrent)
        self._compute = threading.BoundedSemaphore(config.compute_concurrency)
        self.draining = threading.Event()
        self._bundle: Bundle | None = None
        self.input_shape: list[int] = []

    def attach(self, bundle: Bundle) -> None:
        """Start answering with `bundle` (until then every RPC gets UNAVAILABLE)."""
        space = bundle.space
        self.input_shape = [-1, space.input.channels, space.input.size, space.input.size]
        self._bundle = bundle

    @property
    def bundle(self) -> Bundle:
        if self._bundle is None:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the server is still loading its bundle; retry shortly")
        return self._bundle

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def _rpc(self, method: str, context: grpc.ServicerContext) -> Iterator[None]:
        """Admission control, metrics and the mapping of errors to status codes for one RPC."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        if self.draining.is_set() or self._bundle is None:
            code = grpc.StatusCode.UNAVAILABLE
            self.metrics.requests.labels(method, code.name).inc()
            context.abort(code, "the server is shutting down; retry on another replica" if self.draining.is_set()
                          else "the server is still loading its bundle; retry shortly")
        if not self._slots.acquire(blocking=False):
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            self.metrics.rejected.inc()
            self.metrics.requests.labels(method, code.name).inc()
            context.abort(code, f"the server is busy ({self.config.max_concurrent} requests in flight); retry later")
        self.metrics.in_flight.inc()
        try:
            yield
        except RpcError as exc:
            code = exc.code
            context.abort(exc.code, exc.message)
        except InvalidBudgetError as exc:
            code = grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, str(exc))
        except DeviceError as exc:
            code = grpc.StatusCode.NOT_FOUND
            context.abort(code, str(exc))
        except BudgetOutOfRangeError as exc:
            code = grpc.StatusCode.OUT_OF_RANGE
            context.abort(code, str(exc))
        except Exception as exc:  # anything else is our bug: log it, answer INTERNAL, keep serving
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            context.abort(code, f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.metrics.in_flight.dec()
            self._slots.release()
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(time.perf_counter() - started)

    @staticmethod
    def _check_deadline(context: grpc.ServicerContext, stage: str) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before {stage}")

    def _candidates(self, requested: int) -> int:
        if requested == 0:
            return self.config.default_candidates
        if requested > MAX_CANDIDATES:
            raise InvalidBudgetError(f"candidates must lie in [1, {MAX_CANDIDATES}], got {requested}")
        return requested

    def _observe(self, stage: str, seconds: float) -> None:
        self.metrics.stage.labels(stage).observe(seconds)

    # -- RPCs -----------------------------------------------------------------------------------

    def GenerateForBudget(self, request: pb.GenerateForBudgetRequest, context: grpc.ServicerContext
                          ) -> pb.GenerateForBudgetResponse:
        with self._rpc("GenerateForBudget", context):
            return self._generate(request, context)
        raise AssertionError("unreachable")  # context.abort raised inside _rpc

    def _generate(self, request: pb.GenerateForBudgetRequest, context: grpc.ServicerContext
                  ) -> pb.GenerateForBudgetResponse:
        started = time.perf_counter()
        which = request.WhichOneof("budget")
        if which is None:
            raise InvalidBudgetError("the request has no budget: set latency_ms or macs")
        if which == "macs":
            models = resolve_device(self.bundle, request.device or "flops")
            if models.device.unit != "MMACs":
                raise InvalidBudgetError(f"device {models.name!r} takes a latency_ms budget, not macs")
            budget = request.macs / 1e6
        else:
            models = resolve_device(self.bundle, request.device or None)
            if models.device.unit != "ms":
                raise InvalidBudgetError(f"device {models.name!r} takes a macs budget, not latency_ms")
            budget = request.latency_ms
        candidates = self._candidates(request.candidates)
        check_budget(budget, models, candidates)
        seed = request.seed if request.HasField("seed") else None
        key = f"{models.name}|{budget!r}|{candidates}|{seed}"
        g = self.picks.get(key) if seed is not None else None
        gen_timings = {"sample": 0.0, "choose": 0.0}
        if g is None:
            with self._compute:
                g = generate(self.bundle, budget, models.name, candidates=candidates, seed=seed)
            self._observe("sample", g.timings["sample"])
            self._observe("choose", g.timings["choose"])
            gen_timings = g.timings
            if seed is not None:
                self.picks.put(key, g, 1)
        exported = self.cache.get(g.arch.arch_id)
        cached = exported is not None
        if exported is None:
            self.metrics.cache_misses.inc()
            with self._compute:
                self._check_deadline(context, "export")
                exported = self.cache.get(g.arch.arch_id) or export_child(self.bundle, g.arch,
                                                                           self.config.calibration_images)
            for stage, seconds in exported.timings.items():
                self._observe(stage, seconds)
            self.cache.put(g.arch.arch_id, exported, len(exported.onnx))
            self.metrics.cache_bytes.set(self.cache.bytes)
        else:
            self.metrics.cache_hits.inc()
        self.metrics.model_bytes.inc(len(exported.onnx))
        t = exported.timings if not cached else {"slice": 0.0, "calibrate": 0.0, "export": 0.0}
        return pb.GenerateForBudgetResponse(
            onnx_model=exported.onnx, onnx_sha256=exported.sha256, architecture=_architecture_message(g),
            architecture_json=g.arch.to_json(), architecture_id=g.arch.arch_id, input_shape=self.input_shape,
            device=g.device, cost_unit=g.unit, predicted_cost=g.predicted_cost, target_budget=g.target,
            predicted_latency_ms=g.predicted_cost if g.unit == "ms" else 0.0,
            predicted_accuracy=g.predicted_accuracy, macs=g.macs, params=g.params,
            timings=pb.StageTimings(sample_ms=1e3 * gen_timings["sample"], choose_ms=1e3 * gen_timings["choose"],
                                    slice_ms=1e3 * t["slice"], calibrate_ms=1e3 * t["calibrate"],
                                    export_ms=1e3 * t["export"], total_ms=1e3 * (time.perf_counter() - started)),
            cached=cached, bundle_id=self.bundle.bundle_id, seed=g.seed, class_names=self.bundle.classes or [],
        )

    def ListDevices(self, request: pb.ListDevicesRequest, context: grpc.ServicerContext) -> pb.ListDevicesResponse:
        with self._rpc("ListDevices", context):
            devices = []
            for name, m in sorted(self.bundle.devices.items()):
                p = m.device.profile
                kind = pb.DEVICE_KIND_FLOPS if p.kind == "flops" else pb.DEVICE_KIND_ONNXRUNTIME
                devices.append(pb.Device(
                    name=name, kind=kind, description=p.description,
                    execution_provider=p.provider if p.kind != "flops" else "", intra_op_threads=p.intra_op_threads,
                    batch_size=p.batch_size, cost_unit=p.unit, min_cost=m.min_cost, max_cost=m.device.cost_range[1],
                    budgets=[float(b) for b in m.generator.budget.budgets],
                ))
            return pb.ListDevicesResponse(devices=devices, default_device=self.bundle.default_device,
                                          bundle_id=self.bundle.bundle_id)
        raise AssertionError("unreachable")

    def GetFrontier(self, request: pb.GetFrontierRequest, context: grpc.ServicerContext) -> pb.GetFrontierResponse:
        with self._rpc("GetFrontier", context):
            models = resolve_device(self.bundle, request.device or None)
            points = request.points or self.config.frontier_points
            if not 2 <= points <= self.config.max_frontier_points:
                raise InvalidBudgetError(f"points must lie in [2, {self.config.max_frontier_points}], got {points}")
            candidates = self._candidates(request.candidates)
            seed = request.seed if request.HasField("seed") else 0
            lo, hi = models.min_cost, max(models.device.cost_range[1], models.min_cost * 1.01)
            out = []
            for budget in np.linspace(lo * 1.001, hi, points):
                self._check_deadline(context, "the next frontier point")
                with self._compute:
                    g = generate(self.bundle, float(budget), models.name, candidates=candidates, seed=seed)
                out.append(pb.FrontierPoint(budget=float(budget), architecture_json=g.arch.to_json(),
                                            architecture_id=g.arch.arch_id, predicted_cost=g.predicted_cost,
                                            predicted_accuracy=g.predicted_accuracy, macs=g.macs))
            return pb.GetFrontierResponse(device=models.name, cost_unit=models.device.unit, points=out)
        raise AssertionError("unreachable")


