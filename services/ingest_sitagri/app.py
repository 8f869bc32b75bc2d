"""The Sitagri AgriMarket ingestor: reference tree, live prices and news, history.

- Reference data: the whole tree crawled with batch requests (:mod:`.crawl`) at start-up and then
  at most daily -> ``ref.<kind>.sitagri.<SOURCE>.<CODE>`` (Venue, InstrumentClass, Instrument,
  Unit, GeoSite, Incoterm, ProductCategory; names resolved through l10n).
- Live: one websocket ``/api/netbus`` (token as subprotocol), price listeners for the configured
  quotes (classes expand to every member) and news listeners for the configured sources; pushes ->
  MarketPrice / BookSnapshot / CashPrice / IndexPrice / News on ``md.*.sitagri.<SOURCE>.<CODE>``.
  A lost socket (maintenance reboot) is reconnected with back-off, every listener registered
  again, and the missed range back-filled from the history endpoints (feed status ``gap`` then
  ``resynced``). Long polling ``GET /api/netbus`` takes over when configured, and automatically
  after repeated failed websocket connects; the websocket is tried again every ``ws_retry_s``.
- History: a configured range of configured quotes at a resolution, paged around the 8192 cap;
  expired futures through the expired route (with SHIFT). ``replay.sitagri`` uses the same.
- News: search (period, languages, keyword) -> News; ``sitagri.news.publish`` (request/reply)
  publishes an article to a writable source and replies with its id.

Event ids come from the vendor identity (quote reference + the value's date; news source + id),
so a live push and the back-filled history point of the same tick are the same event; the
ingestor also remembers recent ids and does not publish one twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import msgspec
from faststream.nats import NatsMessage

from marketbus.contracts.base import MarketEvent
from marketbus.contracts import subjects
from marketbus.contracts.jobs import PublishArticle, PublishReply, ReplayRequest
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import BUS_ERRORS, Ingestor, ReplayUnsupported
from marketbus.runtime.tasks import cancel_and_wait

from . import history as hist
from . import normalize
from .client import SessionExpired, SitagriClient, Unavailable, VendorError
from .crawl import CrawlResult, QuoteMeta, crawl
from .netbus import (
    LongPollNetbus, NetbusClosed, NetbusRefused, WsNetbus, failed_registrations, register_refs,
)
from .settings import SitagriIngestSettings

NS = 1_000_000_000

class RecentIds:
    """Ids published lately (bounded, oldest forgotten first): nothing is published twice."""

    def __init__(self, limit: int = 1_000_000) -> None:
        self.limit = limit
        self._ids: dict[str, None] = {}

    def add(self, event_id: str) -> bool:
        """True when the id is new (and remembers it)."""
        ids = self._ids
        if event_id in ids:
            return False
        ids[event_id] = None
        if len(ids) > self.limit:
            del ids[next(iter(ids))]
        return True

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class SitagriIngestor(Ingestor):
    name: ClassVar[str] = "ingest_sitagri"
    source: ClassVar[str] = "sitagri"
    settings_cls = SitagriIngestSettings
    settings: SitagriIngestSettings

    def __init__(self, settings: SitagriIngestSettings | None = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        s = self.settings
        self.client = SitagriClient(
            s.base_url, s.token, login=s.login, password=s.password, login_path=s.login_path,
            timeout_s=s.request_timeout_s, requests_per_s=s.requests_per_s, max_retries=s.max_retries,
            batch_size=s.batch_size, keepalive_margin_s=s.keepalive_margin_s, on_call=self._count_call,
        )
        self.crawl: CrawlResult | None = None
        self.crawls = 0
        self._ready = asyncio.Event()
        self.live_quotes: list[str] = []
        self.recent = RecentIds()
        self.last_ts: dict[str, int] = {}  # quote ref -> ts of its newest published price
        self.transport = "none"
        self.ws: WsNetbus | None = None
        self.gaps_filled = 0
        self._gap_from: dict[str, int] = {}  # quote ref -> newest published price when the feed was lost
        self._first_live: dict[str, int] | None = None  # quote ref -> first price after a reconnect
        self.pushes = 0
        self._frames = self.metrics.frames_in.labels(self.source, "netbus")
        self._live_metrics: dict[type, tuple[Any, Any]] = {}

    # --- wiring -----------------------------------------------------------------------------------
    def setup(self) -> None:
        super().setup()

        @self.broker.subscriber(subjects.SITAGRI_NEWS_PUBLISH, queue="sitagri-news-publish")
        async def on_publish(msg: NatsMessage) -> bytes:
            return msgspec.json.encode(await self.publish_article(msg.body))

    def _count_call(self, channel: str) -> None:
        self.metrics.frames_in.labels(self.source, channel).inc()

    def _count_frame(self) -> None:
        self._frames.inc()

    def health(self) -> dict[str, Any]:
        return {
            "vendor_url": self.client.base_url, "transport": self.transport,
            "ws_connected": bool(self.ws and self.ws.connected), "live_quotes": len(self.live_quotes),
            "reference_items": len(self.crawl.events) if self.crawl else 0, "logins": self.client.keeper.logins,
            "keepalives": self.client.keeper.pings, "gaps_filled": self.gaps_filled,
        }

    async def on_start(self) -> None:
        self.spawn(self.client.keeper.run(), "keepalive")
        self.spawn(self._reference_loop(), "reference")
        self.spawn(self._live_loop(), "live")
        if self.settings.history_start and self.settings.history_quotes or self.settings.expired:
            self.spawn(self._startup_history(), "history")
        if self.settings.news_lookback_s > 0 and self.settings.news_sources:
            self.spawn(self._startup_news(), "news")
        if self.settings.order_book_interval_s > 0:
            self.spawn(self._order_book_loop(), "orderbooks")

    async def on_stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        await self.client.close()

    async def ready(self, timeout: float | None = None) -> CrawlResult:
        await asyncio.wait_for(self._ready.wait(), timeout)
        assert self.crawl is not None
        return self.crawl

    # --- publishing -------------------------------------------------------------------------------
    async def _emit_new(self, event: MarketEvent) -> bool:
        if not self.recent.add(event.id):
            return False
        await self.emit(event)
        return True

    async def _emit_batch_new(self, events: Sequence[MarketEvent]) -> int:
        fresh = [e for e in events if self.recent.add(e.id)]
        if fresh:
            await self.emit_batch(fresh, replay=True)
        return len(fresh)

    async def on_push(self, raw: msgspec.Raw) -> None:
        """One pushed object (websocket or long polling) -> its event (the hot path)."""
        ts_recv = time.time_ns()
        try:
            obj = normalize.decode_push(raw)
            event = normalize.push(obj, ts_recv, bytes(raw) if type(obj) is normalize.VOrderBook else None)
        except normalize.Malformed as exc:
            await self.malformed("netbus", bytes(raw), str(exc))
            return
        self.pushes += 1
        quote = getattr(obj, "quote", None)
        if quote is not None and type(obj) is not normalize.VOrderBook:
            if event.ts_event > self.last_ts.get(quote, 0):
                self.last_ts[quote] = event.ts_event
            first = self._first_live
            if first is not None and quote not in first:
                first[quote] = event.ts_event
        if self.recent.add(event.id):
            # the hot path: the pipelined publisher directly, with cached metric children
            # (Ingestor.emit looks the labelled metrics up for every event)
            await self.publisher.publish_event(event)  # type: ignore[union-attr]
            kind = type(event)
            counters = self._live_metrics.get(kind)
            if counters is None:
                tag = kind.__struct_config__.tag  # type: ignore[attr-defined]
                counters = self._live_metrics[kind] = (self.metrics.events_out.labels(self.source, tag),
                                                       self.metrics.event_lag.labels(self.source, tag))
            counters[0].inc()
            counters[1].observe(max(0.0, (event.ts_recv - event.ts_event) / 1e9))
            self.feeds.count(f"sitagri/{event.venue}/{event.symbol}", 1, event.ts_recv)

    async def _bad_frame(self, channel: str, payload: bytes | str, reason: str) -> None:
        await self.malformed(channel, payload, reason)

    # --- reference data ---------------------------------------------------------------------------
    async def refresh_reference(self) -> CrawlResult:
        result = await crawl(self.client.batch, self.now_ns())
        for event in result.events:
            await self._emit_new(event)
        for ref, payload, reason in result.problems:
            if payload is not None:
                await self.malformed("reference", msgspec.json.encode(payload), f"{ref}: {reason}")
            else:
                self.log.warning("reference %s: %s", ref, reason)
        await self.flush()
        self.crawl = result
        self.crawls += 1
        self._ready.set()
        self.log.info("reference tree: %d events, %d quotes, %d requests (%d references)",
                      len(result.events), len(result.quotes), result.requests, result.references)
        return result

    async def _reference_loop(self) -> None:
        backoff = Backoff(self.settings.reconnect_initial_s, self.settings.reconnect_max_s)
        first = True
        while True:
            if first and not self.settings.ref_on_start:
                first = False
            try:
                if first:
                    await self.client.start()
                await self.refresh_reference()
                first = False
                backoff.reset()
                await asyncio.sleep(self.settings.ref_refresh_s)
            except (Unavailable, VendorError, NetbusClosed, normalize.Malformed) as exc:
                self.metrics.vendor_errors.labels(self.source, "reference").inc()
                self.log.warning("reference crawl failed: %r", exc)
                await backoff.sleep()
            except BUS_ERRORS as exc:  # the bus, not the vendor: retried (the health says "publishing")
                self.log.warning("reference crawl could not publish: %r", exc)
                await backoff.sleep()

    # --- live -------------------------------------------------------------------------------------
    async def _live_loop(self) -> None:
        s = self.settings
        result = await self.ready()
        self.live_quotes = result.expand(s.quotes)
        refs = register_refs(self.live_quotes, s.news_sources)
        mode = "longpoll" if s.transport == "longpoll" else "websocket"
        ws_failures = 0
        backoff = Backoff(s.reconnect_initial_s, s.reconnect_max_s)
        lost_at: int | None = None
        feed = {"feed": "sitagri/netbus"}
        while True:
            try:
                if mode == "websocket":
                    await self._ws_session(refs, lost_at)
                else:
                    switch = await self._longpoll_session(refs, lost_at)
                    if switch:
                        lost_at = self._lost()
                        mode, ws_failures = "websocket", 0
                        backoff.reset()
                        continue
            except NetbusRefused as exc:
                ws_failures += 1
                self.metrics.reconnects.labels(self.source).inc()
                self.log.warning("websocket unavailable (%d in a row): %s", ws_failures, exc)
                with contextlib.suppress(Exception):
                    await self.client.start()  # a refused token? this logs in again (401 -> login)
                if lost_at is None and self.transport != "none":
                    lost_at = self._lost()
                if s.transport == "auto" and ws_failures >= s.ws_failures_before_longpoll:
                    self.log.warning("falling back to long polling after %d failed websocket connects", ws_failures)
                    mode, ws_failures = "longpoll", 0
                    continue
                await backoff.sleep()
                continue
            except (NetbusClosed, Unavailable, SessionExpired, VendorError, *BUS_ERRORS) as exc:
                # BUS_ERRORS: a back-fill could not publish; the gap stays open and is back-filled
                # again on the next session
                self.metrics.reconnects.labels(self.source).inc()
                if lost_at is None:
                    lost_at = self._lost()
                self.metrics.feed_state.labels(self.source, "netbus").set(0)
                await self.publish_feed_status(self.source, "disconnected", detail=f"{self.transport}: {exc}", **feed)
                if mode == "longpoll" and s.transport == "auto":
                    mode, ws_failures = "websocket", 0  # after an outage, try the websocket first
                await backoff.sleep()
                continue
            else:
                backoff.reset()
            lost_at = None

    def _lost(self) -> int:
        """The feed is lost now: remember where every quote was (the gap starts there)."""
        self._gap_from = dict(self.last_ts)
        self._first_live = {}
        return self.now_ns()

    async def _connected(self, transport: str, replies: list[Any], refs: list[str], lost_at: int | None) -> None:
        self.transport = transport
        self.metrics.feed_state.labels(self.source, "netbus").set(1)
        bad = failed_registrations(refs, replies)
        detail = f"{transport}, {len(refs) - len(bad)}/{len(refs)} listeners"
        await self.publish_feed_status(self.source, "connected", detail=detail, feed="sitagri/netbus")
        for ref, reply in zip(refs, replies, strict=False):
            if ref in bad:
                self.log.warning("listener %s refused: %s", ref, reply)
        if lost_at is not None and self.settings.gap_backfill:
            await self.backfill_gap(lost_at)

    async def _ws_session(self, refs: list[str], lost_at: int | None) -> None:
        s = self.settings
        keeper = self.client.keeper
        ws = WsNetbus(self.client.ws_url, keeper, self.on_push, self._bad_frame,
                      keepalive_s=s.ws_keepalive_s or max(0.5, keeper.timeout_s / 3),
                      open_timeout_s=min(10.0, s.request_timeout_s), on_frame=self._count_frame)
        await ws.connect()
        self.ws = ws
        try:
            replies = await ws.register(refs, s.register_timeout_s)
            await self._connected("websocket", replies, refs, lost_at)
            reason = await ws.wait_closed()
        finally:
            await ws.close()
        raise NetbusClosed(reason)

    async def _longpoll_session(self, refs: list[str], lost_at: int | None) -> bool:
        """Long polling until it fails (raises) or, in auto mode, the websocket works again (True)."""
        s = self.settings
        lp = LongPollNetbus(self.client, self.on_push, self._bad_frame, on_frame=self._count_frame)
        replies = await lp.register(refs)
        await self._connected("longpoll", replies, refs, lost_at)

        async def poll() -> None:
            while True:
                await lp.poll_once()

        async def probe() -> None:
            while True:
                await asyncio.sleep(s.ws_retry_s)
                ws = WsNetbus(self.client.ws_url, self.client.keeper, self.on_push, self._bad_frame)
                try:
                    await ws.connect()
                except NetbusRefused:
                    continue
                await ws.close()
                return

        tasks = [asyncio.create_task(poll(), name="sitagri-longpoll")]
        if s.transport == "auto":
            tasks.append(asyncio.create_task(probe(), name="sitagri-ws-probe"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(tasks)
        if tasks[0] in done:
            exc = tasks[0].exception()
            raise exc if exc is not None else NetbusClosed("long polling stopped")
        self.log.info("the websocket is back: leaving long polling")
        with contextlib.suppress(Exception):
            await lp.register(register_refs(self.live_quotes, s.news_sources, unregister=True))
        return True

    # --- gaps -------------------------------------------------------------------------------------
    async def backfill_gap(self, lost_at: int) -> int:
        """Back-fill every live quote from its newest published price (or ``lost_at``) to now, and
        news since ``lost_at``; feed status ``gap`` then ``resynced``."""
        # The gap of a quote runs from its last price before the loss to its first price after
        # the new registration (the register snapshot). The vendor's history may lag its live
        # feed by up to a second: wait for that second to be over before asking for it.
        starts = {q: self._gap_from.get(q, lost_at) for q in self.live_quotes}
        first = self._first_live if self._first_live is not None else {}
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._until(lambda: all(q in first for q in self.live_quotes)), 2.0)
        now = self.now_ns()
        ends = {q: first.get(q, now) for q in self.live_quotes}
        self._first_live = None
        newest = max(ends.values(), default=now)
        await asyncio.sleep(max(0.0, min(1.2, (-(-newest // NS) * NS - self.now_ns()) / NS + 0.05)))
        gap = (min([lost_at, *starts.values()]), max(newest, lost_at))
        feed = {"feed": "sitagri/netbus", "kind": "market_price"}
        await self.publish_feed_status(self.source, "gap", gap=gap, detail="back-filling from history", **feed)
        total = 0
        assert self.crawl is not None
        for quote in self.live_quotes:
            meta = self.crawl.quotes.get(quote)
            resolution = "MINUTE" if meta is not None and meta.kind == "currency" else "TICK"
            try:
                total += await self._history(quote, starts[quote], ends[quote], resolution, dedupe=True)
            except (VendorError, normalize.Malformed, hist.HistoryStuck) as exc:
                self.log.warning("gap back-fill of %s failed: %r", quote, exc)
        for source in self.settings.news_sources:
            with contextlib.suppress(VendorError, normalize.Malformed):
                total += await self.search_news(source, lost_at // NS, now // NS + 1, dedupe=True)
        await self.flush()
        self.gaps_filled += 1
        await self.publish_feed_status(self.source, "resynced", gap=gap, detail=f"{total} events back-filled", **feed)
        self.feeds.set_state("sitagri/netbus", "connected")
        return total

    @staticmethod
    async def _until(predicate: Any, interval: float = 0.02) -> None:
        while not predicate():
            await asyncio.sleep(interval)

    # --- history ----------------------------------------------------------------------------------
    async def _history(self, quote_ref: str, start_ns: int, end_ns: int, resolution: str, *, dedupe: bool,
                       expired: tuple[str, int, int] | None = None, shift_s: int = 0,
                       stats: hist.PagingStats | None = None) -> int:
        s = self.settings
        if expired is not None:
            cls_ref, year, month = expired

            def make_ref(a: int, b: int) -> str:
                return hist.expired_ref(cls_ref, year, month, a, b, resolution, shift_s)
        else:
            def make_ref(a: int, b: int) -> str:
                return hist.history_ref(quote_ref, a, b, resolution)

        async def fetch(ref: str) -> bytes:
            return await self.client.get_raw(ref, channel="history")

        total = 0
        async for page in hist.pages(fetch, make_ref, start_ns, end_ns, resolution=resolution, cap=s.history_cap,
                                     descending=s.history_descending, shift_s=shift_s, stats=stats):
            ts_recv = self.now_ns()
            events: list[MarketEvent] = []
            for _, entry in page.entries:
                try:
                    events.append(normalize.history_event(page.code, page.quote, page.quality, entry,
                                                          page.resolution, ts_recv, True))
                except normalize.Malformed as exc:
                    await self.malformed("history", msgspec.json.encode(entry), str(exc))
            if dedupe:
                total += await self._emit_batch_new(events)
            elif events:
                total += await self.emit_batch(events, replay=True)
        return total

    async def backfill(self, quotes: Sequence[str], start_ns: int, end_ns: int, resolution: str | None = None) -> int:
        """History of quotes (or classes) in [start, end] at a resolution, published once."""
        result = await self.ready()
        total = 0
        for quote in result.expand(quotes):
            total += await self._history(quote, start_ns, end_ns, resolution or self.settings.history_resolution,
                                         dedupe=True)
        await self.flush()
        return total

    async def backfill_expired(self, item: str, start_ns: int, end_ns: int, resolution: str | None = None) -> int:
        """An expired future ``SOURCE/CLASS/YYYY/M`` through the expired route (with SHIFT)."""
        src, cls, year, month = item.split("/")
        cls_ref = f"/market/sources/{src}/future/{cls}"
        quote = hist.expired_quote_ref(cls_ref, int(year), int(month))
        total = await self._history(quote, start_ns, end_ns, resolution or self.settings.history_resolution,
                                    dedupe=True, expired=(cls_ref, int(year), int(month)),
                                    shift_s=self.settings.expired_shift_s)
        await self.flush()
        return total

    async def _startup_history(self) -> None:
        s = self.settings
        await self.ready()
        now = self.now_ns()
        start = s.time_ns(s.history_start, now) or now - 86_400 * NS
        end = s.time_ns(s.history_end, now) or now
        backoff = Backoff(s.reconnect_initial_s, s.reconnect_max_s)
        while True:
            try:
                n = await self.backfill(s.history_quotes, start, end) if s.history_quotes and s.history_start else 0
                for item in s.expired:
                    n += await self.backfill_expired(item, start, end)
                self.log.info("start-up history: %d events", n)
                return
            except (Unavailable, SessionExpired) as exc:
                self.log.warning("start-up history failed, retrying: %r", exc)
                await backoff.sleep()

    # --- news -------------------------------------------------------------------------------------
    async def search_news(self, source: str, start_s: int, end_s: int, langs: Sequence[str] | None = None,
                          keyword: str | None = None, *, dedupe: bool = True, replay: bool = True) -> int:
        """Articles of a source in [start, end] (languages, keyword) -> News events."""
        s = self.settings
        body = await self.client.search_news(source, start_s, end_s, s.news_langs if langs is None else langs,
                                             s.news_keyword if keyword is None else keyword)
        try:
            reply = msgspec.json.decode(body, type=dict[str, Any])
            raws = msgspec.json.decode(msgspec.json.encode(reply.get("data", [])), type=list[msgspec.Raw])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self.malformed("news", body, f"bad search reply: {exc}")
            return 0
        ts_recv = self.now_ns()
        events: list[MarketEvent] = []
        for raw in raws:
            try:
                obj = normalize.decode_push(raw)
                if not isinstance(obj, normalize.VNews):
                    raise normalize.Malformed(f"not a newsArticle in a search reply: {type(obj).__name__}")
                if s.news_fetch_content and obj.content is None:
                    obj = normalize.decode_push(await self.client.get_raw(
                        f"/news/sources/{source}/article/{obj.id}", channel="news"))
                events.append(normalize.news(obj, ts_recv, replay=replay, source=source))  # type: ignore[arg-type]
            except normalize.Malformed as exc:
                await self.malformed("news", bytes(raw), str(exc))
        events.sort(key=lambda e: e.ts_event)
        if dedupe:
            return await self._emit_batch_new(events)
        return await self.emit_batch(events, replay=True) if events else 0

    async def _startup_news(self) -> None:
        s = self.settings
        await self.ready()
        now = int(time.time())
        for source in s.news_sources:
            try:
                await self.search_news(source, now - int(s.news_lookback_s), now)
            except (Unavailable, VendorError) as exc:
                self.log.warning("news search of %s failed: %r", source, exc)

    async def publish_article(self, body: bytes) -> PublishReply:
        try:
            req = msgspec.json.decode(body, type=PublishArticle)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
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

    # --- order books ------------------------------------------------------------------------------
    async def _order_book_loop(self) -> None:
        result = await self.ready()
        while True:
            await asyncio.sleep(self.settings.order_book_interval_s)
            quotes = [q for q in self.live_quotes if (m := result.quotes.get(q)) and m.order_book]
            if not quotes:
                continue
            try:
                raws = await self.client.batch_raw([f"{q}/orderBook" for q in quotes], channel="orderbook")
            except (Unavailable, VendorError, *BUS_ERRORS) as exc:
                self.log.warning("order book poll failed: %r", exc)
                continue
            for raw in raws:
                await self.on_push(raw)

    # --- replay -----------------------------------------------------------------------------------
    def _quote_of(self, venue: str, symbol: str) -> QuoteMeta:
        if self.crawl is None:
            raise RuntimeError("the reference tree is not loaded yet")
        meta = self.crawl.by_symbol().get((venue, symbol))
        if meta is None:
            raise ReplayUnsupported(f"unknown sitagri quote {venue}/{symbol}")
        return meta

    async def replay(self, request: ReplayRequest) -> int:
        kind = request.kind
        if kind == "news":
            source = normalize_source(request.venue)
            n = await self.search_news(source, request.start_ns // NS, -(-request.end_ns // NS), langs=(),
                                       keyword="", dedupe=False)
            await self.flush()
            return n
        if kind not in ("market_price", "cash_price", "index_price", "bar"):
            raise ReplayUnsupported(f"sitagri replays market_price, cash_price, index_price, bar and news, not {kind}")
        meta = self._quote_of(request.venue, request.symbol)
        if kind == "bar":
            res = self.settings.history_resolution if self.settings.history_resolution != "TICK" else "MINUTE"
        else:
            if meta.kind == "currency":
                raise ReplayUnsupported("TICK history is unavailable for currencies: replay bars")
            res = "TICK"
        n = await self._history(meta.ref, request.start_ns, request.end_ns - 1, res, dedupe=False)
        await self.flush()
        return n


def normalize_source(venue: str) -> str:
    from marketbus.contracts.subjects import denormalize_symbol

    return denormalize_symbol(venue)
