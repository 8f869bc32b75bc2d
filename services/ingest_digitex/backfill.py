"""Digitex history: finished OHLCV bars per resolution (``history/ohlcv/``, cursor = the last
published bar start, saved once acked) and ``replay.digitex`` (trades while the range is within
the ``recent_trades`` depth, bars from OHLCV; anything else refused with the reason)."""

from __future__ import annotations

import msgspec

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.market import Bar, Trade
from marketbus.runtime.ingest import ReplayUnsupported

from . import normalize
from .parts import DigitexHost, MarketState

US = 1000


class DigitexBackfill:
    def __init__(self, ingestor: DigitexHost) -> None:
        self.ing = ingestor

    async def load(self, state: MarketState) -> None:
        saved = await self.ing.bar_cursors.get(state.symbol)
        if saved:
            state.bar_cursor = dict(saved)

    async def fetch_bars(self, state: MarketState, res: str, start_us: int, end_us: int | None,
                         replay: bool) -> tuple[list[Bar], int | None, bool, int]:
        """One OHLCV window from ``start_us``: (bars, server time µs, whether there is more after
        the window, the window's last bar start)."""
        ing = self.ing
        span = normalize.resolution_us(res) * 999
        to_us = start_us + span if end_us is None else min(end_us, start_us + span)
        raw = await ing.client.get("ohlcv", market_id=state.market_id, resolution=res,
                                   date_from=start_us, date_to=to_us, top_n=1000)
        page = await ing.frames.normalize("history/ohlcv", raw, normalize.bars, raw, state.market_id, res,
                                          state.symbol, ing.venue, ing.now_ns(), replay)
        if page is None:
            return [], None, False, to_us
        bars, bad, server_us = page
        for row, reason in bad:
            await ing.frames.reject("history/ohlcv", msgspec.json.encode(row), reason)
        return bars, server_us, server_us is not None and to_us < server_us, to_us

    async def poll_bars(self, state: MarketState, res: str) -> None:
        ing = self.ing
        length = normalize.resolution_us(res)
        while True:
            cursor = state.bar_cursor.get(res)
            start = cursor + 1 if cursor is not None else (ing.now_ns() // US) - int(ing.settings.bars_backfill_s * 1e6)
            bars, server_us, more, to_us = await self.fetch_bars(state, res, start, None, replay=False)
            now_us = server_us or ing.now_ns() // US
            done = [
                b for b in bars if b.ts_event // US + length <= now_us and (cursor is None or b.ts_event // US > cursor)
            ]
            for bar in done:
                await ing.emit(bar)
            if done:
                last = done[-1].ts_event // US
                await ing.flush()  # only a cursor whose events are acked is saved
                await ing.bar_cursors.put(state.symbol, {**state.bar_cursor, res: last})
                state.bar_cursor[res] = last  # once saved, as for trades
            elif more and to_us + length <= now_us:
                state.bar_cursor[res] = to_us  # an empty window (nothing traded): skip it
                continue
            if not more or not done:
                return

    # --- replay ---------------------------------------------------------------------------------
    async def replay(self, request: ReplayRequest) -> int:
        ing = self.ing
        if request.venue not in (ing.venue, NO_VENUE, "*"):
            raise ReplayUnsupported(f"digitex has one venue, {ing.venue}; not {request.venue}")
        state = ing.by_symbol.get(request.symbol)
        if state is None:
            raise ReplayUnsupported(f"unknown digitex market {request.symbol}; known: {sorted(ing.by_symbol)}")
        if request.kind == "trade":
            return await self.replay_trades(state, request)
        if request.kind == "bar":
            return await self.replay_bars(state, request)
        raise ReplayUnsupported(
            f"digitex can replay trades (recent_trades depth only) and bars (OHLCV); not {request.kind}")

    async def replay_trades(self, state: MarketState, request: ReplayRequest) -> int:
        ing = self.ing
        limit = ing.settings.max_trades
        raw = await ing.client.get("recent_trades", market_id=state.market_id, max_trades=limit)
        trades, _bad, _oldest = normalize.recent_trades(raw, state.symbol, ing.venue, ing.now_ns(), None, replay=True)
        if len(trades) >= limit and trades and request.start_ns < trades[0].ts_event:
            raise ReplayUnsupported(
                f"Digitex serves only its last {limit} trades (from ts {trades[0].ts_event} ns); "
                f"{request.start_ns} is older: replay bars instead")
        chosen: list[Trade] = [t for t in trades if request.start_ns <= t.ts_event < request.end_ns]
        if chosen:
            await ing.emit_batch(chosen, replay=True)
        await ing.flush()
        return len(chosen)

    async def replay_bars(self, state: MarketState, request: ReplayRequest) -> int:
        ing = self.ing
        total = 0
        for res in ing.settings.resolutions:
            length = normalize.resolution_us(res)
            start, end = request.start_ns // US, (request.end_ns - 1) // US
            while start <= end:
                bars, server_us, _more, _to = await self.fetch_bars(state, res, start, end, replay=True)
                now_us = server_us or ing.now_ns() // US
                chosen = [b for b in bars if b.ts_event // US + length <= now_us
                          and request.start_ns <= b.ts_event < request.end_ns]
                if chosen:
                    total += await ing.emit_batch(chosen, replay=True)
                start += length * 1000
                if server_us is not None and start > server_us:
                    break
        await ing.flush()
        return total
