"""Prometheus metrics of the server, in their own registry, served on a separate HTTP port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nag_requests", "RPCs by method and gRPC status code", ["method", "code"], registry=r)
        self.latency = Histogram("nag_request_duration_seconds", "RPC wall time by method", ["method"],
                                 buckets=STAGE_BUCKETS, registry=r)
        self.stage = Histogram("nag_stage_duration_seconds", "Wall time of each generation stage", ["stage"],
                               buckets=STAGE_BUCKETS, registry=r)
        self.cache_hits = Counter("nag_cache_hits", "Exported models served from the cache", registry=r)
        self.cache_misses = Counter("nag_cache_misses", "Exported models built for a request", registry=r)
        self.cache_bytes = Gauge("nag_cache_bytes", "Bytes held by the model cache", registry=r)
        self.model_bytes = Counter("nag_model_bytes_served", "ONNX bytes returned to clients", registry=r)
        self.in_flight = Gauge("nag_in_flight_requests", "RPCs being handled now", registry=r)
        self.rejected = Counter("nag_rejected_overload", "RPCs answered RESOURCE_EXHAUSTED", registry=r)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint; returns the bound port (useful with port 0)."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_address[1])
