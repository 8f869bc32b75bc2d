"""Tracking and reconciliation: the exchange's open orders, order history and trades against the
router's own state; every difference is repaired (a transition) and published.

- ``sync()`` (every ``poll_interval_s`` while orders are working, ``idle_poll_s`` otherwise):
  trades since the cursor -> Fill events; open orders -> transitions; working orders missing from
  the open list -> order_history / order_status -> their final state; positions and balances
  after fills.
- ``reconcile()`` (at start-up and every ``reconcile_interval_s``): load every non-terminal
  record from KV (orders of a crashed instance included), resolve pending_submit/unknown ones
  through order_status, adopt orders the exchange has but the router does not know, re-publish
  the last event of open orders (same Nats-Msg-Id: de-duplicated), then ``sync()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from decimal import Decimal
from typing import Any, Protocol

from .client import DigitexClient, now_us
from .settings import OrderRouterSettings
from .state import WORKING_STATES, OrderRecord
from .tracking import OrderBook

TRADES_CURSOR = "trades_cursor"


class Resolver(Protocol):
    """Who finds out what happened to an order whose outcome was lost (``exchange_orders``)."""

    def resolving(self, key: tuple[str, str]) -> bool: ...

    def start_resolve(self, rec: OrderRecord, retry_after: float = 0.0) -> None: ...


class Reconciler:
    """Keeps the :class:`OrderBook` true to the exchange: reads the exchange through ``client``,
    changes orders only through the book, and hands orders of unknown outcome to ``resolver``."""

    def __init__(self, book: OrderBook, client: DigitexClient, resolver: Resolver, settings: OrderRouterSettings,
                 log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.book = book
        self.client = client
        self.resolver = resolver
        self.settings = settings
        self.log = log
        self.trade_cursor: int | None = None
        self.seen_trades: deque[tuple[Any, Any]] = deque(maxlen=20000)
        self._seen: set[tuple[Any, Any]] = set()
        self.last_positions: dict[str, tuple[Any, ...]] = {}
        self.last_balances: dict[str, tuple[Any, ...]] = {}
        self.syncs = 0
        self.last_sync_s = 0.0  # how long the last tracking sync took
        self._sync_lock = asyncio.Lock()
        self._last_rows: dict[tuple[int, str], tuple[Any, ...]] = {}  # open order rows adopted last sync

    # --- loops ----------------------------------------------------------------------------------
    async def track_loop(self) -> None:
        book = self.book
        while True:
            working = any(o.state in WORKING_STATES for o in book.orders.values())
            interval = self.settings.poll_interval_s if working else self.settings.idle_poll_s
            try:
                await asyncio.wait_for(book.woken.wait(), interval)
                # let a burst of transitions land first; and at most a few syncs a second, as each
                # reads every open order: with thousands open, a sync takes a while, and the pause
                # grows with it (the REST budget and the loop's time go to commands first)
                await asyncio.sleep(min(max(self.settings.min_sync_gap_s, 3 * self.last_sync_s), interval))
            except TimeoutError:
                pass
            book.woken.clear()
            try:
                started = time.monotonic()
                await self.sync()
                self.last_sync_s = time.monotonic() - started
            except Exception as exc:
                self.log.warning("sync failed: %r", exc)
                await asyncio.sleep(0.5)

    async def reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval_s)
            try:
                await self.reconcile()
            except Exception as exc:
                self.log.warning("reconcile failed: %r", exc)

    # --- reconcile ------------------------------------------------------------------------------
    async def reconcile(self, startup: bool = False) -> dict[str, int]:
        book = self.book
        assert book.meta is not None
        stats = {"loaded": 0, "resolving": 0, "adopted": 0}
        if self.trade_cursor is None:
            raw = await book.store.get_meta(TRADES_CURSOR)
            self.trade_cursor = int(raw) if raw else now_us()
            if not raw:
                await book.store.put_meta(TRADES_CURSOR, str(self.trade_cursor).encode())
        for rec in await book.store.all():
            key = (rec.market, rec.client_id)
            if rec.terminal:
                continue
            mine = book.orders.get(key)
            if mine is None or mine.seq < rec.seq:
                if mine is not None:  # another instance moved it on: take its version
                    for name in rec.__struct_fields__:
                        setattr(mine, name, getattr(rec, name))
                    rec = mine
                book.orders[key] = rec
                stats["loaded"] += 1
                if startup:  # the last transition may not have been published before a crash
                    await book.publish_order(rec)
            rec = book.orders[key]
            if rec.state in ("pending_submit", "unknown") and not self.resolver.resolving(key):
                stale = time.time_ns() - rec.updated_ns > (self.settings.request_timeout_s + 0.5) * 1e9
                if startup or stale:
                    self.resolver.start_resolve(rec)
                    stats["resolving"] += 1
        stats["adopted"] = await self.sync(adopt_foreign=True, balances=True)
        if startup or stats["loaded"] or stats["adopted"]:
            self.log.info("reconciled: %s", stats)
        return stats

    # --- sync -------------------------------------------------------------------------------------
    async def sync(self, adopt_foreign: bool = False, balances: bool = False) -> int:
        async with self._sync_lock:
            return await self._sync(adopt_foreign, balances)

    async def _sync(self, adopt_foreign: bool, balances: bool) -> int:
        book = self.book
        meta = book.meta
        assert meta is not None
        self.syncs += 1
        # trades first: the order rows fetched after them already include their executions
        trades = await self._new_trades()
        rows = await self.client.open_orders()
        open_by_key = {(int(o["market_id"]), str(o["client_id"])): o for o in rows}
        missing: list[OrderRecord] = []
        last_rows, self._last_rows = self._last_rows, {}
        moved = 0
        for i, rec in enumerate(list(book.orders.values())):
            if i % 256 == 255:
                await asyncio.sleep(0)  # thousands of open orders: let commands through meanwhile
            if rec.state not in WORKING_STATES:
                continue  # pending_submit / unknown belong to their submit or resolve task
            key = (rec.market_id, rec.client_id)
            row = open_by_key.pop(key, None)
            if row is None:
                missing.append(rec)
                continue
            # the row and the record as they were last time: nothing to adopt (most rows, most rounds);
            # a cancel_pending record is re-examined as its wait for the cancel runs out
            seen = (rec.seq, row.get("status"), row.get("quantity"), row.get("orig_quantity"), row.get("price"),
                    row.get("average_price"))
            if (last_rows.get(key) != seen or rec.state == "cancel_pending") and await book.adopt(rec, row):
                moved += 1
                if moved % 8 == 0:
                    # a burst of transitions (each a KV write and an event) is spread out, so a
                    # command arriving meanwhile does not queue behind all of them
                    await asyncio.sleep(0.001)
            self._last_rows[key] = (rec.seq, *seen[1:])
        if missing:
            await self._settle_missing(missing)
        adopted = 0
        if adopt_foreign:
            for (market_id, client_id), row in open_by_key.items():
                info = meta.by_id.get(market_id)
                if info is None or (info.symbol, client_id) in book.orders:
                    continue
                known = await book.store.load(info.symbol, client_id)
                if known is not None:
                    if known.terminal:  # we closed it, the exchange has it open: repair
                        book.orders[(info.symbol, client_id)] = known
                        await book.adopt(known, row, reason="reopened by reconciliation")
                    continue
                await self._adopt_foreign(info.symbol, row)
                adopted += 1
        if trades:
            await self._publish_fills(trades)
        if trades or balances:
            await self._positions_and_balances()
        return adopted

    async def _settle_missing(self, missing: list[OrderRecord]) -> None:
        """Working orders that left the open list: their final state from history/status."""
        book = self.book
        found: dict[tuple[int, str], dict[str, Any]] = {}
        row: dict[str, Any] | None
        if len(missing) > 3:
            since = min((m.exchange_ts_us or m.created_ns // 1000) for m in missing) - 5_000_000
            for row in await self.client.order_history(created_at_from=since):
                found.setdefault((int(row["market_id"]), str(row["client_id"])), row)
        for rec in missing:
            row = found.get((rec.market_id, rec.client_id))
            if row is None:
                rows = [x for x in await self.client.order_status(rec.client_id)
                        if int(x.get("market_id", -1)) == rec.market_id]
                row = rows[0] if rows else None
            if row is None:
                self.log.warning("order %s %s is not known to the exchange", rec.market, rec.client_id)
                continue
            await book.adopt(rec, row)

    async def _adopt_foreign(self, market: str, row: dict[str, Any]) -> None:
        book = self.book
        assert book.meta is not None
        now = time.time_ns()
        otype = book.meta.type_of.get(int(row.get("type", 0)), "limit")
        rec = OrderRecord(
            client_id=str(row["client_id"]), market=market, market_id=int(row["market_id"]),
            side=book.meta.side_of.get(int(row.get("side", 0)), "buy"), order_type=otype,
            duration=book.meta.duration_of.get(int(row.get("duration", 0)), "GTC"),
            quantity=Decimal(str(row.get("orig_quantity") or row.get("quantity") or 0)),
            price=Decimal(str(row["price"])) if otype == "limit" else None,
            leverage=int(row.get("leverage") or 1), state="unknown", seq=0, created_ns=now, updated_ns=now)
        if not await book.store.create(rec):
            return
        book.orders[(market, rec.client_id)] = rec
        await book.adopt(rec, row, reason="found on the exchange by reconciliation")

    # --- trades -------------------------------------------------------------------------------------
    async def _new_trades(self) -> list[dict[str, Any]]:
        book = self.book
        cursor = self.trade_cursor or now_us()
        rows = await self.client.trade_history(traded_at_from=cursor)
        new = []
        for t in reversed(rows):  # oldest first
            ident = (t.get("contract_id"), t.get("traded_at"))
            if ident in self._seen:
                continue
            if len(self.seen_trades) == self.seen_trades.maxlen:
                self._seen.discard(self.seen_trades[0])
            self.seen_trades.append(ident)
            self._seen.add(ident)
            new.append(t)
        if new:
            newest = max(int(t["traded_at"]) for t in new)
            if newest > cursor:
                self.trade_cursor = newest  # inclusive next time; duplicates are skipped above
                await book.store.put_meta(TRADES_CURSOR, str(newest).encode())
        return new

    async def _publish_fills(self, trades: list[dict[str, Any]]) -> None:
        book = self.book
        assert book.meta is not None
        for t in trades:
            info = book.meta.by_id.get(int(t["market_id"]))
            if info is None:
                continue
            side = book.meta.side_of.get(int(t["side"]))
            qty, price = Decimal(str(t["quantity"])), Decimal(str(t["price"]))
            candidates = [o for o in list(book.orders.values()) + list(book.recent.values())
                          if o.market == info.symbol and o.side == side
                          and o.filled_quantity - o.fills_attributed >= qty
                          and (o.price is None or (price <= o.price if side == "buy" else price >= o.price))]
            owner = min(candidates, key=lambda o: o.created_ns) if candidates else None
            if owner is not None:
                owner.fills_attributed += qty
            await book.publish_fill(t, owner.client_id if owner else None, info.symbol)

    async def _positions_and_balances(self) -> None:
        book = self.book
        assert book.meta is not None
        for row in await self.client.positions():
            info = book.meta.by_id.get(int(row.get("market_id", -1)))
            if info is None:
                continue
            qty = Decimal(str(row.get("quantity") or 0))
            side = row.get("position_side")
            signed = qty if side == 1 else -qty if side == 2 else Decimal(0)
            book.positions[info.symbol] = signed
            if row.get("mark_price"):
                book.ref_prices[info.symbol] = (Decimal(str(row["mark_price"])), time.monotonic())
            ident: tuple[Any, ...] = (signed, row.get("entry_price"), row.get("leverage"))
            if self.last_positions.get(info.symbol) != ident:
                self.last_positions[info.symbol] = ident
                await book.publish_position(row, info.symbol)
        for row in await self.client.balances():
            code = str((row.get("currency") or {}).get("code", "?"))
            ident = (row.get("total_balance"), row.get("available_balance"), row.get("trading_balance"))
            if self.last_balances.get(code) != ident:
                self.last_balances[code] = ident
                await book.publish_balance(row)
