"""The Digitex live trades: ``recent_trades/`` -> Trade, polled per market (order books:
:mod:`.books`). Trade cursors (last id, its time) are saved once acked; an API outage becomes a
``gap`` then ``resynced`` once ``recent_trades`` covered it, and ids beyond its depth a gap that
stays (bars from OHLCV still cover the range)."""

from __future__ import annotations

import msgspec

from marketbus.vendor.gaps import GapTracker

from . import normalize
from .parts import DigitexHost, MarketState, TradeCursor


class DigitexLive:
    def __init__(self, ingestor: DigitexHost) -> None:
        self.ing = ingestor
        self.gaps: dict[int, GapTracker] = {}

    def tracker(self, state: MarketState) -> GapTracker:
        tracker = self.gaps.get(state.market_id)
        if tracker is None:
            tracker = self.gaps[state.market_id] = GapTracker(
                self.ing, self.ing.source, venue=self.ing.venue, symbol=state.symbol, kind="trade")
        return tracker

    async def load(self, state: MarketState) -> None:
        saved = await self.ing.trade_cursors.get(state.symbol)
        if saved is not None:
            state.last_trade_id, state.last_trade_ts = saved.trade_id, saved.ts_ns

    async def poll_trades(self, state: MarketState) -> None:
        ing = self.ing
        raw = await ing.client.get("recent_trades", market_id=state.market_id, max_trades=ing.settings.max_trades)
        page = await ing.frames.normalize("recent_trades", raw, normalize.recent_trades, raw, state.symbol,
                                          ing.venue, ing.now_ns(), state.last_trade_id)
        if page is None:
            return
        trades, bad, oldest = page
        for row, reason in bad:
            await ing.frames.reject("recent_trades", msgspec.json.encode(row), reason)
        last_id, last_ts = state.last_trade_id, state.last_trade_ts
        tracker = self.tracker(state)
        if last_id is not None and oldest > last_id + 1 and trades:
            # Trades between last_id and oldest fell out of the recent_trades window: lost.
            await tracker.lost((last_ts or trades[0].ts_event, trades[0].ts_event),
                               f"trade ids {last_id + 1}..{oldest - 1} are beyond the recent_trades depth "
                               "(bars from OHLCV still cover the range)")
        elif last_ts is not None:
            await tracker.report(last_ts, detail="API outage; back-filling from recent_trades")
        else:
            tracker.forget()
        await ing.emit_trades(trades)
        if trades:
            # the cursor moves once saved (a stop while saving leaves memory and KV agreeing)
            new_id, new_ts = int(trades[-1].trade_id or 0), trades[-1].ts_event
            await ing.flush()  # only a cursor whose events are acked is saved
            await ing.trade_cursors.put(state.symbol, TradeCursor(new_id, new_ts))
            state.last_trade_id, state.last_trade_ts = new_id, new_ts
        await tracker.resynced("back-filled from recent_trades")
