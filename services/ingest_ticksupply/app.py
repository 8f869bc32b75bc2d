"""TickSupply ingestor, built from the vendor machinery's parts (:mod:`marketbus.vendor`):

- session: :class:`~.client.TickSupplyClient` (on :class:`~marketbus.vendor.http.VendorHttp`) and
  :class:`~.session.TickSupplySubscriptions` (the datastream of every feed subscribed in the feed's
  state: active, or paused for a paused or removed feed; spans -> feed status);
- feed control (:mod:`marketbus.vendor.feeds`): the datastreams collected are the ``feeds`` KV
  bucket's, seeded once from ``DATASTREAMS`` / ``PAUSED_DATASTREAMS``, changed at runtime
  (``marketbus feed add ticksupply 104``): a feed's export loop starts and stops with it;
- catalog: :class:`~.catalog.TickSupplyCatalog` (exchanges, instruments, datastreams -> ``ref.*``);
- live: :class:`~.live.TickSupplyExports` (one rolling-export loop per datastream) and
  :class:`~.live.ArtifactPublisher` (artifacts -> trades, acked before progress is recorded);
- backfill: :class:`~.backfill.TickSupplyBackfill` (``replay.ticksupply``).

Progress lives in the ``ingest_state`` KV bucket (:mod:`.progress`, a
:class:`~marketbus.vendor.cursor.CursorStore`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec

from marketbus.contracts import errors as codes
from marketbus.contracts.feeds import Feed
from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import BUS_ERRORS, Ingestor
from marketbus.runtime.tasks import cancel_and_wait
from marketbus.vendor.feeds import CatalogUnavailable, FeedControl, Refused, Resolved, Seed
from marketbus.vendor.frames import FrameGuard

from .backfill import KIND_OF_STREAM, TickSupplyBackfill
from .catalog import SUPPORTED_STREAM_TYPES, TickSupplyCatalog
from .client import MalformedReply, RetriesExhausted, TickSupplyClient, TickSupplyError
from .live import MAX_DEAD_LETTER_BYTES, ArtifactPublisher, TickSupplyExports
from .normalize import DatastreamRef, MalformedPayload
from .progress import ProgressStore
from .session import TickSupplySubscriptions
from .settings import TickSupplySettings


class TickSupplyIngestor(Ingestor):
    source: ClassVar[str] = "ticksupply"
    settings_cls = TickSupplySettings
    settings: TickSupplySettings

    def build(self) -> None:
        self.client: TickSupplyClient | None = None
        self.progress: ProgressStore | None = None
        # instrument_event reads a row that is not an object with .get: AttributeError is its "malformed" too
        self.frames = FrameGuard(self, MalformedPayload, AttributeError)
        self.catalog = TickSupplyCatalog(self)
        self.session = TickSupplySubscriptions(self)
        self.exports = TickSupplyExports(self)
        self.artifacts = ArtifactPublisher(self)
        self.backfill = TickSupplyBackfill(self)
        self._ds_tasks: dict[int, asyncio.Task[Any]] = {}
        self.feed_control = FeedControl(self, resolve=self._resolve_feed, subscribe=self._collect,
                                        unsubscribe=self._uncollect)
        self._reconcile_now = asyncio.Event()
        self._reported_feeds: set[str] = set()
        self.ready = asyncio.Event()  # set once subscriptions are reconciled and the export loops run

    @property
    def datastreams(self) -> dict[int, DatastreamRef]:
        return self.catalog.datastreams

    @property
    def subscriptions(self) -> dict[int, dict[str, Any]]:
        return self.session.subscriptions

    @property
    def exports_created(self) -> int:
        return self.exports.exports_created

    # --- lifecycle ------------------------------------------------------------------------------
    async def on_start(self) -> None:
        s = self.settings
        self.client = TickSupplyClient(
            s.base_url, s.api_key, timeout_s=s.request_timeout_s, requests_per_s=s.requests_per_s,
            max_retries=s.max_retries, max_rate_limited_retries=s.max_rate_limited_retries,
            on_error=self._vendor_error,
        )
        kv = await ensure_bucket(self.js, INGEST_STATE, s.stream_replicas)
        self.progress = ProgressStore(kv, s.state_namespace)
        self.spawn(self.catalog.loop(), "catalog")
        self.spawn(self._main_loop(), "main")

    async def on_stop(self) -> None:
        # Stop our loops before closing what they use (the base class then stops the rest).
        await cancel_and_wait([t for t in self._tasks if not t.get_name().endswith(":heartbeat")])
        if self.client is not None:
            await self.client.aclose()

    def _vendor_error(self, kind: str) -> None:
        self.metrics.vendor_errors.labels(self.source, kind).inc()

    def health(self) -> dict[str, Any]:
        return {
            "datastreams": {
                str(k): f"{v.exchange}/{v.instrument}/{v.stream_type}" for k, v in self.datastreams.items()
            },
            "subscriptions": {str(k): v.get("status") for k, v in self.subscriptions.items()},
            "exports_created": self.exports_created,
            "rate_limited": self.client.rate_limited_total if self.client else 0,
            "lag_s": {str(k): round((time.time_ns() - v) / 1e9, 3) for k, v in self.exports.last_end.items()},
        }

    def heartbeat(self) -> Any:
        beat = super().heartbeat()
        counters = {"exports_created": float(self.exports_created),
                    "rate_limited": float(self.client.rate_limited_total if self.client else 0)}
        counters.update({f"lag_s.{k}": round((time.time_ns() - v) / 1e9, 3) for k, v in self.exports.last_end.items()})
        return msgspec.structs.replace(beat, counters=counters)

    @property
    def api(self) -> TickSupplyClient:
        assert self.client is not None
        return self.client

    @property
    def store(self) -> ProgressStore:
        assert self.progress is not None
        return self.progress

    async def guarded(self, what: str, coro_factory: Callable[[], Awaitable[Any]], backoff: Backoff) -> bool:
        """Run one step; vendor/bus errors are logged (and malformed replies dead-lettered), never fatal."""
        try:
            await coro_factory()
            backoff.reset()
            return True
        except asyncio.CancelledError:
            raise
        except MalformedReply as exc:
            await self.frames.reject(exc.url.split("?")[0], exc.payload[:MAX_DEAD_LETTER_BYTES], exc.reason)
        except (RetriesExhausted, TickSupplyError) as exc:
            self.log.warning("%s failed: %s", what, exc)
            if isinstance(exc, RetriesExhausted):
                await self.feed_status("disconnected", detail=f"{what}: {exc}")
        except BUS_ERRORS as exc:  # NATS down or no stream leader: one line (the health says more)
            self.log.warning("%s failed: the bus: %r", what, exc)
        except Exception as exc:
            self.log.warning("%s failed: %r", what, exc, exc_info=exc)
        await backoff.sleep()
        return False

    async def feed_status(self, state: Any, ds: DatastreamRef | None = None, **kw: Any) -> None:
        feed = f"{self.source}/{ds.venue}/{ds.symbol}" if ds else f"{self.source}/_/_"
        if feed not in self._reported_feeds:
            # The tracker starts every feed as "disconnected" and only publishes changes; the first
            # state of a feed is news too (e.g. a subscription that is paused from the start).
            self._reported_feeds.add(feed)
            self.feeds.set_state(feed, "stale")
        try:
            if ds is None:
                await self.publish_feed_status(self.source, state, **kw)
                if state in ("connected", "disconnected"):  # the session: the feeds' periods follow
                    await self.session_flowing(state == "connected")
            else:
                await self.publish_feed_status(self.source, state, venue=ds.venue, symbol=ds.symbol,
                                               kind=KIND_OF_STREAM.get(ds.stream_type), **kw)
            self.metrics.feed_state.labels(self.source, f"{self.source}/{ds.venue}/{ds.symbol}" if ds else "api").set(
                1 if state in ("connected", "resynced") else 0)
        except Exception as exc:
            self.log.warning("could not publish feed status: %r", exc)

    # --- main: resolve datastreams, keep subscriptions, run the export loops ---------------------
    async def _main_loop(self) -> None:
        backoff = Backoff(0.5, 30.0)
        seed: dict[int, DatastreamRef] = {}

        async def resolve_seed() -> None:
            seed.update(await self.catalog.resolve_datastreams())

        while not await self.guarded("resolving datastreams", resolve_seed, backoff):
            pass
        paused = set(self.settings.paused_datastreams)
        seeds = [Seed(str(ds_id), paused=ds_id in paused) for ds_id in seed]
        while not await self.guarded("starting feed control", lambda: self.feed_control.start(seeds), backoff):
            pass
        while not await self.guarded("looking up the feeds' datastreams", self._lookup_feeds, backoff):
            pass
        while not await self.guarded("reconciling subscriptions", self.session.reconcile, backoff):
            pass
        await self.feed_status("connected", detail="catalog and subscriptions in sync")
        self.ready.set()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_now.wait(), self.settings.subscription_interval_s)
            self._reconcile_now.clear()
            await self._lookup_feeds()
            await self.guarded("reconciling subscriptions", self.session.reconcile, backoff)

    # --- feed control: the datastreams collected ----------------------------------------------------
    def subscription_targets(self) -> dict[int, tuple[DatastreamRef, str]]:
        """Every feed's datastream and the state its vendor subscription should have."""
        out: dict[int, tuple[DatastreamRef, str]] = {}
        for feed in self.feed_control.feeds.values():
            ds = self.catalog.refs.get(int(feed.instrument))
            if ds is not None:
                out[ds.datastream_id] = (ds, "active" if feed.state == "active" else "paused")
        return out

    async def _lookup_feeds(self) -> None:
        for feed in list(self.feed_control.feeds.values()):
            if feed.state != "removed" and int(feed.instrument) not in self.catalog.refs:
                await self.catalog.lookup(int(feed.instrument))

    async def _resolve_feed(self, instrument: str) -> Resolved | None:
        if not instrument.isdigit() or instrument != str(int(instrument)) or int(instrument) <= 0:
            return None  # a datastream id, as the catalog writes it
        try:
            ds = await self.catalog.lookup(int(instrument))
        except (RetriesExhausted, TickSupplyError, MalformedReply) as exc:
            raise CatalogUnavailable(str(exc)) from None
        if ds is None:
            return None
        if ds.stream_type not in SUPPORTED_STREAM_TYPES:
            raise Refused(codes.BAD_REQUEST, f"datastream {ds.datastream_id} is a {ds.stream_type} stream, "
                          "which this ingestor does not read")
        for feed in self.feed_control.feeds.values():
            twin = self.catalog.refs.get(int(feed.instrument))
            if (
                feed.state != "removed"
                and twin is not None
                and twin.datastream_id != ds.datastream_id
                and (twin.exchange, twin.instrument, twin.stream_type) == (ds.exchange, ds.instrument, ds.stream_type)
            ):
                raise Refused(codes.BAD_REQUEST, f"datastream {ds.datastream_id} ({ds.wire_format}) carries the same "
                              f"{ds.exchange} {ds.instrument} {ds.stream_type} as feed {twin.datastream_id} "
                              f"({twin.wire_format}): it would publish every event twice")
        return Resolved(ds.venue, ds.symbol, KIND_OF_STREAM.get(ds.stream_type),
                        f"{ds.exchange} {ds.instrument} {ds.stream_type} ({ds.wire_format})")

    async def _collect(self, feed: Feed) -> None:
        ds_id = int(feed.instrument)
        ds = self.catalog.refs.get(ds_id) or await self.catalog.lookup(ds_id)
        if ds is None:
            raise ValueError(f"datastream {ds_id} is no longer in the catalog")
        self.catalog.datastreams[ds_id] = ds
        self._ds_tasks[ds_id] = self.spawn(self.exports.loop(ds), f"export-{ds_id}")
        self._reconcile_now.set()  # its subscription active at the vendor

    async def _uncollect(self, feed: Feed) -> None:
        ds_id = int(feed.instrument)
        task = self._ds_tasks.pop(ds_id, None)
        if task is not None:
            await cancel_and_wait([task])
        self.catalog.datastreams.pop(ds_id, None)
        self._reconcile_now.set()  # its subscription paused at the vendor

    async def sync_catalog(self) -> int:
        return await self.catalog.sync()

    async def reconcile_subscriptions(self) -> None:
        await self.session.reconcile()

    async def ingest_once(self, ds: DatastreamRef) -> bool:
        return await self.exports.ingest_once(ds)

    async def publish_artifact(self, ds: DatastreamRef, data: bytes, *, channel: str = "artifact",
                               replay: bool = False, batch_salt: str | None = None) -> int:
        """Parse one artifact and publish its events; returns once every message is acked
        (:class:`~.live.ArtifactPublisher`)."""
        return await self.artifacts.publish(ds, data, channel=channel, replay=replay, batch_salt=batch_salt)

    async def replay(self, request: ReplayRequest) -> int:
        return await self.backfill.replay(request)

    @staticmethod
    async def acked(futures: list[Any]) -> None:
        """Wait for JetStream acks; raises the first publish error. ``asyncio.wait`` (not gather): a
        cancelled caller must not cancel the publisher's own futures."""
        if not futures:
            return
        await asyncio.wait(futures)
        for future in futures:
            if future.exception() is not None:
                raise future.exception()
