"""The Sitagri AgriMarket ingestor, built from the vendor machinery's parts (:mod:`marketbus.vendor`):

- session: :class:`~.client.SitagriClient` (login, keep-alive, re-login; on
  :class:`~marketbus.vendor.http.VendorHttp`);
- catalog: :class:`~.catalog.SitagriCatalog` (the reference tree, :mod:`.crawl`);
- live: :class:`~.live.SitagriLive` (netbus websocket / long polling pushes, gap back-fill,
  order books: :class:`~.books.SitagriBooks`, snapshot + deltas, :mod:`marketbus.books`);
- backfill: :class:`~.backfill.SitagriBackfill` (history, expired futures, news search, replay).

Feed control (:mod:`marketbus.vendor.feeds`): the quotes listened to are the ``feeds`` KV
bucket's (a quote or a whole class per feed), seeded once from ``QUOTES``, changed at runtime
(``marketbus feed add sitagri /market/sources/EURONEX/future/EMA``): listeners are registered and
unregistered on the live session.

News publishing: ``sitagri.news.publish`` (request/reply) publishes an article to a writable
source and replies with its id.

Event ids come from the vendor identity (quote reference + the value's date; news source + id),
so a live push and the back-filled history point of the same tick are the same event; the
ingestor also remembers recent ids (:class:`~marketbus.vendor.dedup.RecentIds`: a million ids,
a day, kept as ints) and does not publish one twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
from faststream.nats import NatsMessage

from marketbus.contracts import subjects
from marketbus.contracts.base import MarketEvent
from marketbus.contracts.feeds import Feed
from marketbus.contracts.jobs import PublishArticle, PublishReply, ReplayRequest
from marketbus.contracts.subjects import normalize_symbol
from marketbus.runtime.ingest import Ingestor
from marketbus.vendor.dedup import RecentIds, hex_key
from marketbus.vendor.feeds import CatalogUnavailable, FeedControl, Resolved, Seed
from marketbus.vendor.frames import FrameGuard

from . import normalize
from .backfill import SitagriBackfill
from .books import SitagriBooks
from .catalog import SitagriCatalog
from .client import SitagriClient, Unavailable, VendorError
from .crawl import CrawlResult
from .live import SitagriLive
from .settings import SitagriIngestSettings

__all__ = ["RecentIds", "SitagriIngestor", "recent_ids"]


def recent_ids() -> RecentIds:
    """The ingestor's de-duplication state: a million event ids, a day; the ids kept as ints
    (``hex_key``: ~85 MB at the bound, where their text took ~116 MB)."""
    return RecentIds(max_ids=1_000_000, max_age_s=86_400.0, compact=hex_key)

NS = 1_000_000_000


class SitagriIngestor(Ingestor):
    source: ClassVar[str] = "sitagri"
    settings_cls = SitagriIngestSettings
    settings: SitagriIngestSettings
    # live pushes the publisher gives up on are back-filled from history (SitagriLive.publish_gap_loop)
    resends_failed_publishes = True

    def build(self) -> None:
        self.frames = FrameGuard(self, normalize.Malformed)
        self.recent = recent_ids()
        s = self.settings
        self.client = SitagriClient(
            s.base_url, s.token, login=s.login, password=s.password, login_path=s.login_path,
            timeout_s=s.request_timeout_s, requests_per_s=s.requests_per_s, max_retries=s.max_retries,
            batch_size=s.batch_size, keepalive_margin_s=s.keepalive_margin_s, on_call=self._count_call,
        )
        self.catalog = SitagriCatalog(self)
        self.live = SitagriLive(self)
        self.books = SitagriBooks(self, lambda: self.live.live_quotes)
        self.backfill = SitagriBackfill(self)
        self.feed_control = FeedControl(self, resolve=self._resolve_feed, subscribe=self._listen,
                                        unsubscribe=self._unlisten)

        @self.broker.subscriber(subjects.SITAGRI_NEWS_PUBLISH, queue="sitagri-news-publish")
        async def on_publish(msg: NatsMessage) -> bytes:
            return msgspec.json.encode(await self.publish_article(msg.body))

    def _count_call(self, channel: str) -> None:
        self.metrics.frames_in.labels(self.source, channel).inc()

    @property
    def crawl(self) -> CrawlResult | None:
        return self.catalog.result

    @property
    def transport(self) -> str:
        return self.live.transport

    @property
    def live_quotes(self) -> list[str]:
        return self.live.live_quotes

    @property
    def gaps_filled(self) -> int:
        return self.live.gaps_filled

    def health(self) -> dict[str, Any]:
        ws = self.live.ws
        return {
            "vendor_url": self.client.base_url, "transport": self.transport,
            "ws_connected": bool(ws and ws.connected), "live_quotes": len(self.live_quotes),
            "reference_items": len(self.crawl.events) if self.crawl else 0, "logins": self.client.keeper.logins,
            "keepalives": self.client.keeper.pings, "gaps_filled": self.gaps_filled,
            "books": self.books.deltas.health(),
        }

    async def on_start(self) -> None:
        s = self.settings
        self.spawn(self.client.keeper.run(), "keepalive")
        self.spawn(self.catalog.loop(), "reference")
        self.spawn(self._start_live(), "feeds")
        self.spawn(self.live.publish_gap_loop(), "publish-gaps")
        if (s.history_start and s.history_quotes) or s.expired:
            self.spawn(self.backfill.startup_history(), "history")
        if s.news_lookback_s > 0 and s.news_sources:
            self.spawn(self.backfill.startup_news(), "news")
        if s.order_book_interval_s > 0:
            self.spawn(self.books.loop(), "orderbooks")

    async def on_stop(self) -> None:
        if self.live.ws is not None:
            await self.live.ws.close()
        await self.client.close()

    # --- feed control: the quotes listened to --------------------------------------------------------
    async def _start_live(self) -> None:
        await self.ready()  # feeds are validated against the reference tree
        # no netbus session yet: no data flows until it connects (live.connected says so), so the
        # time before the first connect (a vendor down at our start) is no collection period
        await self.session_flowing(False)
        await self.feed_control.start([Seed(q.rstrip("/")) for q in dict.fromkeys(self.settings.quotes)])
        self.spawn(self.live.loop(), "live")

    async def _resolve_feed(self, ref: str) -> Resolved | None:
        result = self.catalog.result
        if result is None:
            raise CatalogUnavailable("the reference tree is not crawled yet")
        if ref in result.quotes:
            q = result.quotes[ref]
            return Resolved(q.venue, q.symbol, None, f"{q.kind} {ref}")
        members = (
            [result.quotes[m] for m in result.expand([ref]) if m in result.quotes] if ref in result.members else []
        )
        if not members:
            return None
        return Resolved(members[0].venue, normalize_symbol(ref.rsplit("/", 1)[-1]), None,
                        f"{len(members)} quotes of {ref}")

    def _quotes_of(self, feeds: list[Feed]) -> list[str]:
        result = self.catalog.result
        return result.expand([f.instrument for f in feeds]) if result is not None else []

    async def _listen(self, feed: Feed) -> None:
        await self.live.set_quotes(self._quotes_of([*self.feed_control.active(), feed]))

    async def _unlisten(self, feed: Feed) -> None:
        await self.live.set_quotes(self._quotes_of(self.feed_control.active()))

    async def ready(self, timeout: float | None = None) -> CrawlResult:
        """The first reference crawl (waits for it)."""
        return await self.catalog.ready(timeout)

    async def refresh_reference(self) -> CrawlResult:
        return await self.catalog.refresh()

    async def on_push(self, raw: msgspec.Raw) -> None:
        """One pushed object (websocket or long polling) -> its event."""
        await self.live.on_push(raw)

    async def backfill_expired(self, item: str, start_ns: int, end_ns: int, resolution: str | None = None) -> int:
        return await self.backfill.expired(item, start_ns, end_ns, resolution)

    async def replay(self, request: ReplayRequest) -> int:
        return await self.backfill.replay(request)

    # --- publishing, once per id ------------------------------------------------------------------
    async def emit_new(self, event: MarketEvent) -> bool:
        if not self.recent.add(event.id):
            return False
        await self.emit(event)
        return True

    async def emit_batch_new(self, events: Sequence[MarketEvent]) -> int:
        fresh = self.recent.fresh(events, key=lambda e: e.id)
        if fresh:
            await self.emit_batch(fresh, replay=True)
        return len(fresh)

    # --- news publishing ----------------------------------------------------------------------------
    async def publish_article(self, body: bytes) -> PublishReply:
        try:
            req = msgspec.json.decode(body, type=PublishArticle)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as exc:  # Recursion: nested too deep
            return PublishReply(ok=False, error=f"bad request: {exc}")
        pub = (req.publication_ts or self.now_ns()) // NS
        article = {"copyright": req.copyright, "lang": req.lang, "title": req.title, "snippet": req.snippet,
                   "content": req.content, "publicationDate": pub,
                   "modificationDate": (req.modification_ts // NS) if req.modification_ts else pub}
        try:
            reply = await self.client.publish_article(req.source, article)
        except (VendorError, Unavailable) as exc:
            return PublishReply(ok=False, source=req.source, error=str(exc))
        self.log.info("published article %s to %s", reply.get("id"), req.source)
        return PublishReply(ok=True, source=req.source, id=str(reply.get("id")))
