"""Prometheus metrics of the history writer (next to every service's own, runtime.metrics)."""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

from marketbus.runtime.metrics import LATENCY_BUCKETS, ServiceMetrics


class HistoryMetrics(ServiceMetrics):
    def __init__(self, service: str, registry: Any = None) -> None:
        super().__init__(service, registry)
        r = self.registry
        self.events_stored = Counter(
            "marketbus_history_events_stored", "rows written to the store", ["stream"], registry=r
        )
        self.duplicates = Counter(
            "marketbus_history_duplicates", "rows/messages skipped as already stored", ["stream"], registry=r
        )
        self.messages_acked = Counter(
            "marketbus_history_messages_acked", "JetStream messages acked", ["stream"], registry=r
        )
        self.flush_errors = Counter(
            "marketbus_history_flush_errors", "failed flushes (retried by redelivery)", ["stream"], registry=r
        )
        self.flush_seconds = Histogram(
            "marketbus_history_flush_seconds",
            "decode + write + ack of one batch",
            ["stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queries = Counter("marketbus_history_queries", "queries served", ["kind"], registry=r)
