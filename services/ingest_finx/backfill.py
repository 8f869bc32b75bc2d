"""FinX history: ``tickHistory`` pages (100 unsorted rows) from a cursor, sorted and advanced until
caught up, published as batch envelopes (``replay=True``); the cursor (time + ids at that time) is
saved in the ``ingest_state`` KV bucket once the page is acked (:meth:`FinxBackfill.commit`), so a
restart or a lost session resumes where it stopped, with no duplicate and no hole. A restart or a
lost session is a ``gap`` (:class:`~marketbus.vendor.gaps.GapTracker`) until the pages caught up,
then ``resynced``. ``replay.finx`` fetches a range the same way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.subjects import denormalize_symbol
from marketbus.runtime.ingest import ReplayUnsupported
from marketbus.vendor.gaps import GapTracker

from . import normalize
from .client import SessionLost
from .parts import MS, Cursor, FinxHost, Page, PairState


class FinxBackfill:
    def __init__(self, ingestor: FinxHost, between_pages: Callable[[], Awaitable[None]]) -> None:
        self.ing = ingestor
        self.between_pages = between_pages  # the live snaps keep their pace during a long catch-up
        self.commit_at = 0.0

    async def pair_state(self, pair: str) -> PairState:
        """The :class:`PairState` of a pair feed control starts, from its saved cursor (a restart:
        what came since is a gap until back-filled) or the configured start."""
        ing = self.ing
        now = ing.now_ns()
        state = PairState(pair, normalize.symbol_of(pair), ing.settings.history_start_ns(now))
        state.tracker = GapTracker(ing, ing.source, venue=NO_VENUE, symbol=state.symbol, kind="tick")
        saved = await ing.cursors.get(state.symbol)
        if saved is not None:
            state.cursor, state.boundary = saved.ts_ns, set(saved.boundary)
            state.committed = (saved.ts_ns, frozenset(saved.boundary))
            # A restart: everything since the saved cursor is missing until back-filled.
            state.tracker.interrupted(now)
        state.origin = state.cursor
        return state

    async def commit(self, force: bool = False) -> None:
        """Persist cursors whose events are all acked (flush first)."""
        ing = self.ing
        now = time.monotonic()
        if not force and now < self.commit_at:
            return
        self.commit_at = now + 0.5
        dirty = [p for p in ing.pairs.values() if p.committed != (p.cursor, frozenset(p.boundary))]
        if not dirty and not ing.outbox:
            return
        snapshot = [(p, p.cursor, frozenset(p.boundary)) for p in dirty]
        await ing.flush()
        ing.outbox.clear()  # all acked
        for state, cursor, boundary in snapshot:
            await ing.cursors.put(state.symbol, Cursor(cursor, sorted(boundary)))
            state.committed = (cursor, boundary)

    async def page(self, pair: str, symbol: str, cursor: int, boundary: set[str], replay: bool = True) -> Page:
        """Fetch the page from ``cursor``: the new ticks (not before the cursor, not in the boundary
        set) sorted, and where the cursor goes next."""
        ing = self.ing
        date, clock = normalize.request_date_time(cursor)
        rows = ing.settings.history_page_rows
        while True:
            frame = await ing.client.call("tickHistory", pair=pair, date=date, time=clock)
            try:
                page = await ing.frames.normalize("tickHistory", frame, normalize.history, frame, ing.now_ns(), replay)
            except normalize.VendorError as exc:
                ing.vendor_refused("history", exc, f"tickHistory {pair}")
                raise SessionLost(f"tickHistory {pair}: {exc}") from None
            if page is not None:
                break
            # The malformed frame was consumed (lock-step intact) and dead-lettered: ask again.
            await asyncio.sleep(0.05)
        ticks, bad = page
        for row, reason in bad:
            await ing.frames.reject("tickHistory", msgspec.json.encode(row), reason)
        if ticks and (ticks[0].ts_event < cursor - cursor % MS or any(t.symbol != symbol for t in ticks)):
            await ing.client.desync(f"tickHistory {pair} from {date} {clock} answered with other rows")
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

    async def catch_up(self, state: PairState) -> None:
        """Page forward from the cursor until a short page (caught up)."""
        ing = self.ing
        while True:
            await self.between_pages()
            asked_at = ing.now_ns()
            page = await self.page(state.pair, state.symbol, state.cursor, state.boundary)
            if not state.active:  # feed control stopped it meanwhile
                return
            if page.stuck:
                await ing.publish_feed_status(
                    ing.source, "gap", symbol=state.symbol, kind="tick", gap=(state.cursor, page.cursor),
                    detail=f"more than {ing.settings.history_page_rows} rows share one millisecond")
            fresh = [t for t in page.ticks if t.id not in state.snap_ids]
            if fresh:
                acks: list[Any] = []
                await ing.emit_batch(fresh, replay=True, acks=acks)
                ing.outbox.add(fresh, True, acks)
            state.cursor, state.boundary = page.cursor, page.boundary
            if state.snap_ids:
                state.snap_ids = {i: ts for i, ts in state.snap_ids.items() if ts >= state.cursor}
            await self.commit()
            tracker = state.tracker
            assert tracker is not None  # made in load()
            gap = tracker.open_gap
            if gap is not None and (state.cursor >= gap[1] or (not page.full and asked_at >= gap[1])):
                await self.commit(force=True)
                await tracker.resynced("gap back-filled from tickHistory")
            if not page.full:
                return

    # --- replay ---------------------------------------------------------------------------------
    async def replay(self, request: ReplayRequest) -> int:
        ing = self.ing
        if request.kind != "tick":
            raise ReplayUnsupported(f"finx replays ticks only (tickHistory), not {request.kind}")
        pair = denormalize_symbol(request.symbol).upper()
        symbol = normalize.symbol_of(pair)
        venue = None if request.venue in (NO_VENUE, "*") else request.venue
        if not ing.client.connected:
            raise RuntimeError("not connected to FinX")
        cursor, boundary, total = request.start_ns, set[str](), 0
        while cursor < request.end_ns:
            page = await self.page(pair, symbol, cursor, boundary, replay=True)
            chosen = [t for t in page.ticks if t.ts_event < request.end_ns and (venue is None or t.venue == venue)]
            if chosen:
                total += await ing.emit_batch(chosen, replay=True)
            if not page.full or (page.cursor == cursor and page.boundary == boundary):
                break
            cursor, boundary = page.cursor, page.boundary
        await ing.flush()
        return total
