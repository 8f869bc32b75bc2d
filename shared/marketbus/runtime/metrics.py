"""Prometheus metrics. Each service instance has its own registry (several services may run in
one process in tests); /metrics serves it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
LAG_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400)


class ServiceMetrics:
    """Metrics every service has."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.service = service
        self.up = Gauge("marketbus_up", "1 while the service runs", ["service"], registry=self.registry)
        self.up.labels(service).set(1)
        self.dead_letters = Counter(
            "marketbus_dead_letters", "payloads dead-lettered", ["service", "source", "reason"], registry=self.registry,
        )
        self.publish_latency = Histogram(
            "marketbus_publish_latency_seconds", "publish to JetStream ack", ["service"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )


class IngestMetrics(ServiceMetrics):
    """The counters and histograms of a vendor ingestor."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        super().__init__(service, registry)
        r = self.registry
        self.frames_in = Counter(
            "marketbus_ingest_frames", "vendor frames/pages/rows received", ["source", "channel"], registry=r
        )
        self.events_out = Counter("marketbus_ingest_events", "events published", ["source", "kind"], registry=r)
        self.malformed = Counter(
            "marketbus_ingest_malformed", "malformed vendor payloads", ["source", "channel"], registry=r
        )
        self.reconnects = Counter("marketbus_ingest_reconnects", "vendor reconnects", ["source"], registry=r)
        self.vendor_errors = Counter(
            "marketbus_ingest_vendor_errors", "vendor errors (429/5xx/timeouts)", ["source", "kind"], registry=r
        )
        self.event_lag = Histogram(
            "marketbus_ingest_event_lag_seconds",
            "ts_recv - ts_event",
            ["source", "kind"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.feed_state = Gauge(
            "marketbus_ingest_feed_connected", "1 when the feed is connected", ["source", "feed"], registry=r
        )
