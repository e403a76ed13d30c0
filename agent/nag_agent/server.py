"""The agent's gRPC service: health, fingerprint and measurement, one measurement at a time.

Every call but Health needs `authorization: Bearer TOKEN` metadata (compared in constant time). Models
arrive in pieces of a client stream, so that no single gRPC message grows with the model; the sizes are
checked as the pieces arrive, against the agent's limits.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Callable, NoReturn

import grpc

from nag_agent.fingerprint import fingerprint
from nag_agent.timing import GRAPH_OPTIMIZATION_LEVELS, Cancelled, ModelError, Settings, time_models
from nag_agent.v1 import agent_pb2 as pb
from nag_agent.v1 import agent_pb2_grpc as pb_grpc

SERVICE = "/nag_agent.v1.MeasurementAgent/"
OPEN_METHODS = (SERVICE + "Health",)
MB = 1024 * 1024
# Clients send models in pieces of 1 MiB; a message is a piece and (in the first one) the contract.
MAX_MESSAGE_BYTES = 4 * MB
# Upper bounds that only catch nonsense: a contract within them can still take hours on a slow board.
MAX_THREADS = 1024
MAX_BATCH = 65536
MAX_RUNS = 100_000


@dataclass(frozen=True)
class Limits:
    max_model_bytes: int = 64 * MB
    max_request_bytes: int = 512 * MB
    max_models: int = 256
    max_waiting: int = 4  # measurements waiting behind the running one; more get RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if min(self.max_model_bytes, self.max_request_bytes, self.max_models) < 1 or self.max_waiting < 0:
            raise ValueError("the model, request and count limits must be positive and the queue not negative")


class FifoSlot:
    """One holder at a time, the waiting ones served in arrival order; a waiter whose caller left gives up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[threading.Event] = deque()

    def acquire(self, active: Callable[[], bool]) -> bool:
        me = threading.Event()
        with self._lock:
            self._queue.append(me)
            if self._queue[0] is me:
                me.set()
        while not me.wait(0.2):
            if not active():
                with self._lock:
                    if not me.is_set():
                        self._queue.remove(me)
                        return False
                self.release()  # it became our turn meanwhile: pass it on
                return False
        return True

    def release(self) -> None:
        with self._lock:
            self._queue.popleft()
            if self._queue:
                self._queue[0].set()


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    context.abort(code, message[:1000])
    raise AssertionError("context.abort returns only by raising")


def _mb(n: int) -> str:
    return f"{n / MB:.1f} MB"


class AgentService(pb_grpc.MeasurementAgentServicer):
    def __init__(self, limits: Limits, facts: dict[str, Any] | None = None):
        self.limits = limits
        self.facts = facts or fingerprint()
        self._slot = FifoSlot()
        self._count_lock = threading.Lock()
        self._admitted = 0  # measurement calls in progress: receiving, waiting or measuring
        self._measuring = 0

    def Health(self, request: pb.HealthRequest, context: grpc.ServicerContext) -> pb.HealthResponse:
        with self._count_lock:
            admitted, measuring = self._admitted, self._measuring
        return pb.HealthResponse(serving=True, measuring=measuring, waiting=admitted - measuring,
                                 max_waiting=self.limits.max_waiting)

    def Fingerprint(self, request: pb.FingerprintRequest, context: grpc.ServicerContext
                    ) -> pb.FingerprintResponse:
        return pb.FingerprintResponse(max_model_bytes=self.limits.max_model_bytes, max_models=self.limits.max_models,
                                      **self.facts)

    def Measure(self, requests: Iterator[pb.MeasureRequest], context: grpc.ServicerContext) -> pb.MeasureResponse:
        with self._count_lock:
            if self._admitted >= 1 + self.limits.max_waiting:
                waiting = self._admitted - self._measuring
                _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                       f"the agent is busy: {self._measuring} measurement running and {waiting} waiting (at most "
                       f"{self.limits.max_waiting} wait, --max-waiting); try again later")
            self._admitted += 1
        try:
            return self._measure(requests, context)
        finally:
            with self._count_lock:
                self._admitted -= 1

    def _measure(self, requests: Iterator[pb.MeasureRequest], context: grpc.ServicerContext) -> pb.MeasureResponse:
        arrived = time.monotonic()
        contract, models = self._receive(requests, context)
        settings = self._settings(contract, context)
        if not self._slot.acquire(context.is_active):
            _abort(context, grpc.StatusCode.CANCELLED, "the caller left while waiting")
        started = time.monotonic()
        with self._count_lock:
            self._measuring += 1
        try:
            timings = time_models(models, settings, cancelled=lambda: not context.is_active())
        except ModelError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Cancelled:
            _abort(context, grpc.StatusCode.CANCELLED, "the caller left while its models were timed")
        finally:
            with self._count_lock:
                self._measuring -= 1
            self._slot.release()
        import onnxruntime as ort

        return pb.MeasureResponse(
            timings=[pb.ModelTiming(median_ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms,
                                    round_medians_ms=list(t.round_medians_ms), runs=t.runs, noise=t.noise,
                                    stable=t.stable) for t in timings],
            onnxruntime_version=ort.__version__, waited_seconds=started - arrived,
            measured_seconds=time.monotonic() - started)

    def _receive(self, requests: Iterator[pb.MeasureRequest], context: grpc.ServicerContext
                 ) -> tuple[pb.Contract, list[bytes]]:
        limits = self.limits
        contract: pb.Contract | None = None
        pieces: list[list[bytes]] = []
        sizes: list[int] = []
        total = 0
        for number, message in enumerate(requests):
            if number == 0:
                if not message.HasField("contract"):
                    _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the first message must carry the contract")
                contract = message.contract
            elif message.HasField("contract"):
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "only the first message may carry the contract")
            if not message.data:
                continue
            index = message.model
            if index == len(pieces):
                if index >= limits.max_models:
                    _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                           f"more than {limits.max_models} models in one measurement (--max-models)")
                pieces.append([])
                sizes.append(0)
            elif index != len(pieces) - 1:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"model {index} arrived after model {len(pieces) - 1}; send the models in order 0, 1, ...")
            sizes[index] += len(message.data)
            total += len(message.data)
            if sizes[index] > limits.max_model_bytes:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"model {index} is larger than this agent's limit of {_mb(limits.max_model_bytes)} "
                       f"(--max-model-mb)")
            if total > limits.max_request_bytes:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"the models of one measurement exceed this agent's limit of "
                       f"{_mb(limits.max_request_bytes)} (--max-request-mb); send fewer at a time")
            pieces[index].append(message.data)
        if contract is None:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the request is empty: send a contract and models")
        if not pieces:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the request has no models")
        return contract, [b"".join(p) for p in pieces]

    def _settings(self, c: pb.Contract, context: grpc.ServicerContext) -> Settings:
        problems = []
        providers = self.facts["providers"]
        if c.execution_provider not in providers:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                   f"this agent's ONNX Runtime has no {c.execution_provider or 'execution provider named ``'} "
                   f"(available: {providers})")
        if c.graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            problems.append(f"graph_optimization_level {c.graph_optimization_level!r} must be one of "
                            f"{list(GRAPH_OPTIMIZATION_LEVELS)}")
        if not 1 <= c.intra_op_threads <= MAX_THREADS or not 1 <= c.inter_op_threads <= MAX_THREADS:
            problems.append(f"intra_op_threads and inter_op_threads must lie in [1, {MAX_THREADS}]")
        if not 1 <= c.batch_size <= MAX_BATCH:
            problems.append(f"batch_size must lie in [1, {MAX_BATCH}]")
        if any(d < 1 for d in c.input_shape) or len(c.input_shape) > 8:
            problems.append("input_shape must be at most 8 positive dimensions")
        if not 1 <= c.timed_runs <= MAX_RUNS or not 1 <= c.rounds <= MAX_RUNS:
            problems.append(f"timed_runs and rounds must lie in [1, {MAX_RUNS}]")
        if c.warmup_runs > MAX_RUNS or c.rewarm_runs > MAX_RUNS:
            problems.append(f"warmup_runs and rewarm_runs must be at most {MAX_RUNS}")
        if not 0 <= c.max_noise < float("inf"):
            problems.append("max_noise must be a finite number >= 0")
        if problems:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid contract: " + "; ".join(problems))
        return Settings(provider=c.execution_provider, intra_op_threads=c.intra_op_threads,
                        inter_op_threads=c.inter_op_threads, graph_optimization_level=c.graph_optimization_level,
                        batch_size=c.batch_size, input_shape=tuple(c.input_shape), warmup_runs=c.warmup_runs,
                        timed_runs=c.timed_runs, rounds=c.rounds, rewarm_runs=c.rewarm_runs,
                        max_noise=c.max_noise, seed=c.seed)


class TokenInterceptor(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every call but Health."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (authorization: Bearer TOKEN)")

        self._deny_unary = grpc.unary_unary_rpc_method_handler(deny)
        self._deny_stream = grpc.stream_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if details.method in OPEN_METHODS:
            return continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return continuation(details)
        return self._deny_stream if details.method == SERVICE + "Measure" else self._deny_unary


@dataclass
class RunningAgent:
    server: grpc.Server
    port: int
    service: AgentService

    def stop(self, grace: float = 1.0) -> None:
        self.server.stop(grace).wait()


def start_agent(token: str, host: str = "127.0.0.1", port: int = 0, limits: Limits = Limits(),
                tls: tuple[bytes, bytes] | None = None) -> RunningAgent:
    """Bind and start; `tls` is (private key, certificate chain) in PEM. Raises OSError if it cannot bind."""
    if not token:
        raise ValueError("the token must not be empty")
    service = AgentService(limits)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=limits.max_waiting + 8, thread_name_prefix="nag-agent"),
        interceptors=[TokenInterceptor(token)],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.so_reuseport", 0),
                 # Clients ping every 30 s to notice a vanished agent during a long measurement.
                 ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                 ("grpc.keepalive_permit_without_calls", 1)])
    pb_grpc.add_MeasurementAgentServicer_to_server(service, server)
    address = f"{host}:{port}"
    try:
        bound = (server.add_secure_port(address, grpc.ssl_server_credentials([tls])) if tls
                 else server.add_insecure_port(address))
    except RuntimeError as exc:
        raise OSError(f"cannot bind {address}: {exc}") from None
    if bound == 0:
        raise OSError(f"cannot bind {address}: in use or not an address of this machine")
    server.start()
    return RunningAgent(server, bound, service)
