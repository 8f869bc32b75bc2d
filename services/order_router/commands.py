"""Validation, risk and execution of the order commands: place, cancel, update.

A command is checked against the kill switch, the exchange's rules (validation.py) and the
risk limits (risk.py) on the :class:`~.tracking.OrderBook`'s totals; a place creates the order
record (KV, which also catches a re-used client id) and hands it to the exchange calls
(:class:`~.exchange_orders.ExchangeOrders`), which run in the background. The answer is the
command's :class:`CommandAck`.

``place`` is the router's hot path: no await or allocation here that is not needed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from decimal import Decimal
from typing import Any

from marketbus.contracts.orders import CancelOrders, CommandAck, PlaceOrder, UpdateOrder

from .client import OutcomeUnknown, Refused
from .control import KillSwitch
from .exchange_orders import ExchangeOrders
from .risk import RiskEngine
from .state import OrderRecord
from .tracking import OrderBook
from .validation import Limits, check_reduce_only, safely, validate_cancel, validate_order


class OrderCommands:
    def __init__(self, book: OrderBook, exchange: ExchangeOrders, kill_switch: KillSwitch, limits: Limits,
                 risk: RiskEngine, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.book = book
        self.exchange = exchange
        self.kill_switch = kill_switch
        self.limits = limits
        self.risk = risk
        self.log = log

    async def place(self, cmd: PlaceOrder, claim: Awaitable[CommandAck | None]) -> CommandAck:
        book = self.book
        meta = book.meta
        assert meta is not None
        orders = book.orders
        key = (cmd.market, cmd.client_id)
        existing = orders.get(key) or book.recent.get(key)
        if existing is not None:
            return await claim or self._existing(cmd, existing)
        reason = self.kill_switch.refusal() or validate_order(cmd, meta, self.limits)
        market = meta.markets.get(cmd.market)
        ref = None
        if reason is None and market is not None:
            ref = await self.exchange.ref_price(cmd.market) if cmd.order_type == "market" else None
            position = book.positions.get(cmd.market, Decimal(0))
            if cmd.reduce_only:
                pending = orders.reduce_only_remaining(cmd.market, cmd.side)
                reason = safely(lambda: check_reduce_only(cmd.side, cmd.quantity, position, pending))
            if reason is None:
                reason = safely(lambda: self.risk.check(
                    market=market, side=cmd.side, quantity=cmd.quantity, price=cmd.price, ref_price=ref,
                    position=position, open_orders=orders, reduce_only=cmd.reduce_only))
        now = time.time_ns()
        rec = OrderRecord(
            client_id=cmd.client_id, market=cmd.market, market_id=market.id if market else -1, side=cmd.side,
            order_type=cmd.order_type, duration=cmd.duration, quantity=cmd.quantity, price=cmd.price,
            leverage=cmd.leverage, reduce_only=cmd.reduce_only, state="rejected" if reason else "pending_submit",
            seq=1, command_id=cmd.command_id, reason=reason, created_ns=now, updated_ns=now)
        if not reason:
            orders[key] = rec  # counted by the risk checks of the next commands at once
        if not await book.store.create(rec):  # the client id is known (KV): a re-delivery or a re-use
            if orders.get(key) is rec:
                orders.pop(key, None)
            existing = await book.store.load(cmd.market, cmd.client_id)
            if existing is None:
                return CommandAck(command_id=cmd.command_id, accepted=False, client_ids=[cmd.client_id],
                                  reason="order state store unavailable")
            return await claim or self._existing(cmd, existing)
        await book.publish_order(rec)
        prior = await claim
        if prior is not None and not reason:  # the command id was used before, for another order
            await book.transition(rec, "rejected", reason=f"command id {cmd.command_id} was already used "
                                                       f"(orders {', '.join(prior.client_ids) or '-'})")
            return prior
        if reason:
            book.remember_closed(key, rec)
            self.log.info("refused %s %s: %s", cmd.market, cmd.client_id, reason)
            return prior or CommandAck(command_id=cmd.command_id, accepted=False, reason=reason,
                                       client_ids=[cmd.client_id])
        self.exchange.spawn(self.exchange.submit(rec))
        return CommandAck(command_id=cmd.command_id, accepted=True, client_ids=[cmd.client_id])

    def _existing(self, cmd: PlaceOrder, existing: OrderRecord) -> CommandAck:
        key = (cmd.market, cmd.client_id)
        if existing.command_id == cmd.command_id:  # this very command, re-delivered after a crash
            if existing.state in ("pending_submit", "unknown") and not self.exchange.resolving(key):
                self.book.adopt_record(existing)
                self.exchange.start_resolve(existing)
            return CommandAck(command_id=cmd.command_id, accepted=existing.state != "rejected",
                              reason=existing.reason if existing.state == "rejected" else None,
                              client_ids=[cmd.client_id])
        return CommandAck(command_id=cmd.command_id, accepted=False, client_ids=[cmd.client_id],
                          reason=f"client_id {cmd.client_id} is already used in {cmd.market}")

    async def cancel(self, cmd: CancelOrders) -> CommandAck:
        meta = self.book.meta
        assert meta is not None
        reason = safely(lambda: validate_cancel(cmd, meta))
        if reason:
            return CommandAck(command_id=cmd.command_id, accepted=False, reason=reason, client_ids=list(cmd.client_ids))
        wanted = set(cmd.client_ids)
        if wanted:
            assert cmd.market is not None
            for cid in wanted:  # orders of other instances / before a restart
                if (cmd.market, cid) not in self.book.orders:
                    rec = await self.book.store.load(cmd.market, cid)
                    if rec is not None and not rec.terminal:
                        self.book.adopt_record(rec)
        targets = [r for r in self.book.open_records()
                   if (cmd.market is None or r.market == cmd.market) and (not wanted or r.client_id in wanted)]
        market_id = meta.markets[cmd.market].id if cmd.market else None
        await self.exchange.cancel_targets(targets, market_id, sorted(wanted) if wanted else None, cmd.command_id)
        ids = sorted({r.client_id for r in targets} | wanted)
        return CommandAck(command_id=cmd.command_id, accepted=True, client_ids=ids)

    async def update(self, cmd: UpdateOrder) -> CommandAck:
        assert self.book.meta is not None
        key = (cmd.market, cmd.client_id)
        rec = self.book.orders.get(key) or await self.book.store.load(cmd.market, cmd.client_id)
        refuse = self.kill_switch.refusal() or validate_order(cmd, self.book.meta, self.limits)
        if refuse is None and (rec is None or rec.state not in ("accepted", "partially_filled", "submitted")):
            refuse = f"order {cmd.client_id} is not open" if rec is not None else f"unknown order {cmd.client_id}"
        if refuse is None:
            assert rec is not None
            self.book.adopt_record(rec)
            rec = self.book.orders[key]
            market = self.book.meta.markets[cmd.market]
            ref = await self.exchange.ref_price(cmd.market) if cmd.order_type == "market" else None
            position = self.book.positions.get(cmd.market, Decimal(0))
            refuse = safely(lambda: self.risk.check(
                market=market, side=cmd.side, quantity=cmd.quantity, price=cmd.price, ref_price=ref,
                position=position, open_orders=self.book.orders, replacing=rec))
        if refuse:
            return CommandAck(command_id=cmd.command_id, accepted=False, reason=refuse, client_ids=[cmd.client_id])
        assert rec is not None
        try:
            await self.exchange.amend(rec, cmd)
        except Refused as exc:
            return CommandAck(command_id=cmd.command_id, accepted=False, reason=f"exchange refused: {exc.reason}",
                              client_ids=[cmd.client_id])
        except OutcomeUnknown as exc:
            rec.command_id = cmd.command_id
            await self.book.transition(rec, "unknown", reason=f"update: {exc}")
            self.exchange.start_resolve(rec)
            return CommandAck(command_id=cmd.command_id, accepted=True, reason="outcome unknown: resolving",
                              client_ids=[cmd.client_id])
        rec.command_id = cmd.command_id
        rec.side, rec.order_type, rec.duration, rec.leverage = cmd.side, cmd.order_type, cmd.duration, cmd.leverage
        await self.book.transition(rec, rec.state, reason="amended", price=cmd.price,
                                   quantity=rec.filled_quantity + cmd.quantity, force=True)
        return CommandAck(command_id=cmd.command_id, accepted=True, client_ids=[cmd.client_id])
