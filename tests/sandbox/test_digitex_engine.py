"""The Digitex sandbox's matching engine, without HTTP: the funds its open orders tie up are kept
as a running total (so accepting an order does not walk every open order); after any sequence
of places, accepts, fills, amendments and cancels it equals a recount, and so does the available
balance the API reports."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from services.sandbox.digitex.engine import ACCEPTED, BUY, GTC, IOC, PARTIAL, SELL, Account, Engine, Order
from services.sandbox.digitex.market import FUTURES, MARKETS, ZERO
from services.sandbox.digitex.routes import DigitexApi
from services.sandbox.digitex.settings import DigitexSettings

_ops = st.lists(st.tuples(
    st.sampled_from(["place", "place", "place", "accept", "cancel", "update", "cross"]),
    st.sampled_from([1, 2, 3]),  # market
    st.sampled_from([BUY, SELL]),
    st.integers(-12, 12),  # price offset from the market, in ticks
    st.integers(1, 5),  # quantity, in lots
    st.sampled_from([GTC, GTC, IOC]),
    st.integers(1, 20),  # leverage
    st.integers(0, 50),  # which order (modulo the count)
), max_size=60)


def _recount(engine: Engine, acct: Account, code: str) -> Decimal:
    used = ZERO
    for order in acct.orders:
        market = MARKETS[order.market_id]
        spends = market.settle if market.market_type == FUTURES or order.side == BUY else market.base
        if order.status in (ACCEPTED, PARTIAL) and spends == code:
            used += engine.reserve(market, order, order.quantity)
    return used


@settings(max_examples=100, deadline=None)
@given(_ops)
def test_reserved_funds_match_a_recount(ops):
    api = DigitexApi(DigitexSettings(initial_balances={"DGTX": "0", "BTC": "1000", "ETH": "0",
                                                        "USDC": "100000000", "USDT": "0"}))
    engine = api.engine
    acct = next(iter(engine.accounts.values()))
    pending: list[Order] = []
    for n, (op, market_id, side, offset, lots, duration, leverage, pick) in enumerate(ops):
        market = MARKETS[market_id]
        state = engine.markets[market_id]
        mid = state.price(state.index_now() + pick * 60)  # near where the tape goes: some orders fill
        price = max(market.tick_size, (mid / market.tick_size).to_integral_value() * market.tick_size
                    + offset * market.tick_size)
        fields = {"client_id": f"c{n}", "market_id": market_id, "side": side, "type": engine.limit_type,
                  "duration": duration, "leverage": leverage, "price": str(price),
                  "quantity": str(lots * market.lot_size)}
        if op == "place":
            engine.place(acct, fields, pending.append)
            if pick % 2:  # accepted at once (else when an "accept" comes)
                engine.accept(acct, pending.pop())
        elif op == "accept":  # the accept delay ran out for every order placed so far
            for order in pending:
                engine.accept(acct, order)
            pending.clear()
        elif op == "cancel" and acct.orders:
            target = acct.orders[pick % len(acct.orders)]
            engine.cancel(acct, target.market_id, [target.client_id])
        elif op == "update" and acct.orders:
            target = acct.orders[pick % len(acct.orders)]
            engine.update(acct, {**fields, "client_id": target.client_id, "market_id": target.market_id},
                          pending.append)
        elif op == "cross":  # the tape walks on, through some of the resting orders
            for mid_ in engine.markets:
                engine.match_tape(mid_, engine.markets[mid_].index_now() + 3000)
        for code in ("USDC", "BTC"):
            assert acct.reserved.get(code, ZERO) == _recount(engine, acct, code)
    for code in ("USDC", "BTC"):
        positions = sum((engine.position_margin(acct, m.id) for m in MARKETS.values()
                         if m.market_type == FUTURES and m.settle == code), ZERO)
        assert engine.available(acct, code) == acct.balances[code] - _recount(engine, acct, code) - positions
