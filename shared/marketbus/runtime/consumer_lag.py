"""JetStream consumer lag per durable, stream sizes and the feeds' health, as Prometheus metrics.

nats-server's monitoring endpoint (``/varz``, ``/jsz`` on port 8222) speaks JSON, which
Prometheus cannot scrape, and the official exporter is a separate program; this module reads the
same facts through the JetStream API and the bus itself:

- :class:`ConsumerLagCollector` polls every stream and consumer: ``marketbus_jetstream_consumer_pending``
  (messages the durable has not been delivered yet: the lag), ``..._ack_pending``,
  ``..._redelivered``, ``marketbus_jetstream_stream_messages`` / ``_bytes`` and the account's
  storage use and limit (the JetStream "disk").
- :class:`ServerVarz` reads nats-server's own monitoring endpoint (``<url>/varz``, JSON) when
  ``MARKETBUS_BUS_EXPORTER_NATS_MONITOR_URL`` is set (compose: ``http://nats:8222``) and re-exports
  it: ``marketbus_nats_server_up``, connections, slow consumers, memory, messages in/out.
- :class:`BusWatch` listens to ``status.>`` and ``export.status.>``: every ingestor's feeds from its
  heartbeats (events/s, age of the last event, state), the feed-status events (gap, stale...)
  counted, and finished export jobs.

A service can run a collector on its own registry (``ConsumerLagCollector(js, registry).start()``);
``python -m marketbus.runtime.consumer_lag`` runs both as a small exporter (``/metrics``,
``/healthz`` on ``MARKETBUS_BUS_EXPORTER_HTTP_PORT``, 9108), which deploy/monitoring scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Iterable
from typing import Any, ClassVar, get_args

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from marketbus.contracts import codec, subjects
from marketbus.contracts.jobs import ExportJob
from marketbus.contracts.status import FeedState, FeedStatus, ServiceHeartbeat

from .service import Service, ServiceSettings

log = logging.getLogger(__name__)

FEED_STATES: tuple[str, ...] = get_args(FeedState)
EPHEMERAL_LABEL = "(ephemeral)"  # the consumer label of every ephemeral consumer of a stream, summed
FINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})


class _LabelledGauge:
    """A gauge whose label sets are replaced as a whole at each poll (a deleted consumer's series
    disappears instead of keeping its last value)."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self.current: set[tuple[str, ...]] = set()

    def replace(self, values: dict[tuple[str, ...], float]) -> None:
        for labels, value in values.items():
            self.gauge.labels(*labels).set(value)
        for gone in self.current - values.keys():
            with contextlib.suppress(KeyError):
                self.gauge.remove(*gone)
        self.current = set(values)


class ConsumerLagCollector:
    """Polls JetStream every ``interval_s`` and updates the gauges of ``registry``."""

    def __init__(self, js: JetStreamContext, registry: CollectorRegistry, interval_s: float = 5.0,
                 disk_paths: Iterable[str] = ()) -> None:
        self.js = js
        self.interval_s = interval_s
        self.disk_paths = list(disk_paths)
        r = registry
        by_consumer = ["stream", "consumer"]
        self.pending = _LabelledGauge(Gauge(
            "marketbus_jetstream_consumer_pending", "messages of the stream not yet delivered to the durable (its lag)",
            by_consumer, registry=r))
        self.ack_pending = _LabelledGauge(
            Gauge(
                "marketbus_jetstream_consumer_ack_pending",
                "messages delivered, not yet acknowledged",
                by_consumer,
                registry=r,
            )
        )
        self.redelivered = _LabelledGauge(Gauge(
            "marketbus_jetstream_consumer_redelivered", "messages delivered more than once, not yet acknowledged",
            by_consumer, registry=r))
        self.waiting = _LabelledGauge(Gauge(
            "marketbus_jetstream_consumer_waiting_pulls", "pull requests waiting (0 with lag: nobody consumes)",
            by_consumer, registry=r))
        self.messages = _LabelledGauge(Gauge(
            "marketbus_jetstream_stream_messages", "messages stored in the stream", ["stream"], registry=r))
        self.bytes = _LabelledGauge(Gauge(
            "marketbus_jetstream_stream_bytes", "bytes stored in the stream", ["stream"], registry=r))
        self.storage = Gauge("marketbus_jetstream_storage_bytes", "file storage used by JetStream (the account)",
                             registry=r)
        self.storage_limit = Gauge("marketbus_jetstream_storage_limit_bytes",
                                   "the account's file storage limit (-1: the server's)", registry=r)
        self.disk_free = Gauge("marketbus_disk_free_bytes", "free space of a data directory's file system", ["path"],
                               registry=r)
        self.disk_total = Gauge("marketbus_disk_total_bytes", "size of a data directory's file system", ["path"],
                                registry=r)
        self.poll_errors = Counter("marketbus_jetstream_poll_errors", "failed JetStream info polls", registry=r)
        self.last_poll = Gauge("marketbus_jetstream_last_poll_timestamp_seconds", "time of the last successful poll",
                               registry=r)
        self._task: asyncio.Task[None] | None = None

    async def poll(self) -> None:
        """One round: every stream, every consumer, the account, the disks."""
        streams = await self.js.streams_info()
        pending: dict[tuple[str, ...], float] = {}
        ack_pending: dict[tuple[str, ...], float] = {}
        redelivered: dict[tuple[str, ...], float] = {}
        waiting: dict[tuple[str, ...], float] = {}
        for stream in streams:
            name = stream.config.name or ""
            for consumer in await self.js.consumers_info(name):
                # durables by name; ephemerals (watches, ordered consumers) summed under one label:
                # their random names would be an unbounded label set, and a name lets whoever
                # may create consumers on the stream update that consumer (create-or-update)
                durable = consumer.config.durable_name if consumer.config else None
                key = (name, durable or EPHEMERAL_LABEL)
                pending[key] = pending.get(key, 0) + (consumer.num_pending or 0)
                ack_pending[key] = ack_pending.get(key, 0) + (consumer.num_ack_pending or 0)
                redelivered[key] = redelivered.get(key, 0) + (consumer.num_redelivered or 0)
                waiting[key] = waiting.get(key, 0) + (consumer.num_waiting or 0)
        self.pending.replace(pending)
        self.ack_pending.replace(ack_pending)
        self.redelivered.replace(redelivered)
        self.waiting.replace(waiting)
        self.messages.replace({(s.config.name or "",): s.state.messages for s in streams})
        self.bytes.replace({(s.config.name or "",): s.state.bytes for s in streams})
        account = await self.js.account_info()
        self.storage.set(account.storage)
        self.storage_limit.set(account.limits.max_storage)
        for path in self.disk_paths:
            with contextlib.suppress(OSError):
                usage = shutil.disk_usage(path)
                self.disk_free.labels(path).set(usage.free)
                self.disk_total.labels(path).set(usage.total)
        self.last_poll.set(time.time())

    async def run(self) -> None:
        while True:
            try:
                await self.poll()
            except Exception as exc:
                self.poll_errors.inc()
                log.warning("JetStream poll failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="consumer-lag")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class BusWatch:
    """What the bus tells about feeds and exports: heartbeats (per feed rate, last event, state),
    feed-status events (``gap``, ``stale``... counted) and finished export jobs (by state, rows,
    bytes, duration). Core NATS subscriptions to ``status.>`` and ``export.status.>``."""

    def __init__(self, nc: NatsClient, registry: CollectorRegistry) -> None:
        self.nc = nc
        r = registry
        feed = ["service", "feed"]
        self.rate = Gauge("marketbus_feed_events_per_second", "a feed's event rate (from heartbeats)", feed, registry=r)
        self.age = Gauge("marketbus_feed_last_event_age_seconds", "time since a feed's last event", feed, registry=r)
        self.events = Gauge("marketbus_feed_events", "events of a feed since its service started", feed, registry=r)
        self.state = Gauge("marketbus_feed_state", "1 for a feed's current state", [*feed, "state"], registry=r)
        self.heartbeat = Gauge("marketbus_service_last_heartbeat_timestamp_seconds", "last heartbeat of an instance",
                               ["service", "instance", "state"], registry=r)
        self.status_events = Counter("marketbus_feed_status_events", "feed-status events (gap, stale, resynced...)",
                                     ["service", "source", "state"], registry=r)
        self.undecodable = Counter("marketbus_bus_watch_undecodable", "status messages not understood", registry=r)
        self.exports = Counter("marketbus_export_jobs_finished", "export jobs that reached a final state", ["state"],
                               registry=r)
        self.export_rows = Counter("marketbus_export_rows", "rows written by succeeded export jobs", registry=r)
        self.export_bytes = Counter("marketbus_export_bytes", "bytes written by succeeded export jobs", registry=r)
        self.export_seconds = Histogram("marketbus_export_job_duration_seconds", "creation to final state",
                                        buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600), registry=r)
        self._finished: dict[str, None] = {}  # job ids already counted (progress events repeat the state)
        self._subs: list[Any] = []
        self._last_event_ts: dict[tuple[str, str], int | None] = {}
        self._heartbeat_states: dict[tuple[str, str], str] = {}

    async def start(self) -> None:
        self._subs = [await self.nc.subscribe(subject, cb=self._on_message)
                      for subject in ("status.>", "export.status.>")]

    async def stop(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = codec.decode(msg.data, codec.schema_version_of(msg.headers))
        except Exception:
            self.undecodable.inc()
            return
        if isinstance(event, (ServiceHeartbeat, FeedStatus)) and not subjects.published_by(msg.subject, event.service):
            self.undecodable.inc()  # another service's name on this identity's subject: a forgery
            return
        if isinstance(event, ServiceHeartbeat):
            self._on_heartbeat(event)
        elif isinstance(event, FeedStatus):
            self.status_events.labels(event.service, event.source, event.state).inc()
        elif isinstance(event, ExportJob) and event.state in FINAL_JOB_STATES:
            self._on_finished_job(event)

    def _on_finished_job(self, job: ExportJob) -> None:
        if job.job_id in self._finished:
            return
        self._finished[job.job_id] = None
        if len(self._finished) > 10_000:  # oldest first: dicts keep insertion order
            del self._finished[next(iter(self._finished))]
        self.exports.labels(job.state).inc()
        self.export_seconds.observe(max(0, job.updated_ts - job.created_ts) / 1e9)
        if job.state == "succeeded":
            self.export_rows.inc(job.rows)
            self.export_bytes.inc(job.bytes)

    def _on_heartbeat(self, hb: ServiceHeartbeat) -> None:
        key = (hb.service, hb.instance)
        previous = self._heartbeat_states.get(key)
        if previous is not None and previous != hb.state:
            with contextlib.suppress(KeyError):
                self.heartbeat.remove(hb.service, hb.instance, previous)
        self._heartbeat_states[key] = hb.state
        self.heartbeat.labels(hb.service, hb.instance, hb.state).set(hb.ts / 1e9)
        for feed in hb.feeds:
            self.rate.labels(hb.service, feed.feed).set(feed.events_per_s)
            self.events.labels(hb.service, feed.feed).set(feed.events_total)
            self._last_event_ts[(hb.service, feed.feed)] = feed.last_event_ts
            for state in FEED_STATES:
                self.state.labels(hb.service, feed.feed, state).set(1 if state == feed.state else 0)
        self.refresh_ages()

    def refresh_ages(self) -> None:
        now = time.time_ns()
        for (service, feed), ts in self._last_event_ts.items():
            self.age.labels(service, feed).set((now - ts) / 1e9 if ts else float("inf"))


# -- the exporter: python -m marketbus.runtime.consumer_lag ----------------------------------------


class ServerVarz:
    """nats-server's monitoring endpoint (``/varz``: JSON Prometheus cannot scrape) as gauges.
    ``marketbus_nats_server_up`` is 0 while the endpoint does not answer; the other gauges keep
    their last values then."""

    FIELDS: ClassVar[dict[str, tuple[str, str]]] = {
        "connections": ("marketbus_nats_server_connections", "client connections (varz.connections)"),
        "slow_consumers": ("marketbus_nats_server_slow_consumers", "clients too slow to read what they get"),
        "mem": ("marketbus_nats_server_memory_bytes", "resident memory of nats-server (varz.mem)"),
        "in_msgs": ("marketbus_nats_server_in_messages", "messages received since the server started"),
        "out_msgs": ("marketbus_nats_server_out_messages", "messages sent since the server started"),
        "subscriptions": ("marketbus_nats_server_subscriptions", "subscriptions (varz.subscriptions)"),
    }

    def __init__(self, url: str, registry: CollectorRegistry) -> None:
        self.url = url.rstrip("/") + "/varz"
        self.up = Gauge("marketbus_nats_server_up", "1 when nats-server's monitoring endpoint answered the last poll",
                        registry=registry)
        self.gauges = {key: Gauge(name, doc, registry=registry) for key, (name, doc) in self.FIELDS.items()}

    async def poll(self) -> None:
        import httpx  # only when configured

        try:
            async with httpx.AsyncClient(timeout=3.0) as client:
                response = await client.get(self.url)
                response.raise_for_status()
                varz = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("nats-server monitoring endpoint %s: %r", self.url, exc)
            self.up.set(0)
            return
        for key, gauge in self.gauges.items():
            if isinstance(varz.get(key), int | float):
                gauge.set(varz[key])
        self.up.set(1)


class BusExporterSettings(ServiceSettings, kw_only=True):
    env_prefix: ClassVar[str] = "MARKETBUS_BUS_EXPORTER_"
    http_port: int = 9108  # /metrics of the bus (README, Monitoring); 0 = any free
    poll_interval_s: float = 5.0
    disk_paths: list[str] = []  # data directories whose free space to report (the nats store...)
    nats_monitor_url: str = ""  # nats-server's monitoring endpoint (http://nats:8222); empty = not read


class BusExporter(Service):
    """The bus seen from outside any service: consumer lag, stream sizes, storage, feeds."""

    name: ClassVar[str] = "bus_exporter"
    settings_cls: ClassVar[type[ServiceSettings]] = BusExporterSettings
    settings: BusExporterSettings

    async def on_start(self) -> None:
        registry = self.metrics.registry
        self.lag = ConsumerLagCollector(self.js, registry, self.settings.poll_interval_s, self.settings.disk_paths)
        await self.lag.poll()  # the first values before the first scrape
        self.spawn(self.lag.run(), "consumer-lag")
        self.bus_watch = BusWatch(self.nc, registry)
        await self.bus_watch.start()
        self.spawn(self._refresh_ages(), "feed-ages")
        if self.settings.nats_monitor_url:
            self.varz = ServerVarz(self.settings.nats_monitor_url, registry)
            await self.varz.poll()
            self.spawn(self._poll_varz(), "nats-varz")

    async def _poll_varz(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            await self.varz.poll()

    async def _refresh_ages(self) -> None:
        while True:  # a feed whose heartbeats stopped keeps ageing
            await asyncio.sleep(self.settings.poll_interval_s)
            self.bus_watch.refresh_ages()

    async def on_stop(self) -> None:
        await self.bus_watch.stop()


if __name__ == "__main__":
    BusExporter.main()
