"""The Digitex ingestor: wires the bot REST client and the normalizer to the bus.

- ``markets/``, ``currency/``, ``exchange_info/`` -> ``ref.instrument|currency|venue.digitex...``
  (the advertised rate limits tighten the pacing when lower than configured).
- per market: ``order_book/`` -> BookSnapshot (an unchanged book is not re-published),
  ``recent_trades/`` -> Trade (de-duplicated by trade_id; ids from market + trade_id),
  ``history/ohlcv/`` per configured resolution -> finished Bars.
- cursors (last trade id, last bar start) live in the ``ingest_state`` KV bucket and are saved
  once the events before them are acked: a restart resumes without duplicates or holes.
- ``replay.digitex``: trades from recent_trades when the range is still within its depth, bars
  from OHLCV; anything else is refused with the reason.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.market import Bar, Trade
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import Ingestor, ReplayUnsupported
from marketbus.runtime.ratelimit import MultiWindowLimiter
from marketbus.runtime.settings import SettingsError

from . import normalize
from .client import ClientError, DigitexClient, Unavailable
from .settings import DigitexIngestSettings

US = 1000


def window_safe_limiter(per_second: int, per_minute: int) -> MultiWindowLimiter:
    """A token bucket of rate r and burst b lets b + r*T calls through in any window T; the vendor
    counts sliding windows (50 in any second, 500 in any minute). Half the budget as burst and half
    as rate keeps every window within the documented limit."""
    return MultiWindowLimiter([(max(1, per_second // 2), 1.0), (max(1, per_minute // 2), 60.0)])


@dataclass
class MarketState:
    market_id: int
    code: str
    symbol: str
    last_trade_id: int | None = None
    last_trade_ts: int | None = None
    last_book_id: str | None = None
    bar_cursor: dict[str, int] = field(default_factory=dict)  # resolution -> last published bar start (µs)
    outage_since: int | None = None  # ns: polls failing since then


class DigitexIngestor(Ingestor):
    name: ClassVar[str] = "ingest_digitex"
    source: ClassVar[str] = "digitex"
    settings_cls = DigitexIngestSettings
    settings: DigitexIngestSettings

    def __init__(self, settings: DigitexIngestSettings | None = None, **overrides: Any) -> None:
        super().__init__(settings, **overrides)
        self.settings.validate()
        s = self.settings
        self.venue = s.venue
        self.limiter = window_safe_limiter(s.rate_per_second, s.rate_per_minute)
        self._limits = (s.rate_per_second, s.rate_per_minute)
        self.client = DigitexClient(
            s.base_url, s.token, self.limiter, timeout_s=s.request_timeout_s,
            backoff=Backoff(s.retry_initial_s, s.retry_max_s), on_error=self._vendor_error, on_frame=self._frame,
        )
        self.markets: dict[int, MarketState] = {}
        self.by_symbol: dict[str, MarketState] = {}
        self.kv: Any = None
        self._connected: bool | None = None
        self._ref_at = 0.0


    def _vendor_error(self, kind: str) -> None:
        self.metrics.vendor_errors.labels(self.source, kind).inc()

    def _frame(self, channel: str) -> None:
        self.metrics.frames_in.labels(self.source, channel).inc()

    def health(self) -> dict[str, Any]:
        return {"vendor_url": self.client.base_url, "vendor_calls": self.client.calls,
                "rate_limited": self.client.rate_limited,
                "markets": {m.code: {"last_trade_id": m.last_trade_id, "bars": m.bar_cursor} for m in self.markets.values()}}

    # --- start / stop ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        self.kv = await ensure_bucket(self.js, INGEST_STATE, self.settings.stream_replicas)
        while True:
            try:
                await self._reference()
                break
            except Unavailable as exc:
                self.log.warning("Digitex reference data unavailable (%s): retrying", exc)
                await self._set_connected(False, str(exc))
                await asyncio.sleep(self.settings.retry_max_s / 4)
        await self._set_connected(True)
        for state in self.markets.values():
            await self._load_state(state)
            self.spawn(self._loop(self._poll_trades, state, self.settings.trades_interval_s), f"trades:{state.code}")
            self.spawn(self._loop(self._poll_book, state, self.settings.book_interval_s), f"book:{state.code}")
            for res in self.settings.resolutions:
                self.spawn(self._loop(self._poll_bars, state, self.settings.bars_interval_s, res), f"bars:{state.code}:{res}")
        self.spawn(self._refresh_reference(), "reference")

    async def stop(self) -> None:
        await super().stop()  # the poll loops are cancelled first, then the HTTP client closes
        await self.client.close()

    def _key(self, state: MarketState, what: str) -> str:
        return f"{self.settings.state_key_prefix}.{what}.{state.symbol}"

    async def _get_state(self, key: str) -> Any:
        try:
            entry = await self.kv.get(key)
        except Exception:  # noqa: BLE001 - not there yet
            return None
        return msgspec.json.decode(entry.value) if entry and entry.value else None

    async def _load_state(self, state: MarketState) -> None:
        trades = await self._get_state(self._key(state, "trades"))
        if isinstance(trades, dict):
            state.last_trade_id, state.last_trade_ts = trades.get("trade_id"), trades.get("ts_ns")
        bars = await self._get_state(self._key(state, "bars"))
        if isinstance(bars, dict):
            state.bar_cursor = {str(k): int(v) for k, v in bars.items()}

    async def _save(self, state: MarketState, what: str, value: Any) -> None:
        await self.flush()  # only a cursor whose events are acked is saved
        await self.kv.put(self._key(state, what), msgspec.json.encode(value))

    # --- reference data --------------------------------------------------------------------------
    async def _reference(self) -> None:
        self._ref_at = time.monotonic() + self.settings.ref_refresh_s
        now = self.now_ns()
        raw = await self.client.get("exchange_info/")
        try:
            venue, _, _, limits = normalize.exchange_info(raw, self.venue, now)
            await self.emit(venue)
            self._apply_limits(limits)
        except normalize.Malformed as exc:
            await self.malformed("exchange_info", raw, str(exc))
        raw = await self.client.get("currency/")
        try:
            for event in normalize.currencies(raw, now):
                await self.emit(event)
        except normalize.Malformed as exc:
            await self.malformed("currency", raw, str(exc))
        raw = await self.client.get("markets/")
        try:
            instruments = normalize.markets(raw, self.venue, now)
            defs = normalize.market_defs(raw)
        except normalize.Malformed as exc:
            await self.malformed("markets", raw, str(exc))
            if not self.markets:
                raise Unavailable(f"markets/ is malformed: {exc}") from None
            return
        wanted = {m.strip().upper() for m in self.settings.markets}
        chosen = [(i, d) for i, d in zip(instruments, defs, strict=True)
                  if not wanted or d.code.upper() in wanted or str(d.id) in wanted]
        if wanted and not self.markets:
            found = {d.code.upper() for _, d in chosen} | {str(d.id) for _, d in chosen}
            missing = sorted(wanted - found)
            if missing:
                raise SettingsError(f"{self.settings.env_prefix}MARKETS: unknown market(s) {missing}; "
                                    f"listed: {[d.code for d in defs]}")
        for instrument, d in chosen:
            await self.emit(instrument)
            if d.id not in self.markets:
                state = MarketState(d.id, d.code, instrument.symbol)
                self.markets[d.id] = state
                self.by_symbol[state.symbol] = state

    def _apply_limits(self, limits: dict[str, int]) -> None:
        per_s = min(self.settings.rate_per_second, limits.get("SECOND", self.settings.rate_per_second))
        per_min = min(self.settings.rate_per_minute, limits.get("MINUTE", self.settings.rate_per_minute))
        if (per_s, per_min) != self._limits:
            self._limits = (per_s, per_min)
            self.limiter.buckets = window_safe_limiter(per_s, per_min).buckets

    async def _refresh_reference(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self._ref_at - time.monotonic()))
            try:
                await self._reference()
            except (Unavailable, ClientError) as exc:
                self.log.warning("reference refresh failed: %s", exc)
                self._ref_at = time.monotonic() + 30

    # --- publishing -----------------------------------------------------------------------------
    async def emit_trades(self, trades: list[Trade]) -> int:
        """Publish a page of trades as single events: one message per trade (subject, payload and
        headers as :meth:`emit` makes them; Nats-Msg-Id = the id), acked as a group
        (``publish_group``: no future per message, subject and header prefix once per market).
        Metrics once per page: the count, and the lag of the newest trade (as ``emit_batch``
        does per envelope). Returns the number published; ``flush()`` waits for the acks."""
        await self.emit_group(trades)
        return len(trades)

    # --- poll loops -----------------------------------------------------------------------------
    async def _set_connected(self, ok: bool, detail: str | None = None) -> None:
        if self._connected == ok:
            return
        self._connected = ok
        self.metrics.feed_state.labels(self.source, "api").set(1 if ok else 0)
        await self.publish_feed_status(self.source, "connected" if ok else "disconnected", detail=detail,
                                       venue=NO_VENUE, symbol=NO_VENUE, feed="digitex/api")

    async def _loop(self, poll: Any, state: MarketState, interval: float, *args: Any) -> None:
        while True:
            began = time.monotonic()
            try:
                await poll(state, *args)
                await self._set_connected(True)
            except Unavailable as exc:
                self.log.warning("%s %s: %s", poll.__name__, state.code, exc)
                if state.outage_since is None:
                    state.outage_since = self.now_ns()
                await self._set_connected(False, str(exc))
            except ClientError as exc:
                self.log.error("%s %s refused: %s", poll.__name__, state.code, exc)
            except Exception as exc:  # noqa: BLE001 - e.g. the bus is down: keep polling
                self.log.error("%s %s failed: %r", poll.__name__, state.code, exc)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    async def _poll_trades(self, state: MarketState) -> None:
        raw = await self.client.get("recent_trades/", market_id=state.market_id, max_trades=self.settings.max_trades)
        try:
            trades, bad, oldest = normalize.recent_trades(raw, state.symbol, self.venue, self.now_ns(), state.last_trade_id)
        except normalize.Malformed as exc:
            await self.malformed("recent_trades", raw, str(exc))
            return
        for row, reason in bad:
            await self.malformed("recent_trades", msgspec.json.encode(row), reason)
        last_id, last_ts = state.last_trade_id, state.last_trade_ts
        outage = state.outage_since
        gap: tuple[int, int] | None = None
        if last_id is not None and oldest > last_id + 1 and trades:
            # Trades between last_id and oldest fell out of the recent_trades window: lost.
            gap = (last_ts or trades[0].ts_event, trades[0].ts_event)
            await self.publish_feed_status(
                self.source, "gap", venue=self.venue, symbol=state.symbol, kind="trade", gap=gap,
                detail=f"trade ids {last_id + 1}..{oldest - 1} are beyond the recent_trades depth "
                       "(bars from OHLCV still cover the range)")
        elif outage is not None and last_ts is not None:
            gap = (last_ts, self.now_ns())
            await self.publish_feed_status(self.source, "gap", venue=self.venue, symbol=state.symbol, kind="trade",
                                           gap=gap, detail="API outage; back-filling from recent_trades")
        await self.emit_trades(trades)
        if trades:
            # the cursor moves once saved (a stop while saving leaves memory and KV agreeing)
            new_id, new_ts = int(trades[-1].trade_id or 0), trades[-1].ts_event
            await self._save(state, "trades", {"trade_id": new_id, "ts_ns": new_ts})
            state.last_trade_id, state.last_trade_ts = new_id, new_ts
        if outage is not None:
            state.outage_since = None
            if gap is not None and not (last_id is not None and oldest > last_id + 1):
                await self.publish_feed_status(self.source, "resynced", venue=self.venue, symbol=state.symbol,
                                               kind="trade", gap=gap, detail="back-filled from recent_trades")

    async def _poll_book(self, state: MarketState) -> None:
        raw = await self.client.get("order_book/", market_id=state.market_id)
        try:
            book = normalize.order_book(raw, state.symbol, self.venue, self.now_ns())
        except normalize.Malformed as exc:
            await self.malformed("order_book", raw, str(exc))
            return
        if book.id == state.last_book_id:
            return  # unchanged
        state.last_book_id = book.id
        await self.emit(book)

    async def _fetch_bars(self, state: MarketState, res: str, start_us: int, end_us: int | None,
                          replay: bool) -> tuple[list[Bar], int | None, bool, int]:
        """One OHLCV window from ``start_us``: (bars, server time µs, whether there is more after
        the window, the window's last bar start)."""
        span = normalize.resolution_us(res) * 999
        to_us = start_us + span if end_us is None else min(end_us, start_us + span)
        raw = await self.client.get("history/ohlcv/", market_id=state.market_id, resolution=res,
                                    date_from=start_us, date_to=to_us, top_n=1000)
        try:
            bars, bad, server_us = normalize.bars(raw, state.market_id, res, state.symbol, self.venue, self.now_ns(), replay)
        except normalize.Malformed as exc:
            await self.malformed("history/ohlcv", raw, str(exc))
            return [], None, False, to_us
        for row, reason in bad:
            await self.malformed("history/ohlcv", msgspec.json.encode(row), reason)
        return bars, server_us, server_us is not None and to_us < server_us, to_us

    async def _poll_bars(self, state: MarketState, res: str) -> None:
        length = normalize.resolution_us(res)
        while True:
            cursor = state.bar_cursor.get(res)
            start = cursor + 1 if cursor is not None else (self.now_ns() // US) - int(self.settings.bars_backfill_s * 1e6)
            bars, server_us, more, to_us = await self._fetch_bars(state, res, start, None, replay=False)
            now_us = server_us or self.now_ns() // US
            done = [b for b in bars if b.ts_event // US + length <= now_us and (cursor is None or b.ts_event // US > cursor)]
            for bar in done:
                await self.emit(bar)
            if done:
                last = done[-1].ts_event // US
                await self._save(state, "bars", {**state.bar_cursor, res: last})
                state.bar_cursor[res] = last  # once saved, as for trades
            elif more and to_us + length <= now_us:
                state.bar_cursor[res] = to_us  # an empty window (nothing traded): skip it
                continue
            if not more or not done:
                return

    # --- replay ---------------------------------------------------------------------------------
    async def replay(self, request: ReplayRequest) -> int:
        if request.venue not in (self.venue, NO_VENUE, "*"):
            raise ReplayUnsupported(f"digitex has one venue, {self.venue}; not {request.venue}")
        state = self.by_symbol.get(request.symbol)
        if state is None:
            raise ReplayUnsupported(f"unknown digitex market {request.symbol}; known: {sorted(self.by_symbol)}")
        if request.kind == "trade":
            return await self._replay_trades(state, request)
        if request.kind == "bar":
            return await self._replay_bars(state, request)
        raise ReplayUnsupported(
            f"digitex can replay trades (recent_trades depth only) and bars (OHLCV); not {request.kind}")

    async def _replay_trades(self, state: MarketState, request: ReplayRequest) -> int:
        limit = self.settings.max_trades
        raw = await self.client.get("recent_trades/", market_id=state.market_id, max_trades=limit)
        trades, _bad, _oldest = normalize.recent_trades(raw, state.symbol, self.venue, self.now_ns(), None, replay=True)
        if len(trades) >= limit and trades and request.start_ns < trades[0].ts_event:
            raise ReplayUnsupported(
                f"Digitex serves only its last {limit} trades (from ts {trades[0].ts_event} ns); "
                f"{request.start_ns} is older: replay bars instead")
        chosen: list[Trade] = [t for t in trades if request.start_ns <= t.ts_event < request.end_ns]
        if chosen:
            await self.emit_batch(chosen, replay=True)
        await self.flush()
        return len(chosen)

    async def _replay_bars(self, state: MarketState, request: ReplayRequest) -> int:
        total = 0
        for res in self.settings.resolutions:
            length = normalize.resolution_us(res)
            start, end = request.start_ns // US, (request.end_ns - 1) // US
            while start <= end:
                bars, server_us, _more, _to = await self._fetch_bars(state, res, start, end, replay=True)
                now_us = server_us or self.now_ns() // US
                chosen = [b for b in bars if b.ts_event // US + length <= now_us
                          and request.start_ns <= b.ts_event < request.end_ns]
                if chosen:
                    total += await self.emit_batch(chosen, replay=True)
                start += length * 1000
                if server_us is not None and start > server_us:
                    break
        await self.flush()
        return total
