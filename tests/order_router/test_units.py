"""Pure parts: enums from order_meta (both key namings), validation, the state machine."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.order_router import requests as rq
from services.order_router.state import can_transition
from services.order_router.validation import ExchangeMeta, Limits, MetaError, validate_order

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
