"""Generate marketbus's Grafana dashboards (deploy/monitoring/grafana/dashboards/*.json).

    .venv/bin/python tools/grafana_dashboards.py        # rewrite the JSON files
    .venv/bin/python tools/grafana_dashboards.py --check  # exit 1 if they are not up to date

The dashboards are data; writing them as Python keeps the panels uniform and every PromQL
expression in one reviewable place (tests/monitoring checks each metric exists in the code).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "deploy" / "monitoring" / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "marketbus-prometheus"}


def panel(title: str, exprs: dict[str, str], unit: str = "short", kind: str = "timeseries",
          description: str = "") -> dict[str, Any]:
    """One panel; ``exprs`` maps a legend format to a PromQL expression."""
    return {
        "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for i, (legend, expr) in enumerate(exprs.items())],
    }


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]]) -> dict[str, Any]:
    for i, p in enumerate(panels):  # two panels a row, 8 units high
        p["id"] = i + 1
        p["gridPos"] = {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8}
    return {
        "uid": uid, "title": title, "description": description, "tags": ["marketbus"], "editable": False,
        "schemaVersion": 39, "version": 1, "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "timezone": "utc", "panels": panels, "templating": {"list": []}, "annotations": {"list": []},
    }


def feeds() -> dict[str, Any]:
    return dashboard(
        "marketbus-feeds",
        "marketbus / feeds",
        "Vendor feeds: event rate, lag, state, gaps; books (snapshots, deltas, sync)",
        [
            panel(
                "Events published per second, by source and kind",
                {"{{source}} {{kind}}": "sum by (source, kind) (rate(marketbus_ingest_events_total[1m]))"},
                "ops",
            ),
            panel(
                "Event lag p95 (ts_recv - ts_event), by source",
                {
                    "{{source}}": "histogram_quantile(0.95, sum by (source, le) "
                    "(rate(marketbus_ingest_event_lag_seconds_bucket[5m])))"
                },
                "s",
            ),
            panel(
                "Feeds not live (stale or disconnected)",
                {
                    "{{service}} {{feed}}": 'max by (service, feed) '
                                            '(marketbus_feed_state{state=~"stale|disconnected"}) == 1'
                },
                kind="table",
            ),
            panel(
                "Age of each feed's last event",
                {"{{service}} {{feed}}": "topk(20, marketbus_feed_last_event_age_seconds)"},
                "s",
            ),
            panel(
                "Gaps and resyncs (feed-status events per 10 min)",
                {
                    "{{service}} {{state}}": "sum by (service, state) "
                    '(increase(marketbus_feed_status_events_total{state=~"gap|resynced|stale"}[10m]))'
                },
            ),
            panel(
                "Vendor connection, errors and reconnects",
                {
                    "connected {{source}} {{feed}}": "marketbus_ingest_feed_connected",
                    "errors/s {{source}} {{kind}}": "sum by (source, kind) "
                                                    "(rate(marketbus_ingest_vendor_errors_total[5m]))",
                    "reconnects/s {{source}}": "sum by (source) (rate(marketbus_ingest_reconnects_total[5m]))",
                },
            ),
            panel(
                "Malformed vendor payloads and dead letters per second",
                {
                    "malformed {{source}}": "sum by (source) (rate(marketbus_ingest_malformed_total[5m]))",
                    "dead-lettered {{service}}": "sum by (service) (rate(marketbus_dead_letters_total[5m]))",
                },
                "ops",
            ),
            panel(
                "Per-feed event rate (heartbeats)",
                {"{{service}} {{feed}}": "topk(20, marketbus_feed_events_per_second)"},
                "ops",
            ),
            # books as snapshot + deltas (marketbus.books.metrics): the ingestors that publish them...
            panel(
                "Book snapshots (by reason) and deltas published per second",
                {
                    "snapshot {{source}} {{reason}}": "sum by (source, reason) "
                                                      "(rate(marketbus_book_snapshots_total[5m]))",
                    "delta {{source}}": "sum by (source) (rate(marketbus_book_deltas_total[5m]))",
                },
                "ops",
                description="Snapshots by reason (first, resync, periodic, ...); mostly deltas in steady state.",
            ),
            panel(
                "Books out of sync (publisher and consumers' builders)",
                {
                    "published {{source}} {{venue}} {{symbol}}": "marketbus_book_synced == 0",
                    "{{consumer}} {{source}} {{venue}} {{symbol}}": "marketbus_book_builder_synced == 0",
                },
                kind="table",
                description="A publisher's book out of sync sends a snapshot next; a builder waits for one.",
            ),
            panel(
                "Book resyncs and sequence gaps (per 10 min)",
                {
                    "publisher resyncs {{source}}": "sum by (source) (increase(marketbus_book_resyncs_total[10m]))",
                    "builder gaps {{consumer}} {{source}}": "sum by (consumer, source) "
                                                            "(increase(marketbus_book_builder_gaps_total[10m]))",
                    "builder resyncs {{consumer}} {{source}}": "sum by (consumer, source) "
                                                               "(increase(marketbus_book_builder_resyncs_total[10m]))",
                },
            ),
            # ...and the consumers that rebuild them (BookBuilders)
            panel(
                "Book builder events per second, by outcome",
                {
                    "{{consumer}} {{outcome}}": "sum by (consumer, outcome) "
                                                "(rate(marketbus_book_builder_events_total[5m]))"
                },
                "ops",
                description="mismatch, gap, bad or stale events mean a book a consumer cannot trust.",
            ),
            panel(
                "Book sequence advance per second (top 20 books)",
                {"{{source}} {{venue}} {{symbol}}": "topk(20, deriv(marketbus_book_sequence[5m]))"},
                "ops",
            ),
        ],
    )


def history() -> dict[str, Any]:
    return dashboard(
        "marketbus-history",
        "marketbus / history writer",
        "Persistence of md/ref/status events: throughput, commit latency, consumer lag",
        [
            panel(
                "Rows stored per second, by stream",
                {"{{stream}}": "sum by (stream) (rate(marketbus_history_events_stored_total[1m]))"},
                "ops",
            ),
            panel(
                "Commit latency (decode + write + ack of a batch)",
                {
                    "p50 {{stream}}": "histogram_quantile(0.5, sum by (stream, le) "
                                      "(rate(marketbus_history_flush_seconds_bucket[5m])))",
                    "p99 {{stream}}": "histogram_quantile(0.99, sum by (stream, le) "
                                      "(rate(marketbus_history_flush_seconds_bucket[5m])))",
                },
                "s",
            ),
            panel(
                "Consumer lag: messages not yet delivered to the writer's durables",
                {"{{stream}} {{consumer}}": 'marketbus_jetstream_consumer_pending{consumer=~"history_writer.*"}'},
            ),
            panel(
                "Unacknowledged and redelivered",
                {
                    "ack pending {{consumer}}": (
                        'marketbus_jetstream_consumer_ack_pending{consumer=~"history_writer.*"}'
                    ),
                    "redelivered {{consumer}}": (
                        'marketbus_jetstream_consumer_redelivered{consumer=~"history_writer.*"}'
                    ),
                },
            ),
            panel(
                "Duplicates skipped and flush errors per second",
                {
                    "duplicates {{stream}}": "sum by (stream) (rate(marketbus_history_duplicates_total[5m]))",
                    "flush errors {{stream}}": "sum by (stream) (rate(marketbus_history_flush_errors_total[5m]))",
                },
                "ops",
            ),
            panel(
                "Queries served per second",
                {"{{kind}}": "sum by (kind) (rate(marketbus_history_queries_total[5m]))"},
                "ops",
            ),
        ],
    )


def exports() -> dict[str, Any]:
    return dashboard("marketbus-exports", "marketbus / exports", "Export jobs from history to files", [
        panel("Jobs finished per hour, by final state",
              {"{{state}}": "sum by (state) (increase(marketbus_export_jobs_finished_total[1h]))"}),
        panel("Job duration p50 / p95",
              {"p50": "histogram_quantile(0.5, sum by (le) (rate(marketbus_export_job_duration_seconds_bucket[1h])))",
               "p95": "histogram_quantile(0.95, sum by (le) (rate(marketbus_export_job_duration_seconds_bucket[1h])))"},
              "s"),
        panel("Rows and bytes exported per second",
              {"rows": "rate(marketbus_export_rows_total[5m])", "bytes": "rate(marketbus_export_bytes_total[5m])"}),
        panel("Orchestrator up, dead letters",
              {"up": 'up{service="export_orchestrator"}',
               "dead-lettered": 'sum(rate(marketbus_dead_letters_total{service="export_orchestrator"}[5m]))'}),
    ])


def orders() -> dict[str, Any]:
    return dashboard("marketbus-orders", "marketbus / order router", "Order commands to Digitex", [
        panel("Commands per second, by kind and outcome",
              {"{{kind}} {{outcome}}": "sum by (kind, outcome) (rate(marketbus_router_commands_total[1m]))"}, "ops"),
        panel("Digitex request latency p50 / p99",
              {"p50 {{endpoint}}": "histogram_quantile(0.5, sum by (endpoint, le) "
                                   "(rate(marketbus_router_exchange_request_seconds_bucket[5m])))",
               "p99 {{endpoint}}": "histogram_quantile(0.99, sum by (endpoint, le) "
                                   "(rate(marketbus_router_exchange_request_seconds_bucket[5m])))"}, "s"),
        panel("Open orders", {"open": "marketbus_router_open_orders"}),
        panel("Order transitions per second, by state",
              {"{{state}}": "sum by (state) (rate(marketbus_router_order_transitions_total[1m]))"}, "ops"),
        panel("Kill switch", {"halted": "marketbus_router_halted"}, kind="stat"),
        panel("Command queue (ORDERS_CMD durable)",
              {"pending {{consumer}}": 'marketbus_jetstream_consumer_pending{stream="ORDERS_CMD"}',
               "ack pending {{consumer}}": 'marketbus_jetstream_consumer_ack_pending{stream="ORDERS_CMD"}'}),
    ])


def bus() -> dict[str, Any]:
    return dashboard("marketbus-bus", "marketbus / bus", "Services, JetStream streams and consumers, storage", [
        panel("Services up", {"{{service}}": 'up{job="marketbus"}'}, kind="stat"),
        panel("Consumer lag per durable", {"{{stream}} {{consumer}}": "marketbus_jetstream_consumer_pending"}),
        panel("Stream messages", {"{{stream}}": "marketbus_jetstream_stream_messages"}),
        panel("Stream bytes", {"{{stream}}": "marketbus_jetstream_stream_bytes"}, "bytes"),
        panel("JetStream storage used", {"used": "marketbus_jetstream_storage_bytes",
                                         "limit": "marketbus_jetstream_storage_limit_bytes"}, "bytes"),
        panel("Disk free", {"{{path}}": "marketbus_disk_free_bytes / marketbus_disk_total_bytes"}, "percentunit"),
        panel("Publish latency p99 (to the JetStream ack), by service",
              {"{{service}}": "histogram_quantile(0.99, sum by (service, le) "
                              "(rate(marketbus_publish_latency_seconds_bucket[5m])))"}, "s"),
        panel("Dead letters per second", {"{{service}} {{reason}}": "sum by (service, reason) "
                                                                   "(rate(marketbus_dead_letters_total[5m]))"}, "ops"),
    ])


DASHBOARDS = {"feeds": feeds, "history_writer": history, "exports": exports, "order_router": orders, "bus": bus}


def render() -> dict[str, str]:
    return {f"{name}.json": json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    files = render()
    if "--check" in argv:
        stale = [n for n, text in files.items() if not (OUT / n).exists() or (OUT / n).read_text() != text]
        if stale:
            print(f"out of date: {', '.join(stale)}; run tools/grafana_dashboards.py", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
