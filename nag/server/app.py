"""Assembling and running the gRPC server: health, reflection, metrics, auth, TLS, graceful shutdown.

    nag serve --bundle bundles/default [--port 50051] [--metrics-port 9090]
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nag import installed_version
from nag.bundle.bundle import Bundle, bundle_or_default, load_bundle
from nag.config import ServiceConfig
from nag.cost.device import contract_problems
from nag.cost.remote import AgentClient, agent_contract_problems, connect_agent, parse_address
from nag.errors import NagError
from nag.policy.answer import ServingPolicy
from nag.policy.frontier import serving_frontier
from nag.policy.materialize import export_child
from nag.server.calibration import CalibrationConfig, SpeedCalibration
from nag.server.metrics import METHODS, ServerMetrics
from nag.server.service import GeneratorService, add_service
from nag.space.arch import biggest
from nag.v1 import generator_pb2 as pb

log = logging.getLogger("nag.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ArchitectureGeneratorService"].full_name
CLIENT_DEFAULT_RECEIVE = 4 * 1024 * 1024
AGENT_MEASURE_TIMEOUT_S = 120.0
UNAUTHENTICATED_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Requires `authorization: Bearer <token>` metadata (health and reflection stay open)."""

    def __init__(self, token: str, metrics: ServerMetrics | None = None):
        self._expected = f"Bearer {token}".encode()
        self._deny = {}
        for method in (*METHODS, "other"):
            def deny(request: Any, context: grpc.ServicerContext, method: str = method) -> None:
                if metrics is not None:
                    metrics.requests.labels(method, grpc.StatusCode.UNAUTHENTICATED.name).inc()
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

            self._deny[method] = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith(UNAUTHENTICATED_METHODS):
            return continuation(details)
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        # Constant-time, so that response timing does not reveal how much of a guess was right.
        if hmac.compare_digest(given.encode() if isinstance(given, str) else given, self._expected):
            return continuation(details)
        method = details.method.rsplit("/", 1)[-1]
        return self._deny[method if method in METHODS else "other"]


@dataclass
class ServerOptions:
    bundle: Path
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9090  # 0 picks a free port; -1 disables the endpoint
    workers: int = 16
    service: ServiceConfig = field(default_factory=ServiceConfig)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None
    grace_seconds: float = 30.0
    # After SIGTERM, new calls are answered UNAVAILABLE ("shutting down") for at least this long before the
    # listener closes, so that clients and load balancers see the service's answer, not a refused connection.
    drain_seconds: float = 1.0
    # Serve devices whose runtime contract this runtime cannot honour (another ONNX Runtime version, ...).
    allow_contract_mismatch: bool = False
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    # Measurement agents by device name (`--agent NAME=HOST:PORT`): connected and checked against the device's
    # contract at load; `RunningServer.agents` holds their clients.
    agents: dict[str, str] = field(default_factory=dict)
    agent_token_file: Path | None = None  # else $NAG_AGENT_TOKEN
    agent_tls_ca: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise NagError(f"--port must lie in [0, 65535], got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise NagError(f"--metrics-port must lie in [0, 65535] (or -1: off), got {self.metrics_port}")
        if self.workers < 1:
            raise NagError(f"--workers must be at least 1, got {self.workers}")
        if self.grace_seconds < 0 or self.drain_seconds < 0:
            raise NagError("--grace and the drain time must not be negative")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise NagError("--tls-cert and --tls-key go together")
        self.agents = {name: parse_address(address) for name, address in self.agents.items()}


def _read_tls(options: ServerOptions) -> grpc.ServerCredentials | None:
    if not (options.tls_cert and options.tls_key):
        return None
    try:
        key, cert = options.tls_key.read_bytes(), options.tls_cert.read_bytes()
    except OSError as exc:
        raise NagError(f"cannot read the TLS key or certificate: {exc.filename}: {exc.strerror}") from None
    return grpc.ssl_server_credentials([(key, cert)])


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX does) before the worker threads start.

    Every gRPC worker thread otherwise gets its own arena; in a 60 s soak with 32 clients the server's
    RSS grew from 307 to 738 MB with the default and from 304 to 537 MB with 2 arenas.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


class RunningServer:
    """A bound, started server. Health is NOT_SERVING until `load()` has loaded and warmed the bundle;
    `stop()` drains in-flight calls while new ones get UNAVAILABLE."""

    def __init__(self, options: ServerOptions):
        self.options = options
        credentials = _read_tls(options)
        limit_malloc_arenas()
        self.metrics = ServerMetrics()
        self.metrics.info.info({"version": installed_version(), "bundle_id": "", "bundle": ""})
        self.health = health.HealthServicer()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        interceptors = [BearerTokenInterceptor(options.token, self.metrics)] if options.token else []
        # The largest child of the default space is ~3.4 MB; allow far beyond it. Clients must raise
        # their receive limit above gRPC's 4 MB default for bigger spaces (see docs/serving.md, "Message size").
        self.max_message = 64 * 1024 * 1024
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="nag-rpc"),
            interceptors=interceptors,
            options=[("grpc.max_send_message_length", self.max_message),
                     ("grpc.max_receive_message_length", 1024 * 1024),
                     # A second server on a port in use must fail, not silently share its connections.
                     ("grpc.so_reuseport", 0)],
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        # Registered before start (gRPC does not take handlers later); it answers UNAVAILABLE until load().
        self.service = GeneratorService(options.service, self.metrics)
        add_service(self.service, self.server)
        self._stop_calibrating = threading.Event()
        self._calibrating: threading.Thread | None = None
        self.agents: dict[str, AgentClient] = {}
        # The metrics endpoint first: binding it cannot leave a half-started gRPC server holding its port.
        self.metrics_port = self.metrics.serve(options.metrics_port, options.host) \
            if options.metrics_port >= 0 else None
        address = f"{options.host}:{options.port}"
        try:
            self.port = (self.server.add_secure_port(address, credentials) if credentials
                         else self.server.add_insecure_port(address))
        except RuntimeError as exc:
            self.metrics.close()
            raise NagError(f"cannot bind {address}: in use or not an address of this machine ({exc})") from None
        if self.port == 0:
            self.metrics.close()
            raise NagError(f"cannot bind {address}: in use or not an address of this machine")
        reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, health.SERVICE_NAME),
                                            self.server)
        self.server.start()
        log.info("listening on %s:%d (metrics port %s); NOT_SERVING until the bundle is loaded",
                 options.host, self.port, self.metrics_port)

    def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            self.health.set(name, status)

    def load(self, bundle: Bundle | None = None) -> None:
        """Load (or take) the bundle, export every serving-frontier member (checking the biggest child's
        model once), then answer SERVING."""
        started = time.perf_counter()
        bundle = bundle or load_bundle(self.options.bundle)
        check_contracts(bundle, self.options.allow_contract_mismatch)
        self.agents = connect_agents(bundle, self.options)
        service = self.options.service
        policy = ServingPolicy(bundle, service.calibration_images, service.verification_steps,
                               service.measurement_ttl_s, int(service.cache_mb * 1e6))
        for name in bundle.devices:
            if not serving_frontier(bundle, bundle.devices[name]).materialized:
                log.warning("bundle %s stores no current serving frontier for device %s: its members are built "
                            "here and BN-calibrated on %d images when exported (materialize them with `python -m "
                            "nag.pipeline.materialize_frontier --bundle %s`)", bundle.bundle_id, name,
                            service.calibration_images, bundle.root)
        for name, agent in self.agents.items():  # verification on the device itself
            profile = bundle.devices[name].device.profile
            policy.set_measurer(name, lambda onnx, a=agent, p=profile: a.measure_model(
                onnx, p, policy.input_shape, timeout_s=AGENT_MEASURE_TIMEOUT_S))
        exported = policy.warm(service.warm_forms)
        largest = max(policy.largest_model, _check_biggest(bundle, service.calibration_images))
        if largest > CLIENT_DEFAULT_RECEIVE:
            log.warning("the largest child's ONNX model is %.1f MB: clients need grpc.max_receive_message_length "
                        "above gRPC's 4 MB default", largest / 1e6)
        if largest > self.max_message:
            raise NagError(f"the largest child ({largest / 1e6:.1f} MB) exceeds the server's message limit")
        calibration = None
        if service.calibrate_speed:
            calibration = SpeedCalibration(bundle, self.options.calibration,
                                           lambda device, speed: self.metrics.speed.labels(device).set(speed.value))
            calibration.calibrate_all()  # before SERVING: the first requests already use this machine's speed
            self._calibrating = threading.Thread(
                target=calibration.run_when_idle, name="nag-calibration",
                args=(self._stop_calibrating, self.service.is_idle, self.service.holding_compute), daemon=True)
            self._calibrating.start()
        self.service.attach(bundle, calibration, policy)
        self.metrics.info.info({"version": installed_version(), "bundle_id": bundle.bundle_id,
                                "bundle": str(bundle.root)})
        self.metrics.cache_bytes.set(policy.exported_bytes)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("bundle %s loaded, devices %s; %d frontier models exported (%.1f MB), largest %.2f MB; SERVING "
                 "%.1f s after loading began", bundle.bundle_id, sorted(bundle.devices), exported,
                 policy.exported_bytes / 1e6, largest / 1e6, time.perf_counter() - started)

    def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """Drain: new calls get UNAVAILABLE "shutting down" and health NOT_SERVING while in-flight calls
        finish (up to `grace` seconds, and for at least `drain` seconds; by default the options'); then close
        the listener."""
        started = time.monotonic()
        grace = self.options.grace_seconds if grace is None else grace
        self._stop_calibrating.set()
        self.service.draining.set()
        self.health.enter_graceful_shutdown()
        drain = self.options.drain_seconds if drain is None else drain
        self.service.wait_idle(grace)
        time.sleep(max(0.0, min(drain, grace) - (time.monotonic() - started)))
        self.server.stop(max(0.0, grace - (time.monotonic() - started))).wait()
        self.metrics.close()
        for agent in self.agents.values():
            agent.close()


def check_contracts(bundle: Bundle, allow_mismatch: bool = False) -> None:
    """Refuse a bundle with a device whose runtime contract this runtime cannot honour, unless allowed."""
    for models in bundle.devices.values():
        errors, warnings = contract_problems(models.device.profile)
        for warning in warnings:
            log.warning("%s", warning)
        if errors and not allow_mismatch:
            raise NagError("; ".join(errors))
        for error in errors:
            log.warning("serving despite a contract mismatch (--allow-contract-mismatch): %s", error)


def connect_agents(bundle: Bundle, options: ServerOptions) -> dict[str, AgentClient]:
    """A client per `--agent`, each reachable and able to honour its device's contract (unless
    --allow-contract-mismatch, which only warns)."""
    agents: dict[str, AgentClient] = {}
    try:
        for name, address in sorted(options.agents.items()):
            if name not in bundle.devices:
                raise NagError(f"--agent names device {name!r}, which the bundle lacks (it has "
                               f"{sorted(bundle.devices)})")
            profile = bundle.devices[name].device.profile
            agent = connect_agent(address, options.agent_token_file, options.agent_tls_ca)
            agents[name] = agent
            problems = agent_contract_problems(profile, agent.fingerprint())
            if problems and not options.allow_contract_mismatch:
                raise NagError(f"{agent.where} cannot measure device {name!r}: " + "; ".join(problems))
            for problem in problems:
                log.warning("--allow-contract-mismatch: %s for device %s: %s", agent.where, name, problem)
            log.info("device %s: %s on %s", name, agent.where, agent.fingerprint()["cpu_model"])
    except BaseException:
        for agent in agents.values():
            agent.close()
        raise
    return agents


def _check_biggest(bundle: Bundle, calibration_images: int) -> int:
    """Export the space's biggest child once and check its model (warms torch and ONNX paths); return its
    ONNX size in bytes, the largest any answer can be."""
    exported = export_child(bundle, biggest(bundle.space), calibration_images, check=True)
    return len(exported.onnx)


def start_server(options: ServerOptions, bundle: Bundle | None = None) -> RunningServer:
    """Bind, start, load the bundle and warm up; returns a SERVING server."""
    running = RunningServer(options)
    running.load(bundle)
    return running


TOKEN_ENV = "NAG_TOKEN"


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    defaults = ServerOptions(bundle=Path())
    service = defaults.service
    p.add_argument("--bundle", help="bundle directory (default: $NAG_BUNDLE, else a checkout's bundles/default)")
    p.add_argument("--host", default=defaults.host, help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=defaults.port, help="gRPC port; 0 picks a free one")
    p.add_argument("--metrics-port", type=int, default=defaults.metrics_port,
                   help="Prometheus HTTP port; 0 picks a free one, -1 disables it")
    p.add_argument("--workers", type=int, default=defaults.workers, help="gRPC worker threads")
    p.add_argument("--max-concurrent", type=int, default=service.max_concurrent,
                   help="RPCs at once; more get RESOURCE_EXHAUSTED")
    p.add_argument("--cache-mb", type=float, default=service.cache_mb,
                   help="LRU cache, in MB, of models beyond the serving-frontier members exported at start")
    p.add_argument("--candidates", type=int, default=service.default_candidates,
                   help="default candidates per request")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key) to serve TLS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.add_argument("--token-file", type=Path,
                   help=f"require `authorization: Bearer TOKEN`, TOKEN read from this file (or set {TOKEN_ENV})")
    p.add_argument("--token", help=f"as --token-file, but visible to every local user in the process list: "
                                   f"prefer {TOKEN_ENV} or --token-file")
    p.add_argument("--grace", type=float, default=defaults.grace_seconds,
                   help="seconds in-flight calls get on SIGTERM")
    p.add_argument("--verify-latency", action=argparse.BooleanOptionalAction, default=service.verify_latency,
                   help="measure picks under their device's runtime contract before replying (devices this server "
                        "can measure), stepping down to the next cheaper frontier member when over the budget, "
                        "unless a request says not to (default: off, so answers depend on the bundle alone)")
    p.add_argument("--measurement-ttl", type=float, default=service.measurement_ttl_s,
                   help="seconds a verified pick's measured latency is reused (0: measure every reply)")
    p.add_argument("--calibrate-speed", dest="calibrate", action=argparse.BooleanOptionalAction,
                   default=service.calibrate_speed,
                   help="measure this machine's speed against the profiles of the devices it runs, and target "
                        "budget / speed for requests that do not say (reported in the reply; default: off)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false", help=argparse.SUPPRESS)
    p.add_argument("--agent", action="append", default=[], metavar="NAME=HOST:PORT",
                   help="the measurement agent (nag-agent) that runs device NAME's models; repeatable")
    p.add_argument("--agent-token-file", type=Path, help="the agents' token (or set NAG_AGENT_TOKEN)")
    p.add_argument("--agent-tls-ca", type=Path, help="PEM root certificate of agents that serve TLS")
    p.add_argument("--allow-contract-mismatch", action="store_true",
                   help="serve devices measured under another runtime (e.g. another ONNX Runtime version); "
                        "their latency budgets may not hold")


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        log.warning("--token is readable by every local user (/proc/PID/cmdline); prefer %s or --token-file",
                    TOKEN_ENV)
        return str(args.token)
    if args.token_file:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise NagError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
        if not token:
            raise NagError(f"--token-file {args.token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def parse_agents(values: list[str]) -> dict[str, str]:
    """`--agent NAME=HOST:PORT` flags as {device name: address}; a device named twice is an error."""
    agents: dict[str, str] = {}
    for value in values:
        name, sep, address = value.partition("=")
        if not sep or not name or not address:
            raise NagError(f"--agent {value!r} must be NAME=HOST:PORT (a device name and its agent's address)")
        if name in agents:
            raise NagError(f"--agent names device {name!r} twice")
        agents[name] = parse_address(address)
    return agents


def options_from_args(args: argparse.Namespace) -> ServerOptions:
    return ServerOptions(
        bundle=bundle_or_default(args.bundle), host=args.host, port=args.port, metrics_port=args.metrics_port,
        workers=args.workers,
        service=ServiceConfig(default_candidates=args.candidates, max_concurrent=args.max_concurrent,
                              cache_mb=args.cache_mb, verify_latency=args.verify_latency,
                              measurement_ttl_s=args.measurement_ttl, calibrate_speed=args.calibrate),
        tls_cert=args.tls_cert, tls_key=args.tls_key, token=_token(args), grace_seconds=args.grace,
        allow_contract_mismatch=args.allow_contract_mismatch, agents=parse_agents(args.agent),
        agent_token_file=args.agent_token_file, agent_tls_ca=args.agent_tls_ca,
    )


def serve(options: ServerOptions) -> int:
    """Run until SIGTERM/SIGINT, then drain gracefully."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    running = RunningServer(options)
    try:
        running.load()
    except BaseException:
        running.stop(0, drain=0)
        raise
    print(f"serving on {options.host}:{running.port}, metrics on {running.metrics_port}", flush=True)
    while not stop.wait(0.5):
        pass
    log.info("shutting down: draining in-flight calls (grace %.0f s)", options.grace_seconds)
    running.stop(options.grace_seconds)
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nag serve", description="Serve a bundle over gRPC")
    add_server_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve(options_from_args(args))
    except NagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
