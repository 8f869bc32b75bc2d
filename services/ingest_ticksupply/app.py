"""TickSupply ingestor, built from the vendor machinery's parts (:mod:`marketbus.vendor`):

- session: :class:`~.client.TickSupplyClient` (on :class:`~marketbus.vendor.http.VendorHttp`) and
  :class:`~.session.TickSupplySubscriptions` (every configured datastream subscribed in the
  desired state; spans -> feed status);
- catalog: :class:`~.catalog.TickSupplyCatalog` (exchanges, instruments, datastreams -> ``ref.*``);
- live: :class:`~.live.TickSupplyExports` (one rolling-export loop per datastream) and
  :class:`~.live.ArtifactPublisher` (artifacts -> trades, acked before progress is recorded);
- backfill: :class:`~.backfill.TickSupplyBackfill` (``replay.ticksupply``).

Progress lives in the ``ingest_state`` KV bucket (:mod:`.progress`, a
:class:`~marketbus.vendor.cursor.CursorStore`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec

from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import BUS_ERRORS, Ingestor
from marketbus.runtime.tasks import cancel_and_wait
from marketbus.vendor.frames import FrameGuard

from .backfill import KIND_OF_STREAM, TickSupplyBackfill
from .catalog import TickSupplyCatalog
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
            "datastreams": {str(k): f"{v.exchange}/{v.instrument}/{v.stream_type}" for k, v in self.datastreams.items()},
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
        while not await self.guarded("resolving datastreams", self.catalog.resolve_datastreams, backoff):
            pass
        while not await self.guarded("reconciling subscriptions", self.session.reconcile, backoff):
            pass
        await self.feed_status("connected", detail="catalog and subscriptions in sync")
        for ds_id, ds in self.datastreams.items():
            self._ds_tasks[ds_id] = self.spawn(self.exports.loop(ds), f"export-{ds_id}")
        self.ready.set()
        while True:
            await asyncio.sleep(self.settings.subscription_interval_s)
            await self.guarded("reconciling subscriptions", self.session.reconcile, backoff)

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
