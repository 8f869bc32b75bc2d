"""The Sitagri live feed: one websocket ``/api/netbus`` (token as subprotocol), price listeners for
the configured quotes (classes expand to every member) and news listeners for the configured
sources; pushes -> MarketPrice / BookSnapshot / CashPrice / IndexPrice / News.

A lost socket (maintenance reboot) is reconnected with back-off, every listener registered again,
and the missed range back-filled from the history endpoints (a
:class:`~marketbus.vendor.gaps.GapTracker`: ``gap`` then ``resynced``). Long polling
``GET /api/netbus`` takes over when configured, and automatically after repeated failed
websocket connects; the websocket is tried again every ``ws_retry_s``. Order books of quotes that
have them are polled every ``order_book_interval_s``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import msgspec

from marketbus.contracts.base import NO_VENUE
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import BUS_ERRORS
from marketbus.runtime.tasks import cancel_and_wait
from marketbus.vendor.gaps import GapTracker

from . import history as hist
from . import normalize
from .client import SessionExpired, Unavailable, VendorError
from .netbus import LongPollNetbus, NetbusClosed, NetbusRefused, WsNetbus, failed_registrations, register_refs
from .parts import SitagriHost

NS = 1_000_000_000
FEED = "sitagri/netbus"


class SitagriLive:
    def __init__(self, ingestor: SitagriHost) -> None:
        self.ing = ingestor
        self.live_quotes: list[str] = []
        self.listening: frozenset[str] = frozenset()  # live_quotes, for the hot path
        self.last_ts: dict[str, int] = {}  # quote ref -> ts of its newest published price
        self.transport = "none"
        self.ws: WsNetbus | None = None
        self.lp: LongPollNetbus | None = None  # the long-polling session, while there is one
        self.gaps_filled = 0
        self.pushes = 0
        self.gap = GapTracker(ingestor, ingestor.source, venue=NO_VENUE, symbol=NO_VENUE, kind="market_price",
                              feed=FEED)
        self._gap_from: dict[str, int] = {}  # quote ref -> newest published price when the feed was lost
        self._first_live: dict[str, int] | None = None  # quote ref -> first price after a reconnect
        self._frames = ingestor.metrics.frames_in.labels(ingestor.source, "netbus")
        self._live_metrics: dict[type, tuple[Any, Any]] = {}

    def _count_frame(self) -> None:
        self._frames.inc()

    async def on_push(self, raw: msgspec.Raw) -> None:
        """One pushed object (websocket or long polling) -> its event (the hot path)."""
        ing = self.ing
        decoded = await ing.frames.normalize("netbus", raw, _decode_push, raw, time.time_ns())
        if decoded is None:
            return
        obj, event = decoded
        self.pushes += 1
        quote = getattr(obj, "quote", None)
        if quote is not None and quote not in self.listening:
            return  # sent before its listener was unregistered (feed control; long polling queues them)
        if quote is not None and type(obj) is not normalize.VOrderBook:
            if event.ts_event > self.last_ts.get(quote, 0):
                self.last_ts[quote] = event.ts_event
            first = self._first_live
            if first is not None and quote not in first:
                first[quote] = event.ts_event
        if ing.recent.add(event.id):
            # the hot path: the pipelined publisher directly, with cached metric children
            # (Ingestor.emit looks the labelled metrics up for every event)
            await ing.publisher.publish_event(event)  # type: ignore[union-attr]
            kind = type(event)
            counters = self._live_metrics.get(kind)
            if counters is None:
                tag = kind.__struct_config__.tag
                counters = self._live_metrics[kind] = (ing.metrics.events_out.labels(ing.source, tag),
                                                       ing.metrics.event_lag.labels(ing.source, tag))
            counters[0].inc()
            counters[1].observe(max(0.0, (event.ts_recv - event.ts_event) / 1e9))
            ing.feeds.count(f"sitagri/{event.venue}/{event.symbol}", 1, event.ts_recv)

    # --- the session loop -------------------------------------------------------------------------
    async def loop(self) -> None:
        ing, s = self.ing, self.ing.settings
        await ing.ready()
        mode = "longpoll" if s.transport == "longpoll" else "websocket"
        ws_failures = 0
        backoff = Backoff(s.reconnect_initial_s, s.reconnect_max_s)
        lost_at: int | None = None
        while True:
            refs = register_refs(self.live_quotes, s.news_sources)  # feed control may have changed them
            try:
                if mode == "websocket":
                    await self.ws_session(refs, lost_at)
                else:
                    switch = await self.longpoll_session(refs, lost_at)
                    if switch:
                        lost_at = self.lost()
                        mode, ws_failures = "websocket", 0
                        backoff.reset()
                        continue
            except NetbusRefused as exc:
                ws_failures += 1
                ing.metrics.reconnects.labels(ing.source).inc()
                ing.log.warning("websocket unavailable (%d in a row): %s", ws_failures, exc)
                with contextlib.suppress(Exception):
                    await ing.client.start()  # a refused token? this logs in again (401 -> login)
                if lost_at is None and self.transport != "none":
                    lost_at = self.lost()
                if s.transport == "auto" and ws_failures >= s.ws_failures_before_longpoll:
                    ing.log.warning("falling back to long polling after %d failed websocket connects", ws_failures)
                    mode, ws_failures = "longpoll", 0
                    continue
                await backoff.sleep()
                continue
            except (NetbusClosed, Unavailable, SessionExpired, VendorError, *BUS_ERRORS) as exc:
                # BUS_ERRORS: a back-fill could not publish; the gap stays open and is back-filled
                # again on the next session
                ing.metrics.reconnects.labels(ing.source).inc()
                if lost_at is None:
                    lost_at = self.lost()
                ing.metrics.feed_state.labels(ing.source, "netbus").set(0)
                await ing.publish_feed_status(ing.source, "disconnected", detail=f"{self.transport}: {exc}", feed=FEED)
                if mode == "longpoll" and s.transport == "auto":
                    mode, ws_failures = "websocket", 0  # after an outage, try the websocket first
                await backoff.sleep()
                continue
            else:
                backoff.reset()
            lost_at = None

    async def set_quotes(self, quotes: list[str]) -> None:
        """Feed control: listen to ``quotes`` from now on; the difference is registered (and
        unregistered) on the current session at once, the next session registers them all."""
        added = [q for q in quotes if q not in self.live_quotes]
        removed = [q for q in self.live_quotes if q not in quotes]
        self.live_quotes = list(quotes)
        self.listening = frozenset(quotes)
        session = self.ws if self.ws is not None and self.ws.connected else self.lp
        if session is None:
            return
        try:  # a session closing meanwhile is fine: the next one registers self.live_quotes
            if removed:
                await session.register(register_refs(removed, (), unregister=True))
            if added:
                refs = register_refs(added, ())
                for ref in failed_registrations(refs, await session.register(refs)):
                    self.ing.log.warning("listener %s refused", ref)
        except (NetbusClosed, Unavailable, SessionExpired, VendorError, TimeoutError) as exc:
            self.ing.log.warning("listeners not changed on the closing session (%r): the next one will", exc)

    def lost(self) -> int:
        """The feed is lost now: remember where every quote was (the gap starts there)."""
        self._gap_from = dict(self.last_ts)
        self._first_live = {}
        now = self.ing.now_ns()
        self.gap.interrupted(now)
        return now

    async def connected(self, transport: str, replies: list[Any], refs: list[str], lost_at: int | None) -> None:
        ing = self.ing
        self.transport = transport
        ing.metrics.feed_state.labels(ing.source, "netbus").set(1)
        bad = failed_registrations(refs, replies)
        detail = f"{transport}, {len(refs) - len(bad)}/{len(refs)} listeners"
        await ing.publish_feed_status(ing.source, "connected", detail=detail, feed=FEED)
        for ref, reply in zip(refs, replies, strict=False):
            if ref in bad:
                ing.log.warning("listener %s refused: %s", ref, reply)
        if lost_at is not None and ing.settings.gap_backfill:
            await self.backfill_gap(lost_at)

    async def ws_session(self, refs: list[str], lost_at: int | None) -> None:
        ing, s = self.ing, self.ing.settings
        keeper = ing.client.keeper
        ws = WsNetbus(ing.client.ws_url, keeper, self.on_push, ing.frames,
                      keepalive_s=s.ws_keepalive_s or max(0.5, keeper.timeout_s / 3),
                      open_timeout_s=min(10.0, s.request_timeout_s), on_frame=self._count_frame)
        await ws.connect()
        self.ws = ws
        try:
            replies = await ws.register(refs, s.register_timeout_s)
            await self.connected("websocket", replies, refs, lost_at)
            reason = await ws.wait_closed()
        finally:
            await ws.close()
        raise NetbusClosed(reason)

    async def longpoll_session(self, refs: list[str], lost_at: int | None) -> bool:
        """Long polling until it fails (raises) or, in auto mode, the websocket works again (True)."""
        ing, s = self.ing, self.ing.settings
        lp = self.lp = LongPollNetbus(ing.client, self.on_push, ing.frames, on_frame=self._count_frame)
        replies = await lp.register(refs)
        await self.connected("longpoll", replies, refs, lost_at)

        async def poll() -> None:
            while True:
                await lp.poll_once()

        async def probe() -> None:
            while True:
                await asyncio.sleep(s.ws_retry_s)
                ws = WsNetbus(ing.client.ws_url, ing.client.keeper, self.on_push, ing.frames)
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
            self.lp = None
            await cancel_and_wait(tasks)
        if tasks[0] in done:
            exc = tasks[0].exception()
            raise exc if exc is not None else NetbusClosed("long polling stopped")
        ing.log.info("the websocket is back: leaving long polling")
        with contextlib.suppress(Exception):
            await lp.register(register_refs(self.live_quotes, s.news_sources, unregister=True))
        return True

    # --- gaps -------------------------------------------------------------------------------------
    async def backfill_gap(self, lost_at: int) -> int:
        """Back-fill every live quote from its newest published price (or ``lost_at``) to now, and
        news since ``lost_at``; feed status ``gap`` then ``resynced``."""
        ing = self.ing
        # The gap of a quote runs from its last price before the loss to its first price after
        # the new registration (the register snapshot). The vendor's history may lag its live
        # feed by up to a second: wait for that second to be over before asking for it.
        starts = {q: self._gap_from.get(q, lost_at) for q in self.live_quotes}
        first = self._first_live if self._first_live is not None else {}
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_until(lambda: all(q in first for q in self.live_quotes)), 2.0)
        now = ing.now_ns()
        ends = {q: first.get(q, now) for q in self.live_quotes}
        self._first_live = None
        newest = max(ends.values(), default=now)
        await asyncio.sleep(max(0.0, min(1.2, (-(-newest // NS) * NS - ing.now_ns()) / NS + 0.05)))
        self.gap.interrupted(lost_at)
        await self.gap.report(min([lost_at, *starts.values()]), end_ns=max(newest, lost_at),
                              detail="back-filling from history")
        total = 0
        assert ing.crawl is not None
        for quote in self.live_quotes:
            meta = ing.crawl.quotes.get(quote)
            resolution = "MINUTE" if meta is not None and meta.kind == "currency" else "TICK"
            try:
                total += await ing.backfill.history(quote, starts[quote], ends[quote], resolution, dedupe=True)
            except (VendorError, normalize.Malformed, hist.HistoryStuck) as exc:
                ing.log.warning("gap back-fill of %s failed: %r", quote, exc)
        for source in ing.settings.news_sources:
            with contextlib.suppress(VendorError, normalize.Malformed):
                total += await ing.backfill.search_news(source, lost_at // NS, now // NS + 1, dedupe=True)
        await ing.flush()
        self.gaps_filled += 1
        await self.gap.resynced(f"{total} events back-filled")
        ing.feeds.set_state(FEED, "connected")
        return total

    # --- order books ------------------------------------------------------------------------------
    async def order_book_loop(self) -> None:
        ing = self.ing
        result = await ing.ready()
        while True:
            await asyncio.sleep(ing.settings.order_book_interval_s)
            quotes = [q for q in self.live_quotes if (m := result.quotes.get(q)) and m.order_book]
            if not quotes:
                continue
            try:
                raws = await ing.client.batch_raw([f"{q}/orderBook" for q in quotes], channel="orderbook")
            except (Unavailable, VendorError, *BUS_ERRORS) as exc:
                ing.log.warning("order book poll failed: %r", exc)
                continue
            for raw in raws:
                await self.on_push(raw)


def _decode_push(raw: msgspec.Raw, ts_recv: int) -> tuple[Any, Any]:
    """The vendor object and its event (an order book keeps its raw JSON)."""
    obj = normalize.decode_push(raw)
    return obj, normalize.push(obj, ts_recv, bytes(raw) if type(obj) is normalize.VOrderBook else None)


async def _until(predicate: Callable[[], bool], interval: float = 0.02) -> None:
    while not predicate():
        await asyncio.sleep(interval)
