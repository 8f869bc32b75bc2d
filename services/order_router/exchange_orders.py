"""Exchange calls: sending orders to Digitex, cancelling them, and finding out what happened
when an outcome was lost (``unknown``: ask ``order_status`` until the exchange tells; never guess).

Every result lands in the :class:`~.tracking.OrderBook` as a transition. The tasks started here
(a submit, a resolution, a cancel waiting for its order to be placed) are kept in ``tasks`` so the
service can cancel them when it stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from decimal import Decimal
from typing import Any

from marketbus.contracts.orders import UpdateOrder

from .client import DigitexClient, OutcomeUnknown, Refused
from .settings import OrderRouterSettings
from .state import WORKING_STATES, OrderRecord
from .tracking import OrderBook


class ExchangeOrders:
    def __init__(self, book: OrderBook, client: DigitexClient, settings: OrderRouterSettings,
                 log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.book = book
        self.client = client
        self.settings = settings
        self.log = log
        self.tasks: set[asyncio.Task[Any]] = set()
        self._resolving: set[tuple[str, str]] = set()

    # --- background tasks -------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("order task failed: %r", task.exception(), exc_info=task.exception())

    def cancel_tasks(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    # --- place --------------------------------------------------------------------------------------
    async def submit(self, rec: OrderRecord) -> None:
        """Send a pending_submit order; a lost outcome goes to ``unknown`` and is resolved."""
        book = self.book
        assert book.meta is not None
        meta = book.meta
        rec.submit_attempts += 1
        try:
            await self.client.place(
                client_id=rec.client_id, market_id=rec.market_id, side=meta.side[rec.side],
                type=meta.type[rec.order_type], duration=meta.duration[rec.duration], leverage=rec.leverage,
                quantity=rec.quantity, price=rec.price if rec.price is not None else Decimal(0))
        except Refused as exc:
            if exc.duplicate_client_id:
                await book.transition(rec, "unknown", reason=f"exchange already knows the client_id: {exc.reason}")
                self.start_resolve(rec)
            else:
                await book.transition(rec, "rejected", reason=f"exchange refused: {exc.reason}")
            return
        except OutcomeUnknown as exc:
            await book.transition(rec, "unknown", reason=str(exc))
            self.start_resolve(rec, retry_after=exc.retry_after)
            return
        await book.transition(rec, "submitted")

    async def amend(self, rec: OrderRecord, cmd: UpdateOrder) -> None:
        """Send an update of the live order ``rec``; raises :class:`Refused` or :class:`OutcomeUnknown`."""
        meta = self.book.meta
        assert meta is not None
        await self.client.update(
            client_id=cmd.client_id, market_id=rec.market_id, side=meta.side[cmd.side],
            type=meta.type[cmd.order_type], duration=meta.duration[cmd.duration], leverage=cmd.leverage,
            quantity=cmd.quantity, price=cmd.price if cmd.price is not None else Decimal(0))

    async def ref_price(self, market: str) -> Decimal | None:
        """A recent price of ``market`` (mark price of a position, else the book's mid) for the
        risk checks of market orders."""
        ref_prices = self.book.ref_prices
        cached = ref_prices.get(market)
        if cached and time.monotonic() - cached[1] < self.settings.ref_price_max_age_s:
            return cached[0]
        assert self.book.meta is not None
        info = self.book.meta.markets[market]
        try:
            book = await self.client.order_book(info.id)
        except Exception as exc:
            self.log.warning("no reference price for %s: %r", market, exc)
            return cached[0] if cached else None
        bids, asks = book.get("bids") or [], book.get("asks") or []
        if bids and asks:
            price = (Decimal(bids[0][0]) + Decimal(asks[0][0])) / 2
        elif bids or asks:
            price = Decimal((bids or asks)[0][0])
        else:
            return cached[0] if cached else None
        ref_prices[market] = (price, time.monotonic())
        return price

    # --- unknown outcomes -------------------------------------------------------------------------
    def resolving(self, key: tuple[str, str]) -> bool:
        """Is the order of ``key`` being resolved already?"""
        return key in self._resolving

    def start_resolve(self, rec: OrderRecord, retry_after: float = 0.0) -> None:
        key = (rec.market, rec.client_id)
        if key in self._resolving:
            return
        self._resolving.add(key)
        self.spawn(self._resolve(rec, retry_after))

    async def _resolve(self, rec: OrderRecord, retry_after: float) -> None:
        """Ask ``order_status`` until the exchange tells what happened (never guess)."""
        key = (rec.market, rec.client_id)
        s = self.settings
        book = self.book
        settle_ns = int((s.unknown_settle_s or s.request_timeout_s + 0.5) * 1e9)
        try:
            absent = 0
            while rec.state in ("unknown", "pending_submit"):
                try:
                    rows = [r for r in await self.client.order_status(rec.client_id)
                            if int(r.get("market_id", -1)) == rec.market_id]
                except Exception as exc:
                    self.log.info("order_status %s: %r", rec.client_id, exc)
                    await asyncio.sleep(s.unknown_poll_s * 2)
                    continue
                if rows:
                    await book.adopt(rec, rows[0], reason="resolved by order_status")
                    if rec.state == "pending_submit":  # exchange PENDING maps to submitted; be explicit
                        await book.transition(rec, "submitted", reason="resolved by order_status")
                    return
                absent += 1
                settled = time.time_ns() - rec.updated_ns >= settle_ns
                if absent >= s.unknown_absent_polls and settled:
                    if rec.submit_attempts >= s.max_submit_attempts:
                        await book.transition(rec, "rejected", reason=f"not received by the exchange after "
                                                                      f"{rec.submit_attempts} attempts")
                        return
                    if rec.state == "unknown":
                        await book.transition(rec, "pending_submit", reason="not received by the exchange: re-sending")
                    if retry_after:
                        await asyncio.sleep(retry_after)
                        retry_after = 0.0
                    await self.submit(rec)
                    absent = 0
                    if rec.state != "unknown":
                        return
                    continue
                await asyncio.sleep(s.unknown_poll_s)
        finally:
            self._resolving.discard(key)

    # --- cancel -----------------------------------------------------------------------------------
    async def cancel_targets(self, targets: list[OrderRecord], market_id: int | None, client_ids: list[str] | None,
                             command_id: str | None = None) -> None:
        for rec in targets:
            if rec.state in WORKING_STATES and rec.state != "cancel_pending":
                rec.command_id = command_id or rec.command_id
                await self.book.transition(rec, "cancel_pending")
        for attempt in range(3):
            try:
                await self.client.cancel(market_id, client_ids)
                break
            except OutcomeUnknown as exc:  # cancelling twice is harmless: try again
                self.log.warning("cancel failed (%r), attempt %d", exc, attempt + 1)
                await asyncio.sleep(max(exc.retry_after, 0.2))
            except Refused as exc:
                self.log.warning("cancel refused: %s", exc.reason)
                break
        # orders still being placed: cancel them once the exchange has them
        for rec in targets:
            if rec.state in ("pending_submit", "unknown"):
                self.spawn(self._cancel_when_placed(rec))
        self.book.wake()

    async def _cancel_when_placed(self, rec: OrderRecord) -> None:
        deadline = time.monotonic() + 30
        while rec.state in ("pending_submit", "unknown") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if rec.state in ("submitted", "accepted", "partially_filled"):
            await self.cancel_targets([rec], rec.market_id, [rec.client_id])
