"""A tiny matching engine: orders against the synthetic book and the trade tape.

Life cycle (enum values are the vendor's): place -> PENDING(1); after ``accept_delay`` the order
is validated -> REJECTED(3) or ACCEPTED(2); marketable parts fill against the synthetic book at
once (MARKET and IOC cancel the rest, FOK is all-or-nothing); the rest rests and fills when the
tape trades at or through its price -> PARTIAL(6) / FILLED(5); cancel -> CANCELED(4).
Fills move positions (futures, netted) and balances (realized PnL; spot: base/quote).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal

from .market import CURRENCIES, FUTURES, MARKETS, ZERO, MarketDef, MarketState, d18, now_us

PENDING, ACCEPTED, REJECTED, CANCELED, FILLED, PARTIAL = 1, 2, 3, 4, 5, 6
OPEN = (PENDING, ACCEPTED, PARTIAL)
DONE = (REJECTED, CANCELED, FILLED)
BUY, SELL = 1, 2
WIRE_QUANTUM = Decimal("1e-18")
GFD, GTC, GTF, IOC, FOK = 1, 2, 3, 4, 5
STATUS_NAMES = {PENDING: "PENDING", ACCEPTED: "ACCEPTED", REJECTED: "REJECTED", CANCELED: "CANCELED",
                FILLED: "FILLED", PARTIAL: "PARTIAL"}


@dataclass(slots=True)
class Order:
    client_id: str
    market_id: int
    side: int
    type: int
    duration: int
    leverage: int
    price: Decimal
    orig_quantity: Decimal
    quantity: Decimal  # remaining
    created_at: int
    trader_id: int
    status: int = PENDING
    notional: Decimal = ZERO  # sum of fill price * quantity, for average_price
    rest_from: int = 0  # tape index after which resting fills may happen
    reject_reason: str | None = None
    in_book: bool = False  # listed in the engine's resting orders of its market

    @property
    def executed(self) -> Decimal:
        return self.orig_quantity - self.quantity

    def wire(self) -> dict[str, object]:
        executed = self.executed
        return {
            "client_id": self.client_id, "market_id": self.market_id, "side": self.side, "type": self.type,
            "duration": self.duration, "status": self.status, "price": d18(self.price), "quantity": d18(self.quantity),
            "orig_quantity": d18(self.orig_quantity),
            # The captured responses show a bare "0" until something trades.
            "average_price": d18(self.notional / executed) if executed else "0",
            "created_at": self.created_at, "reduce_only": False,
            "executed_quantity": None, "stop_loss_price": None,  # always null in captured responses
        }


@dataclass(slots=True)
class Trade:
    contract_id: int
    market_id: int
    side: int
    price: Decimal
    quantity: Decimal
    traded_at: int
    client_id: str

    def wire(self) -> dict[str, object]:
        return {"contract_id": self.contract_id, "market_id": self.market_id, "side": self.side,
                "price": d18(self.price), "quantity": d18(self.quantity), "traded_at": self.traded_at}


@dataclass(slots=True)
class Position:
    quantity: Decimal = ZERO  # signed: > 0 long, < 0 short
    entry_price: Decimal = ZERO
    leverage: int = 0


@dataclass
class Account:
    trader_id: int
    balances: dict[str, Decimal]
    orders: list[Order] = field(default_factory=list)
    by_key: dict[tuple[int, str], list[Order]] = field(default_factory=dict)  # (market, client_id) -> orders
    trades: list[Trade] = field(default_factory=list)
    positions: dict[int, Position] = field(default_factory=dict)
    last_created: int = 0
    # what the open (accepted) orders tie up, by currency, kept as orders change: checking the
    # funds of a new order costs O(1), not O(open orders)
    reserved: dict[str, Decimal] = field(default_factory=dict)
    reserved_by_order: dict[int, tuple[str, Decimal]] = field(default_factory=dict)  # id(order) -> it

    def stamp(self) -> int:
        """A strictly increasing µs timestamp, so cursor positions are unique per account."""
        self.last_created = max(now_us(), self.last_created + 1)
        return self.last_created

    def open_orders(self) -> list[Order]:
        return [o for o in self.orders if o.status in OPEN]


class Engine:
    def __init__(self, markets: dict[int, MarketState], trader_ids: list[int], balances: dict[str, str],
                 market_type: int, limit_type: int) -> None:
        self.markets = markets
        self.market_type, self.limit_type = market_type, limit_type
        self._initial = {code: Decimal(balances.get(code, "0")) for code in CURRENCIES}
        self._trader_ids = trader_ids
        self.accounts: dict[int, Account] = {}
        self.placements: dict[tuple[int, int, str], dict[str, int]] = {}  # ground truth for tests
        self._contract_ids = itertools.count(170_000_001)
        self._resting: dict[int, list[tuple[Account, Order]]] = {m: [] for m in markets}
        self.reset()

    def reset(self, trader_id: int | None = None) -> None:
        for tid in self._trader_ids if trader_id is None else [trader_id]:
            self.accounts[tid] = Account(tid, dict(self._initial))
        for market_id, resting in self._resting.items():
            self._resting[market_id] = [x for x in resting if self.accounts[x[0].trader_id] is x[0]]
        self.placements = {k: v for k, v in self.placements.items() if trader_id is not None and k[0] != trader_id}

    def count(self, trader_id: int, market_id: int, client_id: str, what: str) -> None:
        entry = self.placements.setdefault((trader_id, market_id, client_id), {"attempts": 0, "applied": 0})
        entry[what] += 1

    # --- commands -------------------------------------------------------------------------
    def exists(self, acct: Account, market_id: int, client_id: str) -> bool:
        return (market_id, client_id) in acct.by_key

    def place(self, acct: Account, fields: dict[str, object], schedule: Callable[[Order], None]) -> Order:
        order = Order(
            client_id=str(fields["client_id"]), market_id=int(fields["market_id"]),  # type: ignore[call-overload]
            side=int(fields["side"]), type=int(fields["type"]), duration=int(fields["duration"]),  # type: ignore[call-overload]
            leverage=int(fields["leverage"]), price=Decimal(fields["price"]),  # type: ignore[call-overload,arg-type]
            orig_quantity=Decimal(fields["quantity"]), quantity=Decimal(fields["quantity"]),  # type: ignore[arg-type]
            created_at=acct.stamp(), trader_id=acct.trader_id)
        acct.orders.append(order)
        acct.by_key.setdefault((order.market_id, order.client_id), []).append(order)
        self.count(acct.trader_id, order.market_id, order.client_id, "applied")
        schedule(order)
        return order

    def reject_reason(self, acct: Account, order: Order) -> str | None:
        market = MARKETS.get(order.market_id)
        if market is None:
            return "unknown market"
        if order.quantity <= 0 or order.quantity % market.lot_size:
            return f"quantity must be a positive multiple of lot size {market.lot_size}"
        if order.type == self.limit_type and (order.price <= 0 or order.price % market.tick_size):
            return f"price must be a positive multiple of tick size {market.tick_size}"
        if market.market_type == FUTURES and not 1 <= order.leverage <= 100:
            return "leverage must be between 1 and 100"
        if self.reserve(market, order, order.quantity) > self.available(acct, market.settle if
                                                                        market.market_type == FUTURES or
                                                                        order.side == BUY else market.base):
            return "insufficient balance"
        return None

    def accept(self, acct: Account, order: Order) -> None:
        if order.status != PENDING:  # canceled while pending
            return
        reason = self.reject_reason(acct, order)
        if reason:
            order.status, order.reject_reason = REJECTED, reason
            return
        order.status = ACCEPTED
        self._execute(acct, order)
        self._reserve(acct, order)

    def _reserve(self, acct: Account, order: Order) -> None:
        """Re-count what ``order`` ties up after it changed (status, quantity, price, leverage)."""
        old = acct.reserved_by_order.pop(id(order), None)
        if old is not None:
            acct.reserved[old[0]] -= old[1]
        if order.status not in (ACCEPTED, PARTIAL):
            return
        market = MARKETS.get(order.market_id)
        if market is None:
            return
        code = market.settle if market.market_type == FUTURES or order.side == BUY else market.base
        amount = self.reserve(market, order, order.quantity)
        acct.reserved_by_order[id(order)] = (code, amount)
        acct.reserved[code] = acct.reserved.get(code, ZERO) + amount

    def _execute(self, acct: Account, order: Order) -> None:
        """Fill the marketable part against the book; decide what rests."""
        state = self.markets[order.market_id]
        k = state.index_now()
        bids, asks = state.book(k)
        levels = asks if order.side == BUY else bids
        limit = None if order.type == self.market_type else order.price
        fills, left = [], order.quantity
        for price, size in levels:
            if left <= 0 or (limit is not None and (price > limit if order.side == BUY else price < limit)):
                break
            take = min(size, left)
            fills.append((price, take))
            left -= take
        if order.duration == FOK and left > 0:
            order.status = CANCELED
            return
        for price, qty in fills:
            self._fill(acct, order, price, qty)
        if order.quantity > 0 and (order.type == self.market_type or order.duration in (IOC, FOK)):
            order.status = CANCELED
        order.rest_from = k
        if order.status in (ACCEPTED, PARTIAL) and not order.in_book:
            order.in_book = True
            self._resting[order.market_id].append((acct, order))

    def _fill(self, acct: Account, order: Order, price: Decimal, qty: Decimal) -> None:
        market = MARKETS[order.market_id]
        order.quantity -= qty
        order.notional += price * qty
        order.status = FILLED if order.quantity == 0 else PARTIAL
        self._reserve(acct, order)
        acct.trades.append(Trade(next(self._contract_ids), market.id, order.side, price, qty,
                                 acct.stamp(), order.client_id))
        signed = qty if order.side == BUY else -qty
        if market.market_type == FUTURES:
            self._move_position(acct, market, signed, price, order.leverage)
        else:
            acct.balances[market.base] += signed
            acct.balances[market.quote] -= signed * price

    def _move_position(self, acct: Account, market: MarketDef, signed: Decimal, price: Decimal, leverage: int) -> None:
        pos = acct.positions.setdefault(market.id, Position())
        pos.leverage = leverage
        if pos.quantity == 0 or (pos.quantity > 0) == (signed > 0):  # open or add: average the entry
            total = pos.quantity + signed
            pos.entry_price = (pos.entry_price * abs(pos.quantity) + price * abs(signed)) / abs(total)
            pos.quantity = total
            return
        closed = min(abs(signed), abs(pos.quantity))
        direction = 1 if pos.quantity > 0 else -1
        acct.balances[market.settle] += closed * (price - pos.entry_price) * direction * market.multiplier
        pos.quantity += signed
        if pos.quantity == 0:
            pos.entry_price = ZERO
        elif (pos.quantity > 0) != (direction > 0):  # flipped: the remainder opened at this price
            pos.entry_price = price

    def cancel(self, acct: Account, market_id: int | None, client_ids: list[str] | None) -> list[str]:
        targets = acct.open_orders()
        if market_id is not None:
            targets = [o for o in targets if o.market_id == market_id]
        if client_ids is not None:
            wanted = set(client_ids)
            targets = [o for o in targets if o.client_id in wanted]
        for order in targets:
            order.status = CANCELED
            self._reserve(acct, order)
        return [o.client_id for o in targets]

    def live_order(self, acct: Account, market_id: int, client_id: str) -> Order | None:
        live = [o for o in acct.by_key.get((market_id, client_id), []) if o.status in OPEN]
        return live[-1] if live else None

    def update(self, acct: Account, fields: dict[str, object], schedule: Callable[[Order], None]) -> Order:
        """Amend the live order in place; if it is inactive (or unknown), open a new one (vendor rule)."""
        order = self.live_order(acct, int(fields["market_id"]), str(fields["client_id"]))  # type: ignore[call-overload]
        if order is None:
            return self.place(acct, fields, schedule)
        order.side, order.type = int(fields["side"]), int(fields["type"])  # type: ignore[call-overload]
        order.duration, order.leverage = int(fields["duration"]), int(fields["leverage"])  # type: ignore[call-overload]
        order.price = Decimal(fields["price"])  # type: ignore[arg-type]
        # quantity is the new open amount; what already executed stays executed.
        order.orig_quantity = order.executed + Decimal(fields["quantity"])  # type: ignore[arg-type]
        order.quantity = Decimal(fields["quantity"])  # type: ignore[arg-type]
        if order.status != PENDING:
            self._execute(acct, order)
        self._reserve(acct, order)
        return order

    # --- resting orders against the tape --------------------------------------------------
    def match_tape(self, market_id: int, upto: int, max_ticks: int = 50_000) -> int:
        """Fill resting orders on ticks up to ``upto`` that trade at or through them; returns #fills."""
        state = self.markets[market_id]
        resting = self._resting[market_id] = [
            (acct, o) for acct, o in self._resting[market_id] if o.status in (ACCEPTED, PARTIAL)]
        if not resting:
            return 0
        # Price priority, then time priority.
        buys = sorted((x for x in resting if x[1].side == BUY), key=lambda x: (-x[1].price, x[1].created_at))
        sells = sorted((x for x in resting if x[1].side == SELL), key=lambda x: (x[1].price, x[1].created_at))
        start = max(min(o.rest_from for _, o in resting) + 1, upto - max_ticks + 1)
        fills = 0
        for k in range(start, upto + 1):
            price = state.price(k)
            for book, crosses in ((buys, lambda o: o.price >= price), (sells, lambda o: o.price <= price)):  # noqa: B023 (called within this iteration)
                budget = state.size(k)
                for acct, order in book:
                    if budget <= 0:
                        break
                    if order.quantity <= 0 or order.status not in (ACCEPTED, PARTIAL) or k <= order.rest_from:
                        continue
                    if not crosses(order):
                        break  # sorted by price: nobody further down crosses either
                    take = min(order.quantity, budget)
                    budget -= take
                    self._fill(acct, order, order.price, take)
                    fills += 1
        for _, order in resting:
            order.rest_from = max(order.rest_from, upto)
        return fills

    async def run(self, interval_s: float) -> None:
        while True:
            for market_id, state in self.markets.items():
                self.match_tape(market_id, state.index_now())
            await asyncio.sleep(interval_s)

    # --- account views --------------------------------------------------------------------
    def reserve(self, market: MarketDef, order: Order, qty: Decimal) -> Decimal:
        """What an open order of ``qty`` ties up: margin (futures) or the funds it may spend (spot)."""
        price = order.price if order.price > 0 else self.markets[market.id].price(self.markets[market.id].index_now())
        if market.market_type == FUTURES:
            # at the wire's 18 decimals, rounded up: sums of these are exact, so the running total
            # of what open orders reserve never drifts from a recount
            return (qty * price * market.multiplier / max(order.leverage, 1)).quantize(WIRE_QUANTUM, ROUND_CEILING)
        return qty * price if order.side == BUY else qty

    def position_margin(self, acct: Account, market_id: int) -> Decimal:
        pos = acct.positions.get(market_id)
        if pos is None or pos.quantity == 0:
            return ZERO
        return abs(pos.quantity) * pos.entry_price * MARKETS[market_id].multiplier / max(pos.leverage, 1)

    def available(self, acct: Account, code: str) -> Decimal:
        used = acct.reserved.get(code, ZERO)  # of the accepted open orders
        used += sum((self.position_margin(acct, m.id) for m in MARKETS.values()
                     if m.market_type == FUTURES and m.settle == code), ZERO)
        return acct.balances.get(code, ZERO) - used

    def balances(self, acct: Account) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for code, currency in CURRENCIES.items():
            trading = acct.balances.get(code, ZERO)
            out.append({"currency": currency.wire(), "main_balance": d18(0), "trading_balance": d18(trading),
                        "available_balance": d18(self.available(acct, code)), "total_balance": d18(trading)})
        return out

    def positions(self, acct: Account) -> list[dict[str, object]]:
        out = []
        for market in MARKETS.values():
            if market.market_type != FUTURES:
                continue
            state = self.markets[market.id]
            mark = state.price(state.index_now())
            pos = acct.positions.get(market.id) or Position()
            row: dict[str, object] = {
                "market_id": market.id, "contract_currency_id": CURRENCIES[market.settle].id, "timestamp": now_us(),
                "position_side": None, "quantity": d18(0), "leverage": None, "entry_price": None,
                "liquidation_price": None, "mark_price": d18(mark), "position_margin": d18(0), "unrealized_pnl": None,
            }
            if pos.quantity != 0:
                direction = 1 if pos.quantity > 0 else -1
                qty = abs(pos.quantity)
                lev = Decimal(max(pos.leverage, 1))
                row.update({
                    "position_side": 1 if direction > 0 else 2, "quantity": d18(qty), "leverage": d18(lev),
                    "entry_price": d18(pos.entry_price),
                    "liquidation_price": d18(pos.entry_price * (1 - direction / lev)),
                    "position_margin": d18(self.position_margin(acct, market.id)),
                    "unrealized_pnl": d18(qty * (mark - pos.entry_price) * direction * market.multiplier),
                })
            out.append(row)
        return out
