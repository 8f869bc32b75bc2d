"""The Sitagri live feed: one websocket ``/api/netbus`` (token as subprotocol), price listeners for
the configured quotes (classes expand to every member) and news listeners for the configured
sources; pushes -> MarketPrice / BookSnapshot / CashPrice / IndexPrice / News.

A lost socket (maintenance reboot) is reconnected with back-off, every listener registered again,
and the missed range back-filled from the history endpoints (a
:class:`~marketbus.vendor.gaps.GapTracker`: ``gap`` then ``resynced``). Live pushes the bus did
not take (an outage longer than ``publish_retry_s``) are back-filled the same way once it takes
messages again (``publish_gap_loop``). Where each quote is safely published up to (acked, no gap
open before it) is kept in the ``ingest_state`` bucket (a :class:`~marketbus.vendor.cursor.CursorStore`,
keys ``sitagri.live.<venue>.<symbol>``): a
restarted ingestor (a crash, kill -9) back-fills from there, up to a day back. Long polling
``GET /api/netbus`` takes over when configured, and automatically after repeated failed
websocket connects; the websocket is tried again every ``ws_retry_s``. Order books: :mod:`.books`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from marketbus.contracts.base import NO_VENUE, MarketEvent
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import BUS_ERRORS
from marketbus.runtime.tasks import cancel_and_wait
from marketbus.vendor.cursor import CursorStore
from marketbus.vendor.gaps import GapTracker

from . import history as hist
from . import normalize
from .client import SessionExpired, Unavailable, VendorError
from .netbus import LongPollNetbus, NetbusClosed, NetbusRefused, WsNetbus, failed_registrations, register_refs
from .parts import SitagriHost

NS = 1_000_000_000
FEED = "sitagri/netbus"
PUBLISHING_FEED = "sitagri/publishing"
NEWS = ""  # the key of news pushes in the unpublished ranges (price pushes: their quote)
RESUME_MAX_NS = 86_400 * NS  # a restart back-fills at most this far back
SAVE_EVERY_S = 1.0  # resume points are written this often (when they moved)
# A session ends on these (BUS_ERRORS: a back-fill could not publish; the gap stays open and is
# back-filled again on the next session). Named tuples: mypy cannot type ``except (A, *B)``.
SESSION_ERRORS: tuple[type[BaseException], ...] = (NetbusClosed, Unavailable, SessionExpired, VendorError, *BUS_ERRORS)
POLL_ERRORS: tuple[type[BaseException], ...] = (Unavailable, VendorError, *BUS_ERRORS)
BACKFILL_ERRORS: tuple[type[BaseException], ...] = (*POLL_ERRORS, normalize.Malformed, hist.HistoryStuck)


class GapNotFilled(Unavailable):
    """A back-fill did not cover every quote of its gap (its history could not be read): the gap
    stays open (no ``resynced``) and the session ends, so that the next one back-fills it again,
    up to ``GAP_ATTEMPTS`` sessions in a row; then the hole is reported lost and live data goes on
    (a history the vendor never serves must not keep the live feed down)."""


GAP_ATTEMPTS = 3  # sessions in a row that try to back-fill one gap before it is reported lost


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
        # Live pushes whose publishing is not settled yet: (ack future, event id, quote or NEWS,
        # ts_event). One the publisher gives up on (the bus down for longer than publish_retry_s)
        # is forgotten by the recent ids, and its time joins the range of its quote to back-fill
        # from history once the bus is back (``publish_gap_loop``).
        self._sent: deque[tuple[asyncio.Future[Any], str, str, int]] = deque()
        self.unpublished: dict[str, tuple[int, int]] = {}  # quote or NEWS -> (first, last) ts_event
        self.unpublished_count = 0
        self.publish_gaps_filled = 0
        self.acked_ts: dict[str, int] = {}  # quote -> newest live price the stream acked
        self.netbus_gap_open = False  # the feed was lost and the gap is not back-filled yet
        self.gap_attempts = 0  # sessions in a row whose back-fill of the open gap failed
        self._saved: dict[str, int] = {}
        self.cursors: CursorStore[int] | None = None
        self.pub_gap = GapTracker(ingestor, ingestor.source, venue=NO_VENUE, symbol=NO_VENUE, kind="market_price",
                                  feed=PUBLISHING_FEED)

    def _count_frame(self) -> None:
        self._frames.inc()

    async def on_push(self, raw: msgspec.Raw) -> None:
        """One pushed object (websocket or long polling) -> its event (the hot path)."""
        ing = self.ing
        decoded = await ing.frames.normalize("netbus", raw, _decode_push, raw, time.time_ns())
        if decoded is None:
            return
        quote, book, event = decoded
        self.pushes += 1
        if quote is not None and quote not in self.listening:
            return  # sent before its listener was unregistered (feed control; long polling queues them)
        if quote is not None and not book:
            if event.ts_event > self.last_ts.get(quote, 0):
                self.last_ts[quote] = event.ts_event
            first = self._first_live
            if first is not None and quote not in first:
                first[quote] = event.ts_event
        if ing.recent.add(event.id):
            # the hot path: the pipelined publisher directly, with cached metric children
            # (Ingestor.emit looks the labelled metrics up for every event)
            future = await ing.publisher.publish_event(event)  # type: ignore[union-attr]
            if not book:  # a book is a snapshot: the next one replaces it
                self._sent.append((future, event.id, NEWS if quote is None else quote, event.ts_event))
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
        lost_at: int | None = await self.resume() if s.gap_backfill else None
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
                await ing.session_flowing(False)  # no session: nothing flows (a first connect too)
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
            except SESSION_ERRORS as exc:
                ing.metrics.reconnects.labels(ing.source).inc()
                if lost_at is None:
                    lost_at = self.lost()
                ing.metrics.feed_state.labels(ing.source, "netbus").set(0)
                await ing.publish_feed_status(ing.source, "disconnected", detail=f"{self.transport}: {exc}", feed=FEED)
                await ing.session_flowing(False)
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
        for quote in removed:  # a later loss is no gap of it; a gap open now still covers it (_gap_from)
            self.last_ts.pop(quote, None)
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
        if not self.netbus_gap_open:  # a loss during a loss: the first one's starting points hold
            self._gap_from = dict(self.last_ts)
        self.netbus_gap_open = True
        self._first_live = {}
        now = self.ing.now_ns()
        self.gap.interrupted(now)
        return now

    # --- resume points (a restart back-fills what it missed) ---------------------------------------
    def _resume_key(self, quote: str) -> tuple[str, str] | None:
        crawl = self.ing.crawl
        meta = crawl.quotes.get(quote) if crawl is not None else None
        return None if meta is None else (meta.venue, meta.symbol)

    def resume_points(self) -> dict[str, int]:
        """Per quote, the time up to which everything is published: its newest acked price, or
        less while a gap before it is open (a lost feed, pushes the bus did not take)."""
        out = {}
        lost_at = self.gap.since_ns or (self.gap.open_gap[0] if self.gap.open_gap else None)
        for quote, ts in self.acked_ts.items():
            point = ts
            if self.netbus_gap_open:
                point = min(point, self._gap_from.get(quote, lost_at if lost_at is not None else point))
            if quote in self.unpublished:
                point = min(point, self.unpublished[quote][0] - 1)
            out[quote] = point
        return out

    async def save_resume_points(self) -> None:
        if self.cursors is None:
            return
        for quote, point in self.resume_points().items():
            key = self._resume_key(quote)
            if key is None or self._saved.get(quote) == point:
                continue
            await self.cursors.put(key, point)
            self._saved[quote] = point

    async def resume(self) -> int | None:
        """At start-up: where the previous run left each live quote (the ``ingest_state`` bucket).
        Found ones become a feed loss of this session (back-filled once connected): the time of
        the oldest (at most a day ago), else None (a first run)."""
        ing = self.ing
        kv = await ensure_bucket(ing.js, INGEST_STATE, ing.settings.stream_replicas)
        self.cursors = CursorStore(kv, ing.source, "live", int)
        now = ing.now_ns()
        points: dict[str, int] = {}
        for quote in self.live_quotes:
            key = self._resume_key(quote)
            point = await self.cursors.get(key) if key is not None else None
            if point is not None:  # else a new quote (or an unreadable value): no resume
                points[quote] = max(point, now - RESUME_MAX_NS)
        if not points:
            return None
        lost_at = min(points.values())
        self.acked_ts.update(points)  # the saved points do not go back until newer prices are acked
        self._saved.update(points)
        self.last_ts.update(points)
        self._gap_from = dict(points)
        self.netbus_gap_open = True
        self._first_live = {}
        self.gap.interrupted(lost_at)
        ing.log.info("resuming %d quotes from the previous run (oldest %.1fs ago)", len(points), (now - lost_at) / NS)
        return lost_at

    async def connected(self, transport: str, replies: list[Any], refs: list[str], lost_at: int | None) -> None:
        ing = self.ing
        self.transport = transport
        ing.metrics.feed_state.labels(ing.source, "netbus").set(1)
        bad = failed_registrations(refs, replies)
        detail = f"{transport}, {len(refs) - len(bad)}/{len(refs)} listeners"
        await ing.publish_feed_status(ing.source, "connected", detail=detail, feed=FEED)
        await ing.session_flowing(True)
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
        # the quotes lost now: the live ones, and every one the gap started for (a resume point of
        # the previous run, a price before the loss) even if feed control does not list it at this
        # moment: its hole is back-filled all the same. One added meanwhile (feed control, during
        # the awaits below) has no gap (its registration snapshot starts it) and no entry in starts/ends
        live = list(self.live_quotes)
        quotes = list(dict.fromkeys([*live, *self._gap_from]))
        starts = {q: self._gap_from.get(q, lost_at) for q in quotes}
        first = self._first_live if self._first_live is not None else {}
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_until(lambda: all(q in first for q in live)), 2.0)
        now = ing.now_ns()
        ends = {q: first.get(q, now) for q in quotes}
        self._first_live = None
        newest = max(ends.values(), default=now)
        await asyncio.sleep(max(0.0, min(1.2, (-(-newest // NS) * NS - ing.now_ns()) / NS + 0.05)))
        self.gap.interrupted(lost_at)
        await self.gap.report(min([lost_at, *starts.values()]), end_ns=max(newest, lost_at),
                              detail="back-filling from history")
        assert ing.crawl is not None
        events: list[MarketEvent] = []
        failed: list[str] = []
        for quote in quotes:
            meta = ing.crawl.quotes.get(quote)
            resolution = "MINUTE" if meta is not None and meta.kind == "currency" else "TICK"
            page: list[MarketEvent] = []
            try:
                await ing.backfill.history(quote, starts[quote], ends[quote], resolution, dedupe=True, sink=page)
            except (VendorError, normalize.Malformed, hist.HistoryStuck) as exc:
                ing.log.warning("gap back-fill of %s failed: %r", quote, exc)
                failed.append(quote)
            known = self._gap_from.get(quote)  # published (acked before a restart): not again
            events.extend(e for e in page if known is None or e.ts_event > known)
        for source in ing.settings.news_sources:
            with contextlib.suppress(VendorError, normalize.Malformed):
                await ing.backfill.search_news(source, lost_at // NS, now // NS + 1, dedupe=True, sink=events)
        total = await self._publish_fresh(events)  # what was read is published either way
        if failed:
            what = (f"the gap of {len(failed)}/{len(quotes)} quotes could not be back-filled "
                    f"({', '.join(failed[:3])}{', ...' if len(failed) > 3 else ''})")
            self.gap_attempts += 1
            if self.gap_attempts < GAP_ATTEMPTS:  # not resynced: the gap stays open for the next session
                raise GapNotFilled(what)
            ing.log.error("%s in %d sessions: reported lost", what, self.gap_attempts)
            hole = self.gap.open_gap or (min([lost_at, *starts.values()]), max(newest, lost_at))
            await self.gap.lost(hole, f"{what} ({self.gap_attempts} tries; {total} events back-filled)")
        else:
            self.gaps_filled += 1
            await self.gap.resynced(f"{total} events back-filled")
        self.gap_attempts = 0
        self.netbus_gap_open = False
        ing.feeds.set_state(FEED, "connected")
        return total

    # --- live pushes the bus did not take -------------------------------------------------------
    def sweep_sent(self) -> int:
        """Settle the sent pushes whose ack came or failed; the failed ones join ``unpublished``."""
        sent, failed = self._sent, 0
        while sent:
            future, event_id, key, ts = sent[0]
            if not future.done():
                break
            sent.popleft()
            if not future.cancelled() and future.exception() is None:
                if key != NEWS and ts > self.acked_ts.get(key, 0):
                    self.acked_ts[key] = ts
            else:
                self.ing.recent.discard(event_id)  # the back-fill must publish it
                lo, hi = self.unpublished.get(key, (ts, ts))
                self.unpublished[key] = (min(lo, ts), max(hi, ts))
                failed += 1
        self.unpublished_count += failed
        return failed

    def _bus_ok(self) -> bool:
        publisher = self.ing.publisher
        return publisher is not None and publisher.blocked is None and bool(self.ing.nc.is_connected)

    async def publish_gap_loop(self, every_s: float = 0.5) -> None:
        """Live pushes given up on (an outage longer than ``publish_retry_s``) are a ``gap`` of the
        ``sitagri/publishing`` feed, back-filled from history once the bus takes messages again
        (for a second), then ``resynced``. A back-fill that fails is tried again."""
        ing = self.ing
        backoff = Backoff(ing.settings.reconnect_initial_s, max(1.0, ing.settings.reconnect_max_s))
        ok_since: float | None = None
        saved_at = 0.0
        while True:
            await asyncio.sleep(every_s)
            if self.sweep_sent():
                self.pub_gap.interrupted(min(lo for lo, _ in self.unpublished.values()))
            if not self._bus_ok():
                ok_since = None
                continue
            if time.monotonic() - saved_at >= SAVE_EVERY_S:
                saved_at = time.monotonic()
                try:
                    await self.save_resume_points()
                except Exception as exc:
                    ing.log.warning("could not save the live resume points: %r", exc)
            ok_since = ok_since or time.monotonic()
            if not self.unpublished or time.monotonic() - ok_since < 1.0:
                continue
            try:
                await self.backfill_unpublished()
                backoff.reset()
            except BACKFILL_ERRORS as exc:
                ing.log.warning("back-fill of the unpublished live pushes failed (tried again): %r", exc)
                await backoff.sleep()

    async def backfill_unpublished(self) -> int:
        """Report the unpublished ranges as a gap, publish their history (what the recent ids do
        not hold: the failed pushes, and anything else missed), then ``resynced``. The ranges are
        dropped only once the back-fill is acked."""
        ing = self.ing
        # the publisher keeps the give-up error of the live pushes for its next flush(): they are
        # handled here (a later flush, e.g. a reconnect's back-fill, must not end its session)
        with contextlib.suppress(*BUS_ERRORS):
            await ing.flush()
        ranges = dict(self.unpublished)
        start = min(lo for lo, _ in ranges.values())
        end = max(hi for _, hi in ranges.values())
        count = self.unpublished_count
        await self.pub_gap.report(start, end_ns=end, detail=(
            f"{count} live pushes could not be published (bus down > {ing.settings.publish_retry_s:.0f}s): "
            "back-filling from history"))
        assert ing.crawl is not None
        events: list[MarketEvent] = []
        for key, (lo, hi) in ranges.items():
            if key == NEWS:
                for source in ing.settings.news_sources:
                    await ing.backfill.search_news(source, lo // NS, hi // NS + 1, sink=events)
                continue
            meta = ing.crawl.quotes.get(key)
            resolution = "MINUTE" if meta is not None and meta.kind == "currency" else "TICK"
            await ing.backfill.history(key, lo, hi, resolution, dedupe=True, sink=events)
        fresh = await self._publish_fresh(events)  # raises if the bus failed again: tried again
        for key, rng in ranges.items():  # ranges grown meanwhile stay (their new part is re-read)
            if self.unpublished.get(key) == rng:
                del self.unpublished[key]
        self.unpublished_count -= count
        self.publish_gaps_filled += 1
        await self.pub_gap.resynced(f"{fresh} events back-filled")
        ing.log.info("back-filled %d events of %d unpublished live pushes", fresh, count)
        return fresh

    async def _publish_fresh(self, events: list[MarketEvent]) -> int:
        """Publish the back-filled events the recent ids do not hold, and wait for their acks;
        only then are they recorded as seen (a failed back-fill is repeated in full).

        One message per event, Nats-Msg-Id = event id like the live push: a push the publisher
        gave up on may still have been stored (its ack lost, or sent on reconnect from the
        client's buffer), and a restart re-reads from its last saved point; the stream's
        duplicate window drops those."""
        recent = self.ing.recent
        fresh = list({e.id: e for e in events if e.id not in recent}.values())
        if not fresh:
            return 0
        await (await self.ing.emit_group(fresh))
        for event in fresh:
            recent.add(event.id)
        return len(fresh)


def _decode_push(raw: msgspec.Raw, ts_recv: int) -> tuple[str | None, bool, Any]:
    """(the quote or None, whether it is an order book, the event): ``normalize.live_push`` (an
    order book keeps its raw JSON; a live tick's usual shape is read by compiled code)."""
    return normalize.live_push(raw, ts_recv)


async def _until(predicate: Callable[[], bool], interval: float = 0.02) -> None:
    while not predicate():
        await asyncio.sleep(interval)
