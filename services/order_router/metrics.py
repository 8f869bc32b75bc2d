"""Prometheus metrics of the order router (next to every service's own, runtime.metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from marketbus.runtime.metrics import LATENCY_BUCKETS, ServiceMetrics


class RouterMetrics(ServiceMetrics):
    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        super().__init__(service, registry)
        r = self.registry
        self.commands = Counter("marketbus_router_commands", "order commands handled, by kind and outcome "
                                "(accepted, refused, undecodable, error)", ["kind", "outcome"], registry=r)
        self.transitions = Counter("marketbus_router_order_transitions", "order events published, by new state",
                                   ["state"], registry=r)
        self.exchange_requests = Histogram(
            "marketbus_router_exchange_request_seconds", "Digitex REST round trips, by endpoint and outcome "
            "(HTTP status, timeout, transport)", ["endpoint", "outcome"], buckets=LATENCY_BUCKETS, registry=r)
        self.open_orders = Gauge("marketbus_router_open_orders", "orders the router tracks as open", registry=r)
        self.halted = Gauge("marketbus_router_halted", "1 while the kill switch is on", registry=r)
