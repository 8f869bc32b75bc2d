"""The bus exporter (python -m marketbus.runtime.consumer_lag) against a real nats-server: lag of a
durable, stream sizes, feeds from heartbeats and feed-status events, finished export jobs."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import nats
from nats.js.api import ConsumerConfig, DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from marketbus.contracts import codec
from marketbus.contracts.jobs import ExportJob, ExportRequest, StreamSelector
from marketbus.contracts.status import FeedHealth, FeedStatus, ServiceHeartbeat
from marketbus.runtime.consumer_lag import BusExporter


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_bus_exporter_reports_lag_feeds_and_exports(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    token = uuid.uuid4().hex[:8]
    durable = f"lagging_{token}"
    exporter = BusExporter(nats_url=nats_url, http_port=0, poll_interval_s=0.2, disk_paths=["/"])
    await exporter.start()
    try:
        # a durable nobody consumes, on a subject only this test publishes to: 3 pending
        await js.add_consumer("MD", ConsumerConfig(durable_name=durable, filter_subject=f"md.trade.t{token}.>",
                                                   deliver_policy=DeliverPolicy.ALL))
        for i in range(3):
            await js.publish(f"md.trade.t{token}._.X", b"{}", headers={"Nats-Msg-Id": f"{token}-{i}"})
        now = time.time_ns()
        heartbeat = ServiceHeartbeat(service=f"svc_{token}", instance="i1", state="running", ts=now, started_ts=now,
                                     feeds=[FeedHealth(feed="finx/X/BTC", state="stale", events_total=42,
                                                       events_per_s=1.5, last_event_ts=now - 90 * 10**9)])
        gap = FeedStatus(id=token, service=f"svc_{token}", source="finx", venue="X", symbol="BTC", state="gap",
                         gap_start=1, gap_end=2, ts=now)
        request = ExportRequest(idempotency_key=token, selector=StreamSelector(kind="trade"), start_ns=0, end_ns=1)
        job = ExportJob(job_id=token, request=request, state="succeeded", rows=1200, bytes=4096,
                        created_ts=now - 3 * 10**9, updated_ts=now)
        await nc.publish(f"status.svc_{token}.heartbeat", codec.encode(heartbeat))
        await nc.publish(f"status.svc_{token}.feed.finx.X.BTC", codec.encode(gap))
        for _ in range(2):  # progress events repeat the final state: counted once
            await nc.publish(f"export.status.{token}", codec.encode(job))
        await nc.flush()
        lag = ("marketbus_jetstream_consumer_pending", frozenset({("stream", "MD"), ("consumer", durable)}))
        md_messages = ("marketbus_jetstream_stream_messages", frozenset({("stream", "MD")}))
        samples: dict = {}
        async with httpx.AsyncClient() as client:
            for _ in range(50):
                samples = _samples((await client.get(f"{exporter.http_url}/metrics")).text)
                # one poll reads the streams, then the consumers: wait for a poll after the publishes
                if samples.get(lag) == 3 and samples.get(md_messages, 0) >= 3:
                    break
                await asyncio.sleep(0.1)
            health = (await client.get(f"{exporter.http_url}/healthz")).status_code
    finally:
        await exporter.stop()
        await nc.drain()
    feed = frozenset({("service", f"svc_{token}"), ("feed", "finx/X/BTC")})
    assert health == 200
    assert samples[lag] == 3
    assert samples[md_messages] >= 3
    assert samples[("marketbus_feed_state", feed | {("state", "stale")})] == 1
    assert samples[("marketbus_feed_state", feed | {("state", "connected")})] == 0
    assert samples[("marketbus_feed_events_per_second", feed)] == 1.5
    assert 89 < samples[("marketbus_feed_last_event_age_seconds", feed)] < 120
    gaps = ("marketbus_feed_status_events_total",
            frozenset({("service", f"svc_{token}"), ("source", "finx"), ("state", "gap")}))
    assert samples[gaps] == 1
    assert samples[("marketbus_export_jobs_finished_total", frozenset({("state", "succeeded")}))] == 1
    assert samples[("marketbus_export_rows_total", frozenset())] == 1200
    assert samples[("marketbus_disk_total_bytes", frozenset({("path", "/")}))] > 0


async def test_bus_exporter_re_exports_nats_servers_monitoring_endpoint(tmp_path) -> None:
    """nats-server's /varz (JSON) becomes Prometheus gauges; an endpoint that does not answer is up=0."""
    from prometheus_client import CollectorRegistry

    from marketbus.contracts.streams import ensure_all
    from marketbus.runtime.consumer_lag import ServerVarz
    from marketbus.runtime.http import free_port
    from marketbus.runtime.natsserver import NatsServer

    monitor = free_port()
    server = NatsServer(data_dir=tmp_path / "nats", port=free_port(), monitor_port=monitor).start()
    nc = await nats.connect(server.url)
    try:
        await ensure_all(nc.jetstream())
        exporter = BusExporter(nats_url=server.url, http_port=0, poll_interval_s=0.2,
                               nats_monitor_url=f"http://127.0.0.1:{monitor}")
        await exporter.start()
        try:
            async with httpx.AsyncClient() as client:
                samples = _samples((await client.get(f"{exporter.http_url}/metrics")).text)
        finally:
            await exporter.stop()
    finally:
        await nc.drain()
        server.cleanup()
    assert samples[("marketbus_nats_server_up", frozenset())] == 1
    assert samples[("marketbus_nats_server_connections", frozenset())] >= 2  # this test and the exporter
    assert samples[("marketbus_nats_server_memory_bytes", frozenset())] > 0
    assert samples[("marketbus_nats_server_in_messages", frozenset())] > 0

    registry = CollectorRegistry()
    await ServerVarz(f"http://127.0.0.1:{free_port()}", registry).poll()  # nobody listens there
    assert registry.get_sample_value("marketbus_nats_server_up") == 0
