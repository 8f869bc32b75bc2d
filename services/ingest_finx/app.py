"""The FinX ingestor, built from the vendor machinery's parts (:mod:`marketbus.vendor`):

- session: :class:`~.client.TickPlantClient` (the TickPlant websocket in strict request/reply
  lock-step) and :class:`~.session.FinxSession` (connect with back-off, re-send after a publishing
  failure, the session loop);
- catalog: :class:`~.catalog.FinxCatalog` (``referenceData`` of the configured tickers ->
  ``ref.currency.finx._.<TICKER>``, the configured pairs -> ``ref.instrument.finx._.<BASE-QUOTE>``);
- live: :class:`~.live.FinxLive` (``tickSnap`` polled per pair -> ``md.tick.finx.<EXCHANGE>.<BASE-QUOTE>``;
  an unchanged snap is not a new event);
- backfill: :class:`~.backfill.FinxBackfill` (``tickHistory`` pages from a cursor as batch envelopes,
  ``replay=True``; the cursor saved once acked; ``replay.finx``).

Feed control (:mod:`marketbus.vendor.feeds`): the pairs collected are the ``feeds`` KV bucket's,
seeded once from ``PAIRS``, changed at runtime (``marketbus feed add finx ETH:USD``, validated
against FinX's ``observations/pairs``): a pair's snaps and history pages start and stop with its
feed (the one session serves them all in turn).

Cursors live in the ``ingest_state`` KV bucket (:class:`~marketbus.vendor.cursor.CursorStore`):
a restart or a lost session resumes where it stopped, with no duplicate and no hole.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.feeds import Feed
from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.reference import Currency
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import Ingestor
from marketbus.vendor.cursor import CursorStore
from marketbus.vendor.feeds import CatalogUnavailable, FeedControl, Resolved, Seed
from marketbus.vendor.frames import FrameGuard

from . import normalize
from .backfill import FinxBackfill
from .catalog import FinxCatalog, PairsUnavailable
from .client import TickPlantClient
from .live import FinxLive
from .parts import Cursor, Outbox, PairState
from .session import FinxSession
from .settings import FinxIngestSettings


class FinxIngestor(Ingestor):
    source: ClassVar[str] = "finx"
    resends_failed_publishes = True  # the outbox is re-sent after a publishing failure
    settings_cls = FinxIngestSettings
    settings: FinxIngestSettings

    def build(self) -> None:
        s = self.settings
        self.client = TickPlantClient(
            s.ws_url, s.api_key, timeout_s=s.request_timeout_s,
            backoff=Backoff(s.reconnect_initial_s, s.reconnect_max_s), on_frame=self._count_frame,
        )
        self.pairs: dict[str, PairState] = {}
        self.cursors: CursorStore[Cursor] = CursorStore(None, self.source, "history", Cursor, s.state_namespace)
        self.frames = FrameGuard(self, normalize.Malformed)
        self.outbox = Outbox()
        self.catalog = FinxCatalog(self)
        self.live = FinxLive(self)
        self.backfill = FinxBackfill(self, between_pages=self.live.maybe_snap)
        self.session = FinxSession(self, self.catalog, self.live, self.backfill)
        self.feed_control = FeedControl(self, resolve=self._resolve_feed, subscribe=self._collect,
                                        unsubscribe=self._uncollect)

    @property
    def sessions(self) -> int:
        return self.session.sessions

    @property
    def currencies(self) -> dict[str, Currency]:
        return self.catalog.currencies

    def vendor_refused(self, channel: str, exc: normalize.VendorError, what: str) -> None:
        """FinX answered a request with an error: an auth error ends the session (raised again),
        anything else is counted and logged and the caller skips the request."""
        if exc.auth:
            raise exc
        self.metrics.vendor_errors.labels(self.source, channel).inc()
        self.log.warning("%s: %s", what, exc)

    def _count_frame(self, channel: str) -> None:
        self.metrics.frames_in.labels(self.source, channel).inc()

    def health(self) -> dict[str, Any]:
        return {
            "vendor_url": self.client.safe_url, "vendor_connected": self.client.connected,
            "cursors": {p.pair: p.cursor for p in self.pairs.values()},
        }

    # --- start / stop ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        self.cursors.kv = await ensure_bucket(self.js, INGEST_STATE, self.settings.stream_replicas)
        try:
            await self.feed_control.start(self._seeds())
        except CatalogUnavailable as exc:  # a first start cannot seed before FinX lists its pairs
            self.log.warning("%s: retrying", exc)
            self.spawn(self._start_feeds(), "feeds")
        self.spawn(self.session.run(), "session")  # it serves the pairs there are (none until feeds start)

    # --- feed control: the pairs collected ------------------------------------------------------
    def _seeds(self) -> list[Seed]:
        return [Seed(pair) for pair in dict.fromkeys(p.upper() for p in self.settings.pairs)]

    async def _start_feeds(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconnect_max_s)
            try:
                await self.feed_control.start(self._seeds())
                return
            except CatalogUnavailable as exc:
                self.log.warning("%s: retrying", exc)

    async def _resolve_feed(self, pair: str) -> Resolved | None:
        if pair != pair.upper() or pair.count(":") != 1 or not all(pair.split(":")):
            return None  # FinX writes pairs BASE:QUOTE, upper case
        try:
            if not await self.catalog.listed(pair):
                return None
        except PairsUnavailable as exc:
            raise CatalogUnavailable(str(exc)) from None
        return Resolved(NO_VENUE, normalize.symbol_of(pair), "tick", pair)

    async def _collect(self, feed: Feed) -> None:
        state = await self.backfill.pair_state(feed.instrument)
        self.pairs = {**self.pairs, feed.instrument: state}  # a new dict: the session iterates the old one
        if self.session.sessions:  # the session's catalog load covered the pairs at start
            with contextlib.suppress(normalize.Malformed):
                await self.emit(normalize.instrument(feed.instrument, self.catalog.currencies, self.now_ns()))

    async def _uncollect(self, feed: Feed) -> None:
        state = self.pairs.get(feed.instrument)
        if state is None:
            return
        state.active = False  # from now on nothing of it is published
        with contextlib.suppress(Exception):  # keep its cursor: a resume goes on from there
            await self.backfill.commit(force=True)
        self.pairs = {k: v for k, v in self.pairs.items() if k != feed.instrument}

    async def on_stop(self) -> None:
        await self.client.close()

    async def replay(self, request: ReplayRequest) -> int:
        return await self.backfill.replay(request)
