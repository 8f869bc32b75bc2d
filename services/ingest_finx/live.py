"""The FinX live feed: ``tickSnap`` polled per pair every ``snap_interval_s`` -> ``Tick``
(``md.tick.finx.<EXCHANGE>.<BASE-QUOTE>``). An unchanged snap is not a new event, nor is a tick
the history already published; a snap ahead of the history cursor is remembered so the page that
later holds it does not publish it again."""

from __future__ import annotations

import time

from . import normalize
from .client import SessionLost
from .parts import FinxHost, PairState


class FinxLive:
    def __init__(self, ingestor: FinxHost) -> None:
        self.ing = ingestor
        self.next_snap = 0.0

    async def maybe_snap(self) -> None:
        """Snap every pair if the interval has passed (called between history pages too)."""
        if time.monotonic() < self.next_snap:
            return
        self.next_snap = time.monotonic() + self.ing.settings.snap_interval_s
        for state in self.ing.pairs.values():
            await self.snap(state)

    async def snap(self, state: PairState) -> None:
        ing = self.ing
        frame = await ing.client.call("tickSnap", pair=state.pair)
        try:
            tick = await ing.frames.normalize("tickSnap", frame, normalize.snap, frame, ing.now_ns())
        except normalize.VendorError as exc:
            ing.vendor_refused("snap", exc, f"tickSnap {state.pair}")
            return
        if tick is None or tick.id == state.last_snap_id:
            return  # no tick yet, or the same snap again: not a new event
        if tick.symbol != state.symbol:
            await ing.client.desync(f"tickSnap {state.pair} answered for {tick.symbol}")
            raise SessionLost("reply out of lock-step")
        state.last_snap_id = tick.id
        if tick.ts_event < state.cursor or (tick.ts_event == state.cursor and tick.id in state.boundary):
            return  # the history already published it
        if tick.id in state.snap_ids or not state.active:
            return
        state.snap_ids[tick.id] = tick.ts_event
        ing.outbox.add([tick], None, [await ing.emit(tick)])
