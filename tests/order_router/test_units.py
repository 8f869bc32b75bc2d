"""Pure parts: enums from order_meta (both key namings), validation, the state machine, the open
orders book behind the risk checks."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.order_router import requests as rq
from services.order_router.risk import RiskEngine, RiskLimits
from services.order_router.state import OpenOrders, OrderRecord, can_transition
from services.order_router.validation import ExchangeMeta, Limits, MarketInfo, MetaError, validate_order

MARKET = {"id": 7, "code": "FS:XBTUSD", "market_type": 1, "tick_size": "0.5", "tick_price": "0.005",
          "lot_size": "1", "quote_currency": {"code": "USD"}, "contract_currency": {"code": "USDC"}}


def _info(keys: str, market: int = 1, limit: int = 2) -> dict:
    meta = {"type": {"MARKET": market, "LIMIT": limit}, "side": {"BUY": 1, "SELL": 2},
            "duration": {"DURATION_UNDEFINED": 0, "GFD": 1, "GTC": 2, "GTF": 3, "IOC": 4, "FOK": 5},
            "status": {"PENDING": 1, "ACCEPTED": 2, "REJECTED": 3, "CANCELED": 4, "FILLED": 5, "PARTIAL": 6}}
    if keys == "model":
        meta = {f"order_{k}": v for k, v in meta.items()}
    return {"markets": [MARKET], "order_meta": meta}


@pytest.mark.parametrize("keys", ["short", "model"])
def test_enums_come_from_order_meta_in_either_naming(keys):
    meta = ExchangeMeta.from_exchange_info(_info(keys, market=2, limit=1))  # the other numbering
    assert meta.type == {"market": 2, "limit": 1}
    assert meta.side == {"buy": 1, "sell": 2} and meta.duration["IOC"] == 4
    assert meta.status[6] == "partially_filled" and meta.status[4] == "cancelled" and meta.status[1] == "submitted"
    market = meta.markets["FS-XBTUSD"]
    assert market.id == 7 and market.futures and market.multiplier == Decimal("0.01")


def test_missing_enum_is_an_error():
    info = _info("short")
    del info["order_meta"]["type"]
    with pytest.raises(MetaError):
        ExchangeMeta.from_exchange_info(info)


def test_validation_of_a_good_and_bad_orders():
    meta = ExchangeMeta.from_exchange_info(_info("short"))
    limits = Limits()
    assert validate_order(rq.place("FS-XBTUSD", "buy", 3, "100.5", leverage=10), meta, limits) is None
    assert validate_order(rq.place("FS-XBTUSD", "sell", 3, None, order_type="market", duration="FOK"), meta,
                          limits) is None
    assert "tick size" in validate_order(rq.place("FS-XBTUSD", "buy", 3, "100.2"), meta, limits)
    assert "takes no price" in validate_order(rq.place("FS-XBTUSD", "buy", 3, "100", order_type="market",
                                                       duration="IOC"), meta, limits)


def test_state_machine():
    assert can_transition("pending_submit", "unknown") and can_transition("unknown", "accepted")
    assert can_transition("accepted", "partially_filled") and can_transition("cancel_pending", "cancelled")
    for terminal in ("filled", "cancelled", "rejected"):
        assert not can_transition(terminal, "accepted")
    assert not can_transition("accepted", "pending_submit") and not can_transition("filled", "unknown")


_ops = st.lists(st.tuples(st.sampled_from(["put", "fill", "amend", "drop"]), st.integers(0, 7),
                          st.sampled_from(["M1", "M2"]), st.sampled_from(["buy", "sell"]), st.booleans(),
                          st.integers(1, 50)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_open_orders_totals_match_a_recount(ops):
    """The running totals the risk checks read equal a recount of the open orders after any
    sequence of new orders, fills and amendments (recorded in place, then set again) and closes."""
    book = OpenOrders()
    for op, n, market, side, reduce_only, qty in ops:
        key = (market, f"c{n}")
        rec = book.get(key)
        if op == "put" or rec is None:
            book[key] = OrderRecord(client_id=f"c{n}", market=market, market_id=1, side=side, order_type="limit",
                                    duration="GTC", quantity=Decimal(qty), reduce_only=reduce_only)
        elif op == "fill":
            rec.filled_quantity = min(rec.quantity, rec.filled_quantity + qty)
            book[key] = rec
        elif op == "amend":
            rec.quantity, rec.side = rec.filled_quantity + qty, side
            book[key] = rec
        else:
            book.pop(key)
        for m in ("M1", "M2"):
            for s in ("buy", "sell"):
                mine = [r for r in book.values() if r.market == m and r.side == s]
                assert book.remaining(m, s) == sum((r.remaining for r in mine), Decimal(0))
                assert book.reduce_only_remaining(m, s) == sum((r.remaining for r in mine if r.reduce_only), Decimal(0))
                for r in mine:
                    assert book.remaining(m, s, excluding=r) == book.remaining(m, s) - r.remaining


def test_position_limit_counts_open_orders_of_the_same_side_once():
    info = ExchangeMeta.from_exchange_info(_info("short")).markets["FS-XBTUSD"]
    assert isinstance(info, MarketInfo)
    risk = RiskEngine(RiskLimits(max_position=Decimal(10), max_orders_per_second=1000))
    book = OpenOrders()
    resting = OrderRecord(client_id="a", market=info.symbol, market_id=7, side="buy", order_type="limit",
                          duration="GTC", quantity=Decimal(6), price=Decimal(100))
    book[(info.symbol, "a")] = resting

    def check(qty: int, side: str = "buy", replacing: OrderRecord | None = None) -> str | None:
        return risk.check(market=info, side=side, quantity=Decimal(qty), price=Decimal(100), ref_price=None,
                          position=Decimal(2), open_orders=book, replacing=replacing)

    assert check(2) is None  # 2 + 6 + 2 = 10
    assert "could reach 11" in (check(3) or "")
    assert check(8, replacing=resting) is None  # the amendment replaces the resting 6
    assert check(12, side="sell") is None  # 2 - 12 = -10: the resting buy does not count
    resting.filled_quantity = Decimal(4)  # a fill, recorded: 2 left
    book[(info.symbol, "a")] = resting
    assert check(6) is None
