"""The FinX ingestor: wires the TickPlant session and the normalizer to the bus.

- Reference data of the configured tickers -> ``ref.currency.finx._.<TICKER>``, and the configured
  pairs -> ``ref.instrument.finx._.<BASE-QUOTE>``.
- ``tickSnap`` polled per pair -> live ``Tick`` (``md.tick.finx.<EXCHANGE>.<BASE-QUOTE>``); an
  unchanged snap is not a new event.
- ``tickHistory`` pages (100 unsorted rows) from a cursor, sorted and advanced until caught up,
  published as batch envelopes (``replay=True``); the cursor (time + ids at that time) is saved in
  the ``ingest_state`` KV bucket once the page is acked, so a restart or a lost session resumes
  where it stopped, with no duplicate and no hole.
- Publishing that fails (no stream leader on a cluster, NATS down: a ``PublishError`` or a NATS
  error out of the session) ends the session as ``blocked`` (``finx/session``); once the bus is
  back, the next session first re-sends, unchanged, what was published since the last commit
  (same batch ids: JetStream drops what it had stored), then back-fills the gap from the cursor.
- ``replay.finx`` fetches a range with tickHistory and publishes ``replay=True`` batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgspec

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.market import Tick
from marketbus.contracts.reference import Currency
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.contracts.subjects import denormalize_symbol
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import BUS_ERRORS, Ingestor, ReplayUnsupported
from marketbus.vendor.cursor import CursorStore
from marketbus.vendor.frames import FrameGuard
from marketbus.vendor.gaps import GapTracker

from . import normalize
from .client import SessionLost, TickPlantClient
from .settings import FinxIngestSettings

MS = 1_000_000


class Cursor(msgspec.Struct):
    """History progress of one pair: every tick before ``ts_ns`` is published, and so are the
    ticks at ``ts_ns`` whose ids are listed (rows sharing the boundary time)."""

    ts_ns: int
    boundary: list[str] = []


@dataclass
class PairState:
    pair: str
    symbol: str
    cursor: int
    origin: int = 0  # where this process started paging (the saved cursor or the configured start)
    boundary: set[str] = field(default_factory=set)
    last_snap_id: str | None = None
    snap_ids: dict[str, int] = field(default_factory=dict)  # published by a snap, ahead of the cursor
    committed: tuple[int, frozenset[str]] | None = None
    tracker: GapTracker | None = None  # the history's gap: interrupted -> gap -> resynced

    @property
    def gap(self) -> tuple[int, int] | None:
        """What is missing and not back-filled yet (None: nothing)."""
        if self.tracker is None:
            return None
        if self.tracker.since_ns is not None:  # interrupted, not reported yet
            start = self.tracker.open_gap[0] if self.tracker.open_gap else self.cursor
            return (start, self.tracker.since_ns)
        return self.tracker.open_gap


@dataclass
class Page:
    ticks: list[Tick]  # new ticks, sorted
    cursor: int
    boundary: set[str]
    full: bool  # the vendor returned a whole page: there is more
    stuck: bool = False  # a whole page at one timestamp: advanced by 1 ms (a hole is possible)


class FinxIngestor(Ingestor):
    source: ClassVar[str] = "finx"
    resends_failed_publishes = True  # _unconfirmed is re-sent after a publishing failure
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
        self.currencies: dict[str, Currency] = {}
        self._ref_at = 0.0
        self._next_snap = 0.0
        self._commit_at = 0.0
        self.sessions = 0
        # what was published since the last commit, as published: (events, replay flag or None for
        # a single event, ack futures). After a publishing failure it is re-sent unchanged, so the
        # batch ids (Nats-Msg-Id) are the same and JetStream drops what it had stored already.
        self._unconfirmed: list[tuple[list[Tick], bool | None, list[Any]]] = []


    def _vendor_refused(self, channel: str, exc: normalize.VendorError, what: str) -> None:
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
        now = self.now_ns()
        start = self.settings.history_start_ns(now)
        for pair in dict.fromkeys(p.upper() for p in self.settings.pairs):
            state = PairState(pair, normalize.symbol_of(pair), start)
            state.tracker = GapTracker(self, self.source, venue=NO_VENUE, symbol=state.symbol, kind="tick")
            saved = await self.cursors.get(state.symbol)
            if saved is not None:
                state.cursor, state.boundary = saved.ts_ns, set(saved.boundary)
                state.committed = (saved.ts_ns, frozenset(saved.boundary))
                # A restart: everything since the saved cursor is missing until back-filled.
                state.tracker.interrupted(now)
            state.origin = state.cursor
            self.pairs[pair] = state
        self.spawn(self._run(), "session")

    async def on_stop(self) -> None:
        await self.client.close()

    async def _commit(self, force: bool = False) -> None:
        """Persist cursors whose events are all acked (flush first)."""
        now = time.monotonic()
        if not force and now < self._commit_at:
            return
        self._commit_at = now + 0.5
        dirty = [p for p in self.pairs.values() if p.committed != (p.cursor, frozenset(p.boundary))]
        if not dirty and not self._unconfirmed:
            return
        snapshot = [(p, p.cursor, frozenset(p.boundary)) for p in dirty]
        await self.flush()
        self._unconfirmed.clear()  # all acked
        for state, cursor, boundary in snapshot:
            await self.cursors.put(state.symbol, Cursor(cursor, sorted(boundary)))
            state.committed = (cursor, boundary)

    # --- the session loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        session_feed: dict[str, Any] = dict(venue=NO_VENUE, symbol=NO_VENUE, feed="finx/session")
        while True:
            async def failed(exc: BaseException) -> None:
                self.metrics.reconnects.labels(self.source).inc()
                self.log.warning("FinX connect failed: %s", exc)

            self.log.info("connecting to %s", self.client.safe_url)
            await self.client.connect_with_backoff(failed)
            self.sessions += 1
            self.metrics.feed_state.labels(self.source, "session").set(1)
            await self.publish_feed_status(self.source, "connected", detail=self.client.safe_url, **session_feed)
            ended: Literal["disconnected", "blocked"] = "disconnected"
            try:
                await self._session()
            except SessionLost as exc:
                reason = str(exc)
            except normalize.VendorError as exc:
                reason = f"vendor error: {exc}"
                await self.client.close()
            except BUS_ERRORS as exc:
                ended, reason = "blocked", f"publishing failed: {exc!r}"
                self.log.warning("FinX session blocked: %s", reason)
                await self.client.close()
            self.metrics.feed_state.labels(self.source, "session").set(0)
            self.metrics.reconnects.labels(self.source).inc()
            lost_at = self.now_ns()
            with contextlib.suppress(*BUS_ERRORS):
                await self.publish_feed_status(self.source, ended, detail=reason, **session_feed)
            for state in self.pairs.values():
                # Whatever happened from the cursor on is missing until the back-fill catches up.
                assert state.tracker is not None
                state.tracker.interrupted(lost_at)
            await self.client.backoff.sleep()
            if ended == "blocked":
                await self._wait_for_the_bus()

    async def _wait_for_the_bus(self) -> None:
        """Until NATS is connected and the publisher is not blocked (checked every 0.5 s)."""
        assert self.publisher is not None
        while not self.nats_connected or self.publisher.blocked:
            await asyncio.sleep(0.5)
        with contextlib.suppress(*BUS_ERRORS):
            await self.flush()  # forget the failures: _unconfirmed re-sends them

    async def _resend_unconfirmed(self) -> None:
        """Re-publish, unchanged, what was published since the last commit and not acked."""
        for events, replay, acks in self._unconfirmed:
            if all(f.done() and not f.cancelled() and f.exception() is None for f in acks):
                continue
            acks.clear()
            if replay is None:
                acks.extend([await self.emit(e) for e in events])
            else:
                await self.emit_batch(events, replay=replay, acks=acks)
        await self._commit(force=True)

    async def _session(self) -> None:
        if self._unconfirmed:
            await self._resend_unconfirmed()
        for state in self.pairs.values():
            assert state.tracker is not None
            await state.tracker.report(state.cursor, detail="back-filling from the saved cursor")
        if time.monotonic() >= self._ref_at:
            await self._reference()
        self._next_snap = 0.0
        while True:
            await self._maybe_snap()
            for state in self.pairs.values():
                await self._catch_up(state)
            await self._commit(force=True)
            if time.monotonic() >= self._ref_at:
                await self._reference()
            wait = min(self._next_snap - time.monotonic(), self.settings.history_interval_s)
            await asyncio.sleep(max(0.0, wait))

    async def _maybe_snap(self) -> None:
        if time.monotonic() < self._next_snap:
            return
        self._next_snap = time.monotonic() + self.settings.snap_interval_s
        for state in self.pairs.values():
            await self._snap(state)

    # --- reference data --------------------------------------------------------------------------
    async def _reference(self) -> None:
        self._ref_at = time.monotonic() + self.settings.ref_refresh_s
        for ticker in dict.fromkeys(t.upper() for t in self.settings.tickers):
            frame = await self.client.call("referenceData", securityId=ticker)
            try:
                event = await self.frames.normalize("referenceData", frame, lambda f=frame: normalize.currency(
                    normalize.decode(f), self.now_ns()))
            except normalize.VendorError as exc:
                self._vendor_refused("reference", exc, f"FinX has no reference data for {ticker}")
                continue
            if event is None:
                continue
            if event.code != ticker:
                await self.client.desync(f"referenceData {ticker} answered for {event.code}")
                raise SessionLost("reply out of lock-step")
            self.currencies[ticker] = event
            await self.emit(event)
        now = self.now_ns()
        for state in self.pairs.values():
            await self.emit(normalize.instrument(state.pair, self.currencies, now))

    # --- snaps ----------------------------------------------------------------------------------
    async def _snap(self, state: PairState) -> None:
        frame = await self.client.call("tickSnap", pair=state.pair)
        try:
            tick = await self.frames.normalize("tickSnap", frame, normalize.snap, frame, self.now_ns())
        except normalize.VendorError as exc:
            self._vendor_refused("snap", exc, f"tickSnap {state.pair}")
            return
        if tick is None or tick.id == state.last_snap_id:
            return  # no tick yet, or the same snap again: not a new event
        if tick.symbol != state.symbol:
            await self.client.desync(f"tickSnap {state.pair} answered for {tick.symbol}")
            raise SessionLost("reply out of lock-step")
        state.last_snap_id = tick.id
        if tick.ts_event < state.cursor or (tick.ts_event == state.cursor and tick.id in state.boundary):
            return  # the history already published it
        if tick.id in state.snap_ids:
            return
        state.snap_ids[tick.id] = tick.ts_event
        self._unconfirmed.append(([tick], None, [await self.emit(tick)]))

    # --- history --------------------------------------------------------------------------------
    async def _page(self, pair: str, symbol: str, cursor: int, boundary: set[str], replay: bool = True) -> Page:
        """Fetch the page from ``cursor``: the new ticks (not before the cursor, not in the boundary
        set) sorted, and where the cursor goes next."""
        date, clock = normalize.request_date_time(cursor)
        rows = self.settings.history_page_rows
        while True:
            frame = await self.client.call("tickHistory", pair=pair, date=date, time=clock)
            try:
                page = await self.frames.normalize("tickHistory", frame, normalize.history, frame, self.now_ns(), replay)
            except normalize.VendorError as exc:
                self._vendor_refused("history", exc, f"tickHistory {pair}")
                raise SessionLost(f"tickHistory {pair}: {exc}") from None
            if page is not None:
                break
            # The malformed frame was consumed (lock-step intact) and dead-lettered: ask again.
            await asyncio.sleep(0.05)
        ticks, bad = page
        for row, reason in bad:
            await self.frames.reject("tickHistory", msgspec.json.encode(row), reason)
        if ticks and (ticks[0].ts_event < cursor - cursor % MS or any(t.symbol != symbol for t in ticks)):
            await self.client.desync(f"tickHistory {pair} from {date} {clock} answered with other rows")
            raise SessionLost("reply out of lock-step")
        full = len(ticks) + len(bad) >= rows
        new = [t for t in ticks if t.ts_event > cursor or (t.ts_event == cursor and t.id not in boundary)]
        if not ticks:
            return Page([], cursor, boundary, False)
        last = ticks[-1].ts_event
        if last <= cursor:
            if full:
                # A whole page at the cursor's millisecond: the wire cannot page inside it.
                return Page(new, cursor - cursor % MS + MS, set(), True, stuck=True)
            return Page(new, cursor, boundary | {t.id for t in new}, False)
        at_last = {t.id for t in ticks if t.ts_event == last}
        return Page(new, last, at_last, full)

    async def _catch_up(self, state: PairState) -> None:
        """Page forward from the cursor until a short page (caught up)."""
        while True:
            await self._maybe_snap()
            asked_at = self.now_ns()
            page = await self._page(state.pair, state.symbol, state.cursor, state.boundary)
            if page.stuck:
                await self.publish_feed_status(
                    self.source, "gap", symbol=state.symbol, kind="tick", gap=(state.cursor, page.cursor),
                    detail=f"more than {self.settings.history_page_rows} rows share one millisecond")
            fresh = [t for t in page.ticks if t.id not in state.snap_ids]
            if fresh:
                acks: list[Any] = []
                await self.emit_batch(fresh, replay=True, acks=acks)
                self._unconfirmed.append((fresh, True, acks))
            state.cursor, state.boundary = page.cursor, page.boundary
            if state.snap_ids:
                state.snap_ids = {i: ts for i, ts in state.snap_ids.items() if ts >= state.cursor}
            await self._commit()
            tracker = state.tracker
            assert tracker is not None  # made in on_start
            gap = tracker.open_gap
            if gap is not None and (state.cursor >= gap[1] or (not page.full and asked_at >= gap[1])):
                await self._commit(force=True)
                await tracker.resynced("gap back-filled from tickHistory")
            if not page.full:
                return

    # --- replay ---------------------------------------------------------------------------------
    async def replay(self, request: ReplayRequest) -> int:
        if request.kind != "tick":
            raise ReplayUnsupported(f"finx replays ticks only (tickHistory), not {request.kind}")
        pair = denormalize_symbol(request.symbol).upper()
        symbol = normalize.symbol_of(pair)
        venue = None if request.venue in (NO_VENUE, "*") else request.venue
        if not self.client.connected:
            raise RuntimeError("not connected to FinX")
        cursor, boundary, total = request.start_ns, set(), 0
        while cursor < request.end_ns:
            page = await self._page(pair, symbol, cursor, boundary, replay=True)
            chosen = [t for t in page.ticks if t.ts_event < request.end_ns and (venue is None or t.venue == venue)]
            if chosen:
                total += await self.emit_batch(chosen, replay=True)
            if not page.full or (page.cursor == cursor and page.boundary == boundary):
                break
            cursor, boundary = page.cursor, page.boundary
        await self.flush()
        return total
