"""Tracking: the router's picture of its orders, and the one way to change it.

:class:`OrderBook` holds the open orders (with the risk totals), the recently closed ones (for
fill attribution), positions and reference prices, and moves an order from state to state:
``transition`` persists the new record (KV, compare-and-set against other instances), then
publishes its event. Every other part of the router (commands, exchange calls, reconciliation)
changes orders only through it, so none of them needs the router itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import msgspec

from marketbus.contracts import subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.orders import Balance, Fill, Position

from .client import now_us
from .metrics import RouterMetrics
from .state import WORKING_STATES, OpenOrders, OrderRecord, StateStore, can_transition, event_for
from .validation import ExchangeMeta

Emit = Callable[[Any, str], Awaitable[None]]  # (event, subject): publish on the bus
RECENT_KEPT = 5000  # closed orders kept for fill attribution


class OrderBook:
    """The orders the router tracks, their transitions and the events that tell them.

    ``store`` and ``meta`` are known once the service has started (KV bucket, exchange info)."""

    def __init__(self, emit: Emit, metrics: RouterMetrics, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.emit = emit
        self.metrics = metrics
        self.log = log
        self.store: StateStore
        self.meta: ExchangeMeta | None = None
        self.orders = OpenOrders()  # open orders by (market, client_id), with risk totals
        self.recent: OrderedDict[tuple[str, str], OrderRecord] = OrderedDict()  # recently closed (fill attribution)
        self.positions: dict[str, Decimal] = {}  # signed, by market symbol
        self.ref_prices: dict[str, tuple[Decimal, float]] = {}
        self.woken = asyncio.Event()  # set when an order starts working: tracking polls sooner
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    def lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def remember_closed(self, key: tuple[str, str], rec: OrderRecord) -> None:
        """Keep a closed order for fill attribution: the last :data:`RECENT_KEPT` of them. An
        order that drops out is forgotten by the store too (its KV revision): what the router
        holds per order is bounded by the open orders plus ``RECENT_KEPT``, not by every order it
        ever handled (``bench/rss.py --vendors order_router``)."""
        self.recent[key] = rec
        self.recent.move_to_end(key)
        while len(self.recent) > RECENT_KEPT:
            old, _ = self.recent.popitem(last=False)
            if old not in self.orders:
                self.store.forget(*old)

    def wake(self) -> None:
        self.woken.set()

    def open_records(self) -> list[OrderRecord]:
        return list(self.orders.values())  # every record kept in ``orders`` is open (not terminal)

    def adopt_record(self, rec: OrderRecord) -> None:
        """Track ``rec`` as stored (by another instance, or before a restart)."""
        key = (rec.market, rec.client_id)
        if rec.terminal:
            self.orders.pop(key, None)
        else:
            self.orders[key] = rec

    async def publish_order(self, rec: OrderRecord, ts_event: int | None = None) -> None:
        """The order event of ``rec`` as it stands (its latest transition)."""
        await self.emit(event_for(rec, ts_event), subjects.order_event(rec.market, rec.client_id))
        self.metrics.transitions.labels(rec.state).inc()

    async def transition(self, rec: OrderRecord, state: str, *, reason: str | None = None,
                         filled: Decimal | None = None, average: Decimal | None = None,
                         price: Decimal | None = None, quantity: Decimal | None = None,
                         ts_us: int | None = None, force: bool = False) -> bool:
        """Move ``rec`` to ``state`` (persist, then publish); False when not allowed or not a change."""
        key = (rec.market, rec.client_id)
        async with self.lock(key):
            same = state == rec.state
            fill_change = filled is not None and filled != rec.filled_quantity
            amend = (price is not None and price != rec.price) or (quantity is not None and quantity != rec.quantity)
            if same and not fill_change and not amend and not force:
                return False
            if not same and not can_transition(rec.state, state) and not force:
                return False
            prev = msgspec.structs.replace(rec)
            rec.state = state
            rec.seq += 1
            rec.reason = reason
            if filled is not None:
                rec.filled_quantity = filled
            if average is not None:
                rec.average_price = average
            if price is not None:
                rec.price = price
            if quantity is not None:
                rec.quantity = quantity
            if ts_us is not None:
                rec.exchange_ts_us = ts_us
            rec.updated_ns = time.time_ns()
            if not await self.store.save(rec):
                remote = await self.store.load(rec.market, rec.client_id)
                if remote is not None and remote.seq >= rec.seq:
                    self.log.info("order %s was moved by another instance to %s (seq %d)", rec.client_id,
                                  remote.state, remote.seq)
                    self.adopt_record(remote)
                    for f in msgspec.structs.fields(OrderRecord):
                        setattr(rec, f.name, getattr(remote, f.name))
                    return False
                if not await self.store.save(rec):
                    for f in msgspec.structs.fields(OrderRecord):
                        setattr(rec, f.name, getattr(prev, f.name))
                    return False
            await self.publish_order(rec, ts_us * 1000 if ts_us else None)
            if rec.terminal:
                self.orders.pop(key, None)
                self._locks.pop(key, None)
                self.remember_closed(key, rec)
            else:
                self.orders[key] = rec
            if state in WORKING_STATES:
                self.wake()
            return True

    async def adopt(self, rec: OrderRecord, row: dict[str, Any], reason: str | None = None) -> bool:
        """Move ``rec`` to what the exchange says (an order row of orders/order_status/history)."""
        assert self.meta is not None
        state = self.meta.status.get(int(row.get("status", 0)))
        if state is None:
            return False
        orig = Decimal(str(row.get("orig_quantity") or rec.quantity))
        remaining = Decimal(str(row.get("quantity") or 0))
        filled = max(Decimal(0), orig - remaining) if state != "rejected" else Decimal(0)
        avg = Decimal(str(row["average_price"])) if filled and row.get("average_price") else None
        price = Decimal(str(row["price"])) if rec.order_type == "limit" and row.get("price") else None
        if state == "accepted" and filled > 0:
            state = "partially_filled"
        if state == "submitted" and rec.state in ("accepted", "partially_filled", "cancel_pending"):
            return False
        if rec.state == "cancel_pending" and state in ("accepted", "partially_filled"):
            if time.time_ns() - rec.updated_ns < 3e9:
                return False  # the cancel is on its way
            reason = reason or "cancel did not take effect"
        quantity = orig if orig != rec.quantity else None
        if price is not None and rec.price is not None and price == rec.price:
            price = None
        return await self.transition(rec, state, reason=reason, filled=filled, average=avg, price=price,
                                     quantity=quantity, ts_us=int(row.get("created_at") or 0) or None,
                                     force=rec.state == "rejected")

    # --- fills, positions, balances -----------------------------------------------------------------
    async def publish_fill(self, trade: dict[str, Any], client_id: str | None, market: str) -> None:
        assert self.meta is not None
        now = time.time_ns()
        fill = Fill(
            id=event_id("digitex", "fill", trade.get("contract_id"), trade.get("traded_at")), client_id=client_id,
            market=market, side=self.meta.side_of.get(int(trade["side"]), "buy"),  # type: ignore[arg-type]
            price=Decimal(str(trade["price"])), quantity=Decimal(str(trade["quantity"])),
            ts_event=int(trade["traded_at"]) * 1000, ts_recv=now)
        await self.emit(fill, subjects.order_fill(market))

    async def publish_position(self, row: dict[str, Any], market: str) -> None:
        now = time.time_ns()
        qty = Decimal(str(row.get("quantity") or 0))
        side_num = row.get("position_side")
        side = "flat" if not qty or side_num is None else ("long" if int(side_num) == 1 else "short")

        def dec(name: str) -> Decimal | None:
            v = row.get(name)
            return Decimal(str(v)) if v not in (None, "") else None

        pos = Position(
            id=event_id("digitex", "position", market, side, qty, row.get("entry_price"), row.get("timestamp")),
            market=market, side=side, quantity=qty, entry_price=dec("entry_price"), leverage=dec("leverage"),  # type: ignore[arg-type]
            liquidation_price=dec("liquidation_price"), mark_price=dec("mark_price"),
            unrealized_pnl=dec("unrealized_pnl"), ts_event=int(row.get("timestamp") or now_us()) * 1000, ts_recv=now)
        await self.emit(pos, subjects.order_position(market))

    async def publish_balance(self, row: dict[str, Any]) -> None:
        now = time.time_ns()
        code = str((row.get("currency") or {}).get("code", "?"))
        bal = Balance(
            id=event_id("digitex", "balance", code, row.get("total_balance"), row.get("available_balance"), now),
            currency=code, total=Decimal(str(row.get("total_balance") or 0)),
            available=Decimal(str(row.get("available_balance") or 0)),
            trading=Decimal(str(row["trading_balance"])) if row.get("trading_balance") is not None else None,
            ts_event=now, ts_recv=now)
        await self.emit(bal, subjects.order_balance(subjects.normalize_symbol(code)))
