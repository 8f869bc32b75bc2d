"""Sitagri history and news back-fill: a range of quotes at a resolution, paged around the 8192
cap (:mod:`.history`); expired futures through the expired route (with SHIFT); news search
(period, languages, keyword) -> News; the start-up ranges, and ``replay.sitagri``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from marketbus.contracts.base import MarketEvent
from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.subjects import denormalize_symbol
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import ReplayUnsupported

from . import history as hist
from . import normalize
from .client import SessionExpired, Unavailable, VendorError
from .crawl import QuoteMeta
from .parts import SitagriHost

NS = 1_000_000_000


class SitagriBackfill:
    def __init__(self, ingestor: SitagriHost) -> None:
        self.ing = ingestor

    async def history(self, quote_ref: str, start_ns: int, end_ns: int, resolution: str, *, dedupe: bool,
                      expired: tuple[str, int, int] | None = None, shift_s: int = 0,
                      stats: hist.PagingStats | None = None, sink: list[MarketEvent] | None = None) -> int:
        """Publish the history of a quote in [start, end] (``dedupe``: what is not in the recent
        ids), or with ``sink`` collect its events there, unpublished (and not recorded as seen)."""
        ing, s = self.ing, self.ing.settings
        if expired is not None:
            cls_ref, year, month = expired

            def make_ref(a: int, b: int) -> str:
                return hist.expired_ref(cls_ref, year, month, a, b, resolution, shift_s)
        else:
            def make_ref(a: int, b: int) -> str:
                return hist.history_ref(quote_ref, a, b, resolution)

        async def fetch(ref: str) -> bytes:
            return await ing.client.get_raw(ref, channel="history")

        total = 0
        async for page in hist.pages(fetch, make_ref, start_ns, end_ns, resolution=resolution, cap=s.history_cap,
                                     descending=s.history_descending, shift_s=shift_s, stats=stats):
            ts_recv = ing.now_ns()
            events: list[MarketEvent] = []
            for _, entry in page.entries:
                event = await ing.frames.normalize(
                    "history", lambda e=entry: msgspec.json.encode(e), normalize.history_event, page.code, page.quote,
                    page.quality, entry, page.resolution, ts_recv, True)
                if event is not None:
                    events.append(event)
            if sink is not None:
                sink.extend(events)
                total += len(events)
            elif dedupe:
                total += await ing.emit_batch_new(events)
            elif events:
                total += await ing.emit_batch(events, replay=True)
        return total

    async def quotes(self, quotes: Sequence[str], start_ns: int, end_ns: int, resolution: str | None = None) -> int:
        """History of quotes (or classes) in [start, end] at a resolution, published once."""
        ing = self.ing
        result = await ing.ready()
        total = 0
        for quote in result.expand(quotes):
            total += await self.history(quote, start_ns, end_ns, resolution or ing.settings.history_resolution,
                                        dedupe=True)
        await ing.flush()
        return total

    async def expired(self, item: str, start_ns: int, end_ns: int, resolution: str | None = None) -> int:
        """An expired future ``SOURCE/CLASS/YYYY/M`` through the expired route (with SHIFT)."""
        ing = self.ing
        src, cls, year, month = item.split("/")
        cls_ref = f"/market/sources/{src}/future/{cls}"
        quote = hist.expired_quote_ref(cls_ref, int(year), int(month))
        total = await self.history(quote, start_ns, end_ns, resolution or ing.settings.history_resolution,
                                   dedupe=True, expired=(cls_ref, int(year), int(month)),
                                   shift_s=ing.settings.expired_shift_s)
        await ing.flush()
        return total

    async def startup_history(self) -> None:
        ing, s = self.ing, self.ing.settings
        await ing.ready()
        now = ing.now_ns()
        start = s.time_ns(s.history_start, now) or now - 86_400 * NS
        end = s.time_ns(s.history_end, now) or now
        backoff = Backoff(s.reconnect_initial_s, s.reconnect_max_s)
        while True:
            try:
                n = await self.quotes(s.history_quotes, start, end) if s.history_quotes and s.history_start else 0
                for item in s.expired:
                    n += await self.expired(item, start, end)
                ing.log.info("start-up history: %d events", n)
                return
            except (Unavailable, SessionExpired) as exc:
                ing.log.warning("start-up history failed, retrying: %r", exc)
                await backoff.sleep()

    # --- news -------------------------------------------------------------------------------------
    async def search_news(self, source: str, start_s: int, end_s: int, langs: Sequence[str] | None = None,
                          keyword: str | None = None, *, dedupe: bool = True, replay: bool = True,
                          sink: list[MarketEvent] | None = None) -> int:
        """Articles of a source in [start, end] (languages, keyword) -> News events (published, or
        with ``sink`` collected there, unpublished)."""
        ing, s = self.ing, self.ing.settings
        body = await ing.client.search_news(source, start_s, end_s, s.news_langs if langs is None else langs,
                                            s.news_keyword if keyword is None else keyword)
        try:
            reply = msgspec.json.decode(body, type=dict[str, Any])
            raws = msgspec.json.decode(msgspec.json.encode(reply.get("data", [])), type=list[msgspec.Raw])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await ing.frames.reject("news", body, f"bad search reply: {exc}")
            return 0
        ts_recv = ing.now_ns()
        events: list[MarketEvent] = []
        for raw in raws:
            obj = await ing.frames.normalize("news", raw, _news_article, raw)
            if obj is None:
                continue
            if s.news_fetch_content and obj.content is None:
                full = await ing.client.get_raw(f"/news/sources/{source}/article/{obj.id}", channel="news")
                obj = await ing.frames.normalize("news", full, _news_article, full)
                if obj is None:
                    continue
            event = await ing.frames.normalize("news", raw, normalize.news, obj, ts_recv, replay=replay, source=source)
            if event is not None:
                events.append(event)
        events.sort(key=lambda e: e.ts_event)
        if sink is not None:
            sink.extend(events)
            return len(events)
        if dedupe:
            return await ing.emit_batch_new(events)
        return await ing.emit_batch(events, replay=True) if events else 0

    async def startup_news(self) -> None:
        ing, s = self.ing, self.ing.settings
        await ing.ready()
        now = ing.now_ns() // NS
        for source in s.news_sources:
            try:
                await self.search_news(source, now - int(s.news_lookback_s), now)
            except (Unavailable, VendorError) as exc:
                ing.log.warning("news search of %s failed: %r", source, exc)

    # --- replay -----------------------------------------------------------------------------------
    def quote_of(self, venue: str, symbol: str) -> QuoteMeta:
        crawl = self.ing.crawl
        if crawl is None:
            raise RuntimeError("the reference tree is not loaded yet")
        meta = crawl.by_symbol().get((venue, symbol))
        if meta is None:
            raise ReplayUnsupported(f"unknown sitagri quote {venue}/{symbol}")
        return meta

    async def replay(self, request: ReplayRequest) -> int:
        ing = self.ing
        kind = request.kind
        if kind == "news":
            n = await self.search_news(denormalize_symbol(request.venue), request.start_ns // NS,
                                       -(-request.end_ns // NS), langs=(), keyword="", dedupe=False)
            await ing.flush()
            return n
        if kind not in ("market_price", "cash_price", "index_price", "bar"):
            raise ReplayUnsupported(f"sitagri replays market_price, cash_price, index_price, bar and news, not {kind}")
        meta = self.quote_of(request.venue, request.symbol)
        if kind == "bar":
            res = ing.settings.history_resolution if ing.settings.history_resolution != "TICK" else "MINUTE"
        else:
            if meta.kind == "currency":
                raise ReplayUnsupported("TICK history is unavailable for currencies: replay bars")
            res = "TICK"
        n = await self.history(meta.ref, request.start_ns, request.end_ns - 1, res, dedupe=False)
        await ing.flush()
        return n


def _news_article(raw: bytes | msgspec.Raw) -> Any:
    """A news article object from a search reply item or an article fetch (else Malformed)."""
    obj = normalize.decode_push(raw)
    if not isinstance(obj, normalize.VNews):
        raise normalize.Malformed(f"not a newsArticle in a search reply: {type(obj).__name__}")
    return obj
