"""The Digitex ingestor, built from the vendor machinery's parts (:mod:`marketbus.vendor`):

- session: :class:`~.client.DigitexClient` (declared endpoints, the shared Digitex limiter);
- catalog: :class:`~.catalog.DigitexCatalog` (``markets/``, ``currency/``, ``exchange_info/`` ->
  ``ref.*``; the advertised limits tighten the pacing);
- live: :class:`~.live.DigitexLive` (``recent_trades/`` -> Trade, ids from market + trade_id,
  gap/resynced reported);
- books: :class:`~.books.DigitexBooks` (``order_book/`` -> a BookSnapshot, then BookDeltas with a
  per-book sequence, a periodic snapshot and one after a failed poll; :mod:`marketbus.books`);
- backfill: :class:`~.backfill.DigitexBackfill` (OHLCV bars per resolution; ``replay.digitex``).

Which markets are followed is feed control's (:mod:`marketbus.vendor.feeds`): the ``feeds`` KV
bucket, seeded once from ``MARKETS``, changed at runtime (``marketbus feed add digitex FS:ETHUSD``);
each followed market gets its poll loops, removed when it is paused or removed.

Cursors (last trade id, last bar start) live in the ``ingest_state`` KV bucket
(:class:`~marketbus.vendor.cursor.CursorStore`) and are saved once the events before them are
acked: a restart resumes without duplicates or holes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.feeds import Feed
from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.market import Trade
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import Ingestor
from marketbus.runtime.tasks import cancel_and_wait
from marketbus.vendor.cursor import CursorStore
from marketbus.vendor.feeds import CatalogUnavailable, FeedControl, Resolved, Seed
from marketbus.vendor.frames import FrameGuard
from marketbus.vendor.limits import DIGITEX, LimiterHold, RateWindow

from . import normalize
from .backfill import DigitexBackfill
from .books import DigitexBooks
from .catalog import DigitexCatalog
from .client import ClientError, DigitexClient, Unavailable
from .live import DigitexLive
from .parts import MarketState, TradeCursor
from .settings import DigitexIngestSettings


class DigitexIngestor(Ingestor):
    source: ClassVar[str] = "digitex"
    settings_cls = DigitexIngestSettings
    settings: DigitexIngestSettings

    def build(self) -> None:
        self.venue = self.settings.venue
        s = self.settings
        spec = DIGITEX.with_limits(RateWindow(s.rate_per_second, 1.0), RateWindow(s.rate_per_minute, 60.0))
        self.limit = LimiterHold(spec, s.base_url)  # shared with the order router in this process
        self.limiter = self.limit.limiter
        self.client = DigitexClient(
            s.base_url, s.token, self.limiter, timeout_s=s.request_timeout_s,
            backoff=Backoff(s.retry_initial_s, s.retry_max_s), on_error=self._vendor_error, on_frame=self._frame,
        )
        self.frames = FrameGuard(self, normalize.Malformed)
        self.catalog = DigitexCatalog(self)
        self.live = DigitexLive(self)
        self.books = DigitexBooks(self)
        self.backfill = DigitexBackfill(self)
        self.feed_control = FeedControl(self, resolve=self._resolve_feed, subscribe=self._follow,
                                        unsubscribe=self._unfollow)
        self._market_tasks: dict[str, list[asyncio.Task[Any]]] = {}
        self.trade_cursors: CursorStore[TradeCursor] = CursorStore(None, self.source, "trades", TradeCursor)
        self.bar_cursors: CursorStore[dict[str, int]] = CursorStore(None, self.source, "bars", dict[str, int])
        self._connected: bool | None = None

    @property
    def markets(self) -> dict[int, MarketState]:
        return self.catalog.markets

    @property
    def by_symbol(self) -> dict[str, MarketState]:
        return self.catalog.by_symbol

    def _vendor_error(self, kind: str) -> None:
        self.metrics.vendor_errors.labels(self.source, kind).inc()

    def _frame(self, channel: str) -> None:
        self.metrics.frames_in.labels(self.source, channel).inc()

    def health(self) -> dict[str, Any]:
        return {
            "vendor_url": self.client.base_url,
            "vendor_calls": self.client.calls,
            "rate_limited": self.client.rate_limited,
            "markets": {
                m.code: {"last_trade_id": m.last_trade_id, "bars": m.bar_cursor} for m in self.markets.values()
            },
            "books": self.books.deltas.health(),
        }

    # --- start / stop ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        kv = await ensure_bucket(self.js, INGEST_STATE, self.settings.stream_replicas)
        self.trade_cursors.kv = self.bar_cursors.kv = kv
        while True:
            try:
                await self.catalog.load()
                break
            except Unavailable as exc:
                self.log.warning("Digitex reference data unavailable (%s): retrying", exc)
                await self._set_connected(False, str(exc))
                await asyncio.sleep(self.settings.retry_max_s / 4)
        await self._set_connected(True)
        await self.feed_control.start([Seed(code) for code in self.catalog.seed_codes()])
        self.spawn(self.catalog.refresh_forever(), "reference")

    # --- feed control: the followed markets -------------------------------------------------------
    async def _resolve_feed(self, code: str) -> Resolved | None:
        if not self.catalog.listed:
            raise CatalogUnavailable("markets/ not loaded yet")
        listed = self.catalog.listed.get(code)
        if listed is None:
            return None
        instrument, _ = listed
        return Resolved(self.venue, instrument.symbol, None, instrument.name)

    async def _follow(self, feed: Feed) -> None:
        state = await self.catalog.follow(feed.instrument)
        if state is None:
            raise ValueError(f"market {feed.instrument} is no longer listed")
        s = self.settings
        await self.live.load(state)
        await self.backfill.load(state)
        tasks = [self.spawn(self._loop(self.live.poll_trades, state, s.trades_interval_s), f"trades:{state.code}"),
                 self.spawn(self._loop(self.books.poll, state, s.book_interval_s), f"book:{state.code}")]
        for res in s.resolutions:
            tasks.append(self.spawn(self._loop(self.backfill.poll_bars, state, s.bars_interval_s, res),
                                    f"bars:{state.code}:{res}"))
        self._market_tasks[feed.instrument] = tasks

    async def _unfollow(self, feed: Feed) -> None:
        await cancel_and_wait(self._market_tasks.pop(feed.instrument, []))
        self.catalog.unfollow(feed.instrument)

    async def stop(self) -> None:
        await super().stop()  # the poll loops are cancelled first, then the HTTP client closes
        await self.client.close()
        self.limit.release()

    async def replay(self, request: ReplayRequest) -> int:
        return await self.backfill.replay(request)

    async def emit_trades(self, trades: list[Trade]) -> int:
        """Publish a page of trades, one message per trade acked as a group (``emit_group``);
        returns the number published (``flush()`` waits for the acks)."""
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
        await self.session_flowing(ok)

    async def _loop(self, poll: Callable[..., Awaitable[None]], state: MarketState, interval: float,
                    *args: Any) -> None:
        while True:
            began = time.monotonic()
            try:
                await poll(state, *args)
                await self._set_connected(True)
            except Unavailable as exc:
                self.log.warning("%s %s: %s", poll.__name__, state.code, exc)
                self.live.tracker(state).interrupted(self.now_ns())
                await self._set_connected(False, str(exc))
            except ClientError as exc:
                self.log.error("%s %s refused: %s", poll.__name__, state.code, exc)
            except Exception as exc:
                self.log.error("%s %s failed: %r", poll.__name__, state.code, exc)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))
