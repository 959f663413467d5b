"""Prometheus metrics of one app instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("rag_rec_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("rag_rec_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("rag_rec_http_in_flight_requests", "API requests being served now",
                               registry=self.registry)
        self.rejected = Counter("rag_rec_http_rejected", "Requests refused by admission control",
                                ["reason"], registry=self.registry)
        self.slot_wait = Histogram("rag_rec_compute_slot_wait_seconds", "Time a request queued for a compute slot "
                                   "(serve.compute_threads)", buckets=LATENCY_BUCKETS, registry=self.registry)
        self.compose = Counter("rag_rec_compose", "Responses by the path that composed them",
                               ["endpoint", "produced_by"], registry=self.registry)
        self.stream_errors = Counter("rag_rec_stream_errors", "Errors sent inside a streamed response that had "
                                     "already answered 200 (chat)", ["endpoint", "error"], registry=self.registry)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"  # a client's method name is no label value
        self.requests.labels(route=route, method=method, status=str(status)).inc()
        self.latency.labels(route=route, method=method).observe(seconds)

    def composed(self, endpoint: str, produced_by: str) -> None:
        self.compose.labels(endpoint=endpoint, produced_by=produced_by).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
