"""The ArchitectureGeneratorService servicer: the gRPC side (admission, status codes, the compute slot, metrics,
the encoded reply); what to answer is the serving policy's (`nag.policy.answer`)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TypeVar

import grpc
import numpy as np

from nag.bundle.bundle import Bundle
from nag.config import ServiceConfig
from nag.cost.device import DeviceError
from nag.cost.remote import AgentError
from nag.export import GraphForm
from nag.policy.answer import AnswerOptions, ServingPolicy, UnavailableOptionError
from nag.policy.cache import ByteLRU
from nag.policy.inference import (
    BudgetOutOfRangeError,
    InvalidBudgetError,
    check_candidates,
    check_seed,
    generate_checked,
    resolve_device,
)
from nag.policy.materialize import ExportedModel
from nag.policy.request import resolve_request
from nag.server.calibration import Speed, SpeedCalibration, is_local
from nag.server.metrics import ServerMetrics
from nag.server.slots import FifoSlots, SlotTimeout
from nag.space.arch import Architecture
from nag.v1 import generator_pb2 as pb
from nag.v1 import generator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


GRAPH_FORMS = {pb.GRAPH_FORM_STANDARD: GraphForm.STANDARD, pb.GRAPH_FORM_PORTABLE: GraphForm.PORTABLE,
               pb.GRAPH_FORM_MOBILE: GraphForm.MOBILE}
GRAPH_FORM_MESSAGES = {form: message for message, form in GRAPH_FORMS.items()}
# The proto's enum per device kind; a kind without a value of its own is listed as DEVICE_KIND_UNSPECIFIED.
DEVICE_KINDS = {"onnxruntime": pb.DEVICE_KIND_ONNXRUNTIME, "flops": pb.DEVICE_KIND_FLOPS}
SERVICE = pb.DESCRIPTOR.services_by_name["ArchitectureGeneratorService"]
MAX_KNOWN_MODELS = 4096  # known_sha256 entries per request
MAX_MESSAGE_CHARS = 1000  # status details travel in HTTP/2 headers: keep them far below gRPC's 8 KB limit


class Malformed:
    """Stands for request bytes that do not parse as the method's message."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(message: type) -> Callable[[bytes], object]:
    """A request deserializer that never raises: gRPC answers INTERNAL and logs a traceback for every
    request its deserializer rejects, so bad bytes become a `Malformed` the handler answers itself."""

    def parse(data: bytes) -> object:
        try:
            return message.FromString(data)
        except Exception as exc:  # DecodeError, and UnicodeDecodeError for invalid UTF-8 in strings
            return Malformed(exc)

    return parse


def _serializer(message: type) -> Callable[[object], bytes]:
    """A reply's bytes: a message serialized, or bytes a handler encoded itself (`GeneratorService._encode`)."""
    def serialize(reply: object) -> bytes:
        return reply if isinstance(reply, bytes) else message.SerializeToString(reply)  # type: ignore[attr-defined]

    return serialize


def add_service(servicer: GeneratorService, server: grpc.Server) -> None:
    """Register the service's methods with request deserializers that turn bad bytes into INVALID_ARGUMENT."""
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(getattr(pb, method.input_type.name)),
            response_serializer=_serializer(getattr(pb, method.output_type.name)),
        )
        for method in SERVICE.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))


def _shorten(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "..."


_USER_ERRORS: dict[type[Exception], grpc.StatusCode] = {
    # Before DeviceError, which it is: a device's agent that is down or refused (a busy one keeps its code).
    AgentError: grpc.StatusCode.UNAVAILABLE,
    InvalidBudgetError: grpc.StatusCode.INVALID_ARGUMENT,
    DeviceError: grpc.StatusCode.NOT_FOUND,
    BudgetOutOfRangeError: grpc.StatusCode.OUT_OF_RANGE,
    UnavailableOptionError: grpc.StatusCode.FAILED_PRECONDITION,
}


class RpcError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _fields_of(message: type, raw: dict[str, object]) -> dict[str, object]:
    names = message.DESCRIPTOR.fields_by_name
    return {k: v for k, v in raw.items() if k in names}


def architecture_message(arch: Architecture) -> pb.Architecture:
    """The architecture's JSON fields that the message declares; a dimension registered after the proto
    was written travels in `architecture_json` alone, so adding one needs no proto change."""
    raw = arch.to_dict()
    return pb.Architecture(**{**_fields_of(pb.Architecture, raw),
                              "stages": [pb.Stage(**_fields_of(pb.Stage, s)) for s in raw["stages"]]})


class GeneratorService(pb_grpc.ArchitectureGeneratorServiceServicer):
    def __init__(self, config: ServiceConfig, metrics: ServerMetrics):
        self.config = config
        self.metrics = metrics
        self._slots = threading.BoundedSemaphore(config.max_concurrent)
        self._compute = FifoSlots(config.compute_concurrency)
        self.draining = threading.Event()
        self._bundle: Bundle | None = None
        self._policy: ServingPolicy | None = None
        self._encoded: ByteLRU[bytes] = ByteLRU(int(config.cache_mb * 1e6))
        self._active = 0
        self._idle = threading.Condition()
        self.calibration: SpeedCalibration | None = None

    def attach(self, bundle: Bundle, calibration: SpeedCalibration | None = None,
               policy: ServingPolicy | None = None) -> None:
        """Start answering with `bundle` (until then every RPC gets UNAVAILABLE)."""
        self._policy = policy or ServingPolicy(bundle, self.config.calibration_images, self.config.verification_steps,
                                               self.config.measurement_ttl_s, int(self.config.cache_mb * 1e6))
        self.calibration = calibration
        # Every exported frontier member's encoded reply field stays, beside the LRU of other models.
        self._encoded = ByteLRU(self._policy.exported_bytes + int(self.config.cache_mb * 1e6) + (1 << 20))
        self._bundle = bundle

    @property
    def policy(self) -> ServingPolicy:
        if self._policy is None:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the server is still loading its bundle; retry shortly")
        return self._policy

    def _speed_record(self, device: str) -> Speed | None:
        return self.calibration.speed(device) if self.calibration is not None else None

    def is_idle(self) -> bool:
        with self._idle:
            return self._active == 0

    @contextmanager
    def holding_compute(self) -> Iterator[None]:
        with self._compute.hold():
            yield

    @property
    def bundle(self) -> Bundle:
        if self._bundle is None:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the server is still loading its bundle; retry shortly")
        return self._bundle

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no RPC is being handled (True) or `timeout` seconds have passed (False)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    # -- plumbing -------------------------------------------------------------------------------

    @contextmanager
    def _rpc(self, method: str, request: object, context: grpc.ServicerContext) -> Iterator[None]:
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
        with self._idle:
            self._active += 1
        message = ""
        try:
            if isinstance(request, Malformed):
                raise InvalidBudgetError(f"the request is not a valid {method}Request message")
            yield
        except RpcError as exc:
            code, message = exc.code, exc.message
        except tuple(_USER_ERRORS) as exc:
            code = next(c for kind, c in _USER_ERRORS.items() if isinstance(exc, kind))
            if isinstance(exc, AgentError) and exc.code in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"):
                code = getattr(grpc.StatusCode, exc.code)
            message = str(exc)
        except Exception as exc:  # anything else is our bug: log it, answer INTERNAL, keep serving
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            message = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self.metrics.in_flight.dec()
            self._slots.release()
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(time.perf_counter() - started)
            with self._idle:
                self._active -= 1
                self._idle.notify_all()
        if code != grpc.StatusCode.OK:
            context.abort(code, _shorten(message))

    @contextmanager
    def _computing(self, context: grpc.ServicerContext, stage: str) -> Iterator[None]:
        """Hold the compute slot (in arrival order) for one unit of work, within the call's deadline."""
        self._check_deadline(context, stage)
        try:
            with self._compute.hold(context.time_remaining()):
                yield
        except SlotTimeout:
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded waiting to run {stage}") from None

    @staticmethod
    def _check_deadline(context: grpc.ServicerContext, stage: str) -> None:
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded before {stage}")

    def _observe(self, stage: str, seconds: float) -> None:
        self.metrics.stage.labels(stage).observe(seconds)

    # -- RPCs -----------------------------------------------------------------------------------

    def GenerateForBudget(self, request: pb.GenerateForBudgetRequest, context: grpc.ServicerContext) -> bytes:
        with self._rpc("GenerateForBudget", request, context):
            return self._generate(request, context)
        raise AssertionError("unreachable")  # context.abort raised after _rpc

    def _hold(self, context: grpc.ServicerContext) -> Callable[[str], AbstractContextManager[None]]:
        return lambda stage: self._computing(context, stage)

    def _encoded_model(self, exported: ExportedModel) -> bytes:
        """The reply's `onnx_model` field alone, serialized once per model: protobuf parses concatenated
        messages as one, so each reply copies the model's bytes once instead of twice."""
        encoded = self._encoded.get(exported.sha256)
        if encoded is None:
            encoded = pb.GenerateForBudgetResponse(onnx_model=exported.onnx).SerializeToString()
            self._encoded.put(exported.sha256, encoded, len(encoded))
        return encoded

    def _generate(self, request: pb.GenerateForBudgetRequest, context: grpc.ServicerContext) -> bytes:
        which = request.WhichOneof("budget")
        if which is None:
            raise InvalidBudgetError("the request has no budget: set latency_ms, macs or cost")
        req = resolve_request(
            self.bundle, latency_ms=request.latency_ms if which == "latency_ms" else None,
            macs=request.macs if which == "macs" else None, cost=request.cost if which == "cost" else None,
            device=request.device or None,
            candidates=request.candidates, seed=request.seed if request.HasField("seed") else None,
            default_candidates=self.config.default_candidates)
        if len(request.known_sha256) > MAX_KNOWN_MODELS:
            raise InvalidBudgetError(f"known_sha256 lists {len(request.known_sha256)} models; at most "
                                     f"{MAX_KNOWN_MODELS}")
        policy = self.policy
        speed = self._speed_record(req.device)
        options = AnswerOptions(
            form=GRAPH_FORMS.get(request.graph_form, self.config.default_graph_form),
            # The server's defaults apply where they can; a request that asks is refused where they cannot.
            verify=request.verify_latency if request.HasField("verify_latency")
            else self.config.verify_latency and policy.can_verify(req.device),
            use_speed=request.apply_speed if request.HasField("apply_speed")
            else self.config.calibrate_speed and speed is not None)
        verified = self.metrics.verified
        answer = policy.answer(req, options, speed.value if speed else None, self._hold(context),
                               lambda over: verified.labels(req.device, "over" if over else "within").inc())
        for stage in ("sample", "choose", "slice", "calibrate", "export", "verify"):
            if answer.timings[stage]:
                self._observe(stage, answer.timings[stage])
        (self.metrics.cache_hits if answer.cached else self.metrics.cache_misses).inc()
        self.metrics.cache_bytes.set(policy.exported_bytes)
        g, exported, t = answer.generated, answer.model, answer.timings
        omitted = exported.sha256 in request.known_sha256
        self.metrics.model_bytes.inc(0 if omitted else len(exported.onnx))
        deprecated = [name for name, given in (("candidates", request.candidates != 0),
                                               ("seed", request.HasField("seed"))) if given]
        return (b"" if omitted else self._encoded_model(exported)) + pb.GenerateForBudgetResponse(
            onnx_sha256=exported.sha256, architecture=architecture_message(g.arch),
            architecture_json=g.arch.to_json(), architecture_id=g.arch.arch_id, input_shape=policy.input_shape,
            device=g.device, cost_unit=g.unit, predicted_cost=g.predicted_cost, target_budget=g.target,
            predicted_latency_ms=g.predicted_cost if g.unit == "ms" else 0.0,
            predicted_accuracy=g.predicted_accuracy, macs=g.macs, params=g.params,
            timings=pb.StageTimings(sample_ms=1e3 * t["sample"], choose_ms=1e3 * t["choose"],
                                    slice_ms=1e3 * t["slice"], calibrate_ms=1e3 * t["calibrate"],
                                    export_ms=1e3 * t["export"], verify_ms=1e3 * t["verify"],
                                    total_ms=1e3 * t["total"]),
            cached=answer.cached, bundle_id=self.bundle.bundle_id, seed=g.seed, class_names=self.bundle.classes or [],
            runtime_contract_json=answer.contract_json, graph_form=GRAPH_FORM_MESSAGES[options.form],
            measured_latency_ms=answer.measured_latency, latency_verified=answer.verified,
            device_speed=answer.speed, speed_applied=answer.speed_applied, verification_steps=answer.steps,
            frontier_member=answer.member, model_kind=exported.metadata.get("nag.model_kind", ""),
            bn_statistics=exported.metadata.get("nag.bn_statistics", ""), deprecated_fields=deprecated,
            specialised_from=exported.metadata.get("nag.specialised_from", ""),
            model_omitted=omitted,
        ).SerializeToString()

    def ListDevices(self, request: pb.ListDevicesRequest, context: grpc.ServicerContext) -> pb.ListDevicesResponse:
        with self._rpc("ListDevices", request, context):
            devices = []
            for name, m in sorted(self.bundle.devices.items()):
                p = m.device.profile
                contract = p.contract()
                devices.append(pb.Device(
                    name=name, kind=DEVICE_KINDS.get(p.kind, pb.DEVICE_KIND_UNSPECIFIED), description=p.description,
                    execution_provider=contract.get("execution_provider", ""), intra_op_threads=p.intra_op_threads,
                    batch_size=p.batch_size, cost_unit=p.unit, min_cost=m.min_cost, max_cost=m.device.cost_range[1],
                    budgets=[float(b) for b in m.generator.budget.budgets],
                    runtime_version=contract.get("runtime_version", ""),
                    graph_optimization_level=contract.get("graph_optimization_level", ""),
                    model_format=contract.get("model_format", ""),
                    runtime_contract_json=json.dumps(contract, sort_keys=True),
                    speed=measured.value if (measured := self._speed_record(name)) else 1.0,
                    local=is_local(p),
                    speed_measured_unix=measured.measured_at if measured else 0.0,
                ))
            return pb.ListDevicesResponse(devices=devices, default_device=self.bundle.default_device,
                                          bundle_id=self.bundle.bundle_id)
        raise AssertionError("unreachable")  # context.abort raised after _rpc

    def GetFrontier(self, request: pb.GetFrontierRequest, context: grpc.ServicerContext) -> pb.GetFrontierResponse:
        with self._rpc("GetFrontier", request, context):
            models = resolve_device(self.bundle, request.device or None)
            points = request.points or self.config.frontier_points
            if not 2 <= points <= self.config.max_frontier_points:
                raise InvalidBudgetError(f"points must lie in [2, {self.config.max_frontier_points}], got {points}")
            candidates = request.candidates or self.config.default_candidates
            check_candidates(candidates)
            if points * candidates > self.config.max_frontier_samples:
                raise InvalidBudgetError(
                    f"points x candidates must be at most {self.config.max_frontier_samples} per call, got "
                    f"{points} x {candidates} = {points * candidates}; ask for fewer, or split the range over calls")
            seed = request.seed if request.HasField("seed") else 0
            check_seed(seed)
            lo, hi = models.min_cost, max(models.device.cost_range[1], models.min_cost * 1.01)
            out = []
            for budget in np.linspace(lo * 1.001, hi, points):
                with self._computing(context, "the next frontier point"):
                    g = generate_checked(self.bundle, models, float(budget), candidates, seed)
                out.append(pb.FrontierPoint(budget=float(budget), architecture_json=g.arch.to_json(),
                                            architecture_id=g.arch.arch_id, predicted_cost=g.predicted_cost,
                                            predicted_accuracy=g.predicted_accuracy, macs=g.macs))
            return pb.GetFrontierResponse(device=models.name, cost_unit=models.device.unit, points=out)
        raise AssertionError("unreachable")  # context.abort raised after _rpc
