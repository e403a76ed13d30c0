"""Prometheus metrics of the server, in their own registry, served on a separate HTTP port.

Every labelled series an operator may alert on exists from the start at 0: a counter that appears only at
its first increment reads as no change to `increase()`, so the first errors after a start would be missed.
"""

from __future__ import annotations

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

from nag.errors import NagError

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Whole requests queue behind the compute slot: 32 concurrent uncached calls take several seconds each.
REQUEST_BUCKETS = (*STAGE_BUCKETS, 5.0, 10.0, 30.0, 60.0, 120.0)
METHODS = ("GenerateForBudget", "ListDevices", "GetFrontier")
STAGES = ("sample", "choose", "slice", "calibrate", "export", "verify")


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        PlatformCollector(registry=r)
        self.info = Info("nag_build", "Version of the server and the bundle it serves", registry=r)
        self.requests = Counter("nag_requests", "RPCs by method and gRPC status code", ["method", "code"], registry=r)
        self.latency = Histogram("nag_request_duration_seconds", "RPC wall time by method", ["method"],
                                 buckets=REQUEST_BUCKETS, registry=r)
        self.stage = Histogram("nag_stage_duration_seconds", "Wall time of each generation stage", ["stage"],
                               buckets=STAGE_BUCKETS, registry=r)
        self.cache_hits = Counter("nag_cache_hits", "Exported models served from the cache", registry=r)
        self.cache_misses = Counter("nag_cache_misses", "Exported models built for a request", registry=r)
        self.cache_bytes = Gauge("nag_cache_bytes", "Bytes held by the model cache", registry=r)
        self.model_bytes = Counter("nag_model_bytes_served", "ONNX bytes returned to clients", registry=r)
        self.in_flight = Gauge("nag_in_flight_requests", "RPCs being handled now", registry=r)
        self.rejected = Counter("nag_rejected_overload", "RPCs answered RESOURCE_EXHAUSTED", registry=r)
        self.speed = Gauge("nag_device_speed", "This machine's latency now / the device profile's (1: as profiled)",
                           ["device"], registry=r)
        self.verified = Counter("nag_latency_verified", "Picks measured under the runtime contract, by outcome",
                                ["device", "outcome"], registry=r)
        for method in METHODS:
            self.latency.labels(method)
            for code in grpc.StatusCode:
                self.requests.labels(method, code.name)
        for stage in STAGES:
            self.stage.labels(stage)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint; returns the bound port (useful with port 0)."""
        try:
            server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise NagError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self._http = server
        return int(server.server_address[1])

    def close(self) -> None:
        http = getattr(self, "_http", None)
        if http is not None:
            http.shutdown()
            http.server_close()
            self._http = None
