"""What every vendor ingestor shares (the app part of client / normalize / app).

An ingestor subclasses :class:`Ingestor`, sets ``source``, and in ``on_start`` spawns loops that
read from its vendor client, call its pure normalize functions, and hand the events to
:meth:`Ingestor.emit` / :meth:`Ingestor.emit_batch`. Malformed vendor payloads go to
:meth:`Ingestor.malformed` (counted, logged, dead-lettered; never a crash). Replays requested on
``replay.<source>`` call :meth:`Ingestor.replay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol

import nats.errors
from nats.aio.client import Client as NatsClient

from marketbus.contracts import codec, subjects
from marketbus.contracts.base import NO_VENUE, MarketEvent
from marketbus.contracts.jobs import ReplayReply, ReplayRequest
from marketbus.contracts.market import MARKET_TYPES
from marketbus.contracts.status import FeedState

from .metrics import IngestMetrics
from .publisher import JetStreamPublisher, PublishError
from .service import FeedTracker, Service, ServiceSettings

# What a loop gets when the bus, not the vendor, fails: it keeps its vendor state, reports
# "blocked", and re-publishes from its last committed cursor once the bus works again.
BUS_ERRORS: tuple[type[BaseException], ...] = (PublishError, nats.errors.Error, asyncio.TimeoutError)


class IngestSettings(ServiceSettings, kw_only=True):
    batch_max_events: int = 5000  # events per batch envelope (replays, backfills, vendor pages)


async def _raw_body(msg: Any) -> bytes:
    body: bytes = msg.body
    return body


class ReplayUnsupported(Exception):
    """Raised by :meth:`Ingestor.replay` when the vendor cannot replay what was asked."""


class IngestHost(Protocol):
    """What an ingestor's parts (catalog, live, backfill, session) may use of the ingestor that
    owns them: publishing, feed status, the clock, logs and metrics. A part types its owner with
    this protocol (each ingestor extends it in its ``parts`` module with its vendor's client,
    settings and cursors), so the part never imports the ingestor that imports it. Read-only
    properties: an implementation may narrow the types (e.g. its own settings class)."""

    @property
    def source(self) -> str: ...
    @property
    def settings(self) -> IngestSettings: ...
    @property
    def log(self) -> logging.Logger: ...
    @property
    def metrics(self) -> IngestMetrics: ...
    @property
    def feeds(self) -> FeedTracker: ...
    @property
    def publisher(self) -> JetStreamPublisher | None: ...
    @property
    def nc(self) -> NatsClient: ...

    def now_ns(self) -> int: ...
    async def emit(self, event: MarketEvent) -> Any: ...
    async def emit_batch(self, events: Sequence[MarketEvent], replay: bool | None = None,
                         acks: list[Any] | None = None) -> int: ...
    async def flush(self) -> None: ...
    async def publish_feed_status(
        self, source: str, state: FeedState, *, venue: str = NO_VENUE, symbol: str = NO_VENUE,
        kind: str | None = None, detail: str | None = None, gap: tuple[int, int] | None = None,
        feed: str | None = None,
    ) -> None: ...
    async def malformed(self, channel: str, payload: bytes | str, reason: str) -> None: ...
    async def session_flowing(self, flowing: bool) -> None: ...


class Ingestor(Service):
    """The service name is ``ingest_<source>`` unless a subclass sets ``name``. A subclass builds
    its parts (session, catalog, live, backfill) in :meth:`build`."""

    source: ClassVar[str] = "vendor"
    # True when the ingestor re-publishes what the publisher gave up on (FinX does): no gap to report
    resends_failed_publishes: ClassVar[bool] = False
    metrics_cls = IngestMetrics
    metrics: IngestMetrics
    settings: IngestSettings

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "source" in cls.__dict__ and "name" not in cls.__dict__:
            cls.name = f"ingest_{cls.source}"

    def setup(self) -> None:
        self._metric_children: dict[type, tuple[Any, Any, bool]] = {}
        self.publishing_blocked: str | None = None
        self.settings.validate()  # load_settings did; settings handed in as an object did not

        # decoder: the raw body (FastStream's own JSON decoding raises on hostile input, no reply)
        @self.broker.subscriber(subjects.replay(self.source), queue=f"replay-{self.source}", decoder=_raw_body)
        async def on_replay(body: bytes) -> bytes:
            return codec.encode(await self._handle_replay(body))

        self.build()

    def build(self) -> None:
        """Construct the vendor parts (clients, stores, loops' owners); settings are valid here."""

    async def start(self) -> Ingestor:
        await super().start()
        self.spawn(self._watch_publishing(), "publishing-watch")
        return self

    async def session_flowing(self, flowing: bool) -> None:
        """The vendor session delivers data (connected) or not (down, in maintenance): the
        feeds' collection periods follow (:meth:`marketbus.vendor.feeds.FeedControl.set_flowing`)."""
        control = getattr(self, "feed_control", None)
        if control is not None:
            await control.set_flowing(flowing)

    async def stop(self) -> None:
        # first, while NATS is up: the feeds' collection periods close (marketbus.vendor.feeds)
        control = getattr(self, "feed_control", None)
        if control is not None:
            with contextlib.suppress(Exception):
                await control.stop()
        await super().stop()

    async def _watch_publishing(self, every_s: float = 0.5) -> None:
        """Report publishing that is stuck for a second or more (no stream leader, NATS down) as
        the ``<source>/publishing`` feed's state ``blocked`` and a health problem; ``connected``
        again once acks flow. Messages given up on meanwhile (an outage longer than
        ``publish_retry_s``) are reported as a ``gap`` of that feed, unless the ingestor re-sends
        them itself (``resends_failed_publishes``)."""
        assert self.publisher is not None
        publisher = self.publisher
        feed: dict[str, Any] = dict(venue=NO_VENUE, symbol=NO_VENUE, feed=f"{self.source}/publishing")
        seen: str | None = None
        since_ns, failed_before = 0, 0
        while True:
            await asyncio.sleep(every_s)
            reason = publisher.blocked
            if reason is None and not self.nats_connected:
                reason = "NATS disconnected"
            if reason is None and not self.publishing_blocked:  # all well: the reference point
                since_ns = time.time_ns() - int(publisher.ack_timeout * 1e9)  # what was in flight
                failed_before = publisher.failed
            elif reason and seen and not self.publishing_blocked:  # twice in a row: not a blip
                self.publishing_blocked = reason
                self.unhealthy("publishing", reason)
                with contextlib.suppress(Exception):
                    await self.publish_feed_status(self.source, "blocked", detail=reason, **feed)
            elif reason is None and self.publishing_blocked:
                self.publishing_blocked = None
                self.healthy("publishing")
                lost = publisher.failed - failed_before
                with contextlib.suppress(Exception):
                    if lost and not self.resends_failed_publishes:
                        await self.publish_feed_status(
                            self.source, "gap", gap=(since_ns, time.time_ns()), **feed,
                            detail=f"{lost} messages could not be published (bus down > {publisher.retry_for_s:.0f}s)")
                    await self.publish_feed_status(self.source, "connected", detail="publishing again", **feed)
            seen = reason

    async def _handle_replay(self, body: bytes) -> ReplayReply:
        try:
            request = codec.decode_as(body, ReplayRequest)
        except Exception as exc:
            return ReplayReply(request_id="", accepted=False, reason=f"bad replay request: {exc}"[:1000])
        if request.source != self.source:
            return ReplayReply(
                request_id=request.request_id, accepted=False, reason=f"this is the {self.source} ingestor"
            )
        if request.end_ns <= request.start_ns:
            return ReplayReply(request_id=request.request_id, accepted=False, reason="end_ns must be after start_ns")
        try:
            count = await self.replay(request)
        except ReplayUnsupported as exc:
            return ReplayReply(request_id=request.request_id, accepted=False, reason=str(exc))
        except Exception as exc:
            self.log.warning("replay %s failed: %r", request.request_id, exc)
            return ReplayReply(request_id=request.request_id, accepted=False, reason=f"replay failed: {exc!r}")
        return ReplayReply(request_id=request.request_id, accepted=True, events=count)

    async def replay(self, request: ReplayRequest) -> int:
        """Fetch ``request``'s range from the vendor and publish it (``replay=True``, batched with
        :meth:`emit_batch`); return the number of events published. Wait for the acks
        (``await self.flush()``) before returning, so the caller can rely on them being stored."""
        raise ReplayUnsupported(f"{self.source} cannot replay {request.kind}")

    # --- publishing ---------------------------------------------------------------------------
    def _account(self, event: MarketEvent, n: int = 1) -> None:
        cls = type(event)
        children = self._metric_children.get(cls)
        if children is None:  # labels() costs more than the increment: resolve once per kind
            kind = cls.__struct_config__.tag
            children = self._metric_children[cls] = (
                self.metrics.events_out.labels(self.source, kind), self.metrics.event_lag.labels(self.source, kind),
                cls in MARKET_TYPES,
            )
        children[0].inc(n)
        if children[2]:  # market data: lag and a feed row; reference data is neither
            children[1].observe(max(0.0, (event.ts_recv - event.ts_event) / 1e9))
            self.feeds.count(f"{event.source}/{event.venue}/{event.symbol}", n, event.ts_recv)

    async def emit(self, event: MarketEvent) -> Any:
        """Publish one event (JetStream, Nats-Msg-Id = event id); returns the ack future."""
        assert self.publisher is not None
        future = await self.publisher.publish_event(event)
        self._account(event)
        return future

    async def emit_group(self, events: Sequence[MarketEvent]) -> Any:
        """Publish events as single messages (one per event) acknowledged as a group: the fast
        path for one message per event. Returns the group's ack future (``flush()`` waits too)."""
        assert self.publisher is not None
        if not events:
            return None
        future = await self.publisher.publish_group(list(events))
        groups: dict[tuple[type, str, str], list[MarketEvent]] = {}
        for event in events:
            groups.setdefault((type(event), event.venue, event.symbol), []).append(event)
        for group in groups.values():  # metrics once per instrument: the count and the newest lag
            self._account(group[-1], len(group))
        return future

    async def emit_batch(self, events: Sequence[MarketEvent], replay: bool | None = None,
                         acks: list[Any] | None = None) -> int:
        """Publish events as batch envelopes, grouped by kind and instrument (order kept). The
        same events give the same envelopes (ids): re-sending them after a failure is safe.
        ``acks`` (optional) collects each envelope's ack future."""
        assert self.publisher is not None
        groups: dict[tuple[type, str, str], list[MarketEvent]] = {}
        for event in events:
            groups.setdefault((type(event), event.venue, event.symbol), []).append(event)
        limit = self.settings.batch_max_events
        for group in groups.values():
            for i in range(0, len(group), limit):
                chunk = group[i:i + limit]
                future = await self.publisher.publish_batch(chunk, replay)
                if acks is not None:
                    acks.append(future)
                self._account(chunk[-1], len(chunk))
        return len(events)

    async def flush(self) -> None:
        assert self.publisher is not None
        await self.publisher.flush()

    async def malformed(self, channel: str, payload: bytes | str, reason: str) -> None:
        """A vendor payload we cannot normalize: counted, logged and dead-lettered with the raw
        payload and the reason. Never raises."""
        self.metrics.malformed.labels(self.source, channel).inc()
        try:
            await self.dead_letter(self.source, reason, payload, subject=channel)
        except Exception as exc:
            self.log.error("could not dead-letter a malformed %s payload: %r", channel, exc)

    @staticmethod
    def now_ns() -> int:
        return time.time_ns()
