"""Prometheus metrics of one service instance, kept in their own registry so several apps can share a process."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServeMetrics", "CONTENT_TYPE_LATEST"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Request counts/latency by endpoint and status, model batch sizes and durations, errors by type, queue depth."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rerank_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "rerank_request_latency_seconds", "Wall time from request arrival to response", ["endpoint"], registry=r
        )
        self.batch_size = Histogram(
            "rerank_batch_size", "Requests merged into one model call", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_docs = Histogram(
            "rerank_batch_documents",
            "Documents scored in one model call",
            buckets=(1, 10, 50, 100, 500, 1000, 5000, 10000),
            registry=r,
        )
        self.batch_latency = Histogram("rerank_batch_latency_seconds", "Wall time of one model call", registry=r)
        self.errors = Counter("rerank_errors", "Error responses by error type", ["error_type"], registry=r)
        self.abandoned = Counter(
            "rerank_abandoned", "Requests dropped because their client disconnected before the answer", registry=r
        )
        self.documents_cut = Counter(
            "rerank_documents_cut", "Documents cut to --max-doc-chars before scoring", registry=r
        )
        self.documents_unranked = Counter(
            "rerank_documents_unranked", "Documents (passages) past a window head's depth, left in input order",
            registry=r,
        )
        self.queue_depth = Gauge("rerank_queue_depth", "Requests accepted and not yet answered", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
