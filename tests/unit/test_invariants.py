"""Contract invariants (issue #12): each one is refused both when an event is built in Python and
when it is decoded from JSON, with a message naming the field; what a market legitimately has
(negative spreads and basis, zero sizes) is accepted.

Every test runs twice: on the compiled checks (``contracts/_checks.c``, what ``make venv`` builds
and the services run) and on the generated Python ones (their fallback when it is not built)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from marketbus.contracts import codec, invariants
from marketbus.contracts.invariants import MAX_TS_NS, InvariantError
from marketbus.contracts.market import Bar, BookLevel, BookSnapshot, CashDelivery, CashPrice, MarketPrice, Trade
from marketbus.contracts.orders import CancelOrders, PlaceOrder
from marketbus.contracts.reference import Instrument, Unit
from marketbus.contracts.status import FeedStatus

BASE = dict(id="0123456789abcdef01234567", source="finx", venue="COINBASE", symbol="BTC-USD",
            ts_event=1_700_000_000_000_000_000, ts_recv=1_700_000_000_000_000_001)
GOOD: dict[type, dict[str, Any]] = {
    Trade: {**BASE, "price": Decimal("21865.01"), "size": Decimal("0.015"), "side": "buy", "trade_id": "42"},
    PlaceOrder: dict(command_id="place-1", ts=1_700_000_000_000_000_000, client_id="c-1", market="FS-BTCUSD",
                     side="buy", order_type="limit", quantity=Decimal(1), price=Decimal(100)),
    CancelOrders: dict(command_id="cancel-1", ts=1_700_000_000_000_000_000, market="FS-BTCUSD", client_ids=["c-1"]),
    Unit: {**BASE, "code": "TON", "factor": Decimal(1000)},
    Instrument: {**BASE, "instrument_type": "spot", "vendor_symbol": "BTC:USD"},
    FeedStatus: dict(id="abc", service="ingest_finx", source="finx", venue="_", symbol="_", state="connected",
                     ts=1_700_000_000_000_000_000),
}



@pytest.fixture(params=["compiled", "python"], autouse=True)
def checks(request: pytest.FixtureRequest) -> Iterator[str]:
    """The implementation of the checks the test runs on."""
    yield from using_checks(request.param)


def using_checks(implementation: str) -> Iterator[str]:
    """Run the contract classes on ``implementation`` ("compiled" or "python") while iterating."""
    if implementation == "compiled":
        assert type(Trade.__dict__["__post_init__"]).__name__ == "Plan", (
            "the compiled checks (marketbus.contracts._checks) are not built: `make venv` builds them")
    elif not invariants.compiled_checks():  # not built: the Python checks are all there is
        yield implementation
        return
    previous = invariants.set_compiled_checks(implementation == "compiled")
    try:
        assert invariants.compiled_checks() == (implementation == "compiled")
        yield implementation
    finally:
        invariants.set_compiled_checks(previous)


# (type, field, a bad value as built in Python, the same as it would be on the wire)
BAD: list[tuple[type, str, Any, Any]] = [
    # timestamps: int64 ns from 1970 to 2262
    (Trade, "ts_event", MAX_TS_NS + 1, MAX_TS_NS + 1),
    (Trade, "ts_event", -1, -1),
    (Trade, "ts_recv", 10**30, 10**30),
    (Trade, "ts_event", 1.7e18, 1.7e18),
    (PlaceOrder, "ts", 2**64, 2**64),
    # decimals: finite, |x| < 1e18, at most 38 digits, no non-zero |x| < 1e-30
    (Trade, "price", Decimal("NaN"), "NaN"),
    (Trade, "price", Decimal("sNaN"), "sNaN"),
    (Trade, "price", Decimal("Infinity"), "Infinity"),
    (Trade, "price", Decimal("1e30"), "1e30"),
    (Trade, "price", Decimal("1E+999999999"), "1E+999999999"),
    (Trade, "price", Decimal("1e-31"), "1e-31"),
    (Trade, "price", Decimal("1." + "0" * 38), "1." + "0" * 38),
    (Trade, "size", Decimal("0E-1000000"), "0E-1000000"),
    (PlaceOrder, "quantity", Decimal("1e30"), "1e30"),
    # prices > 0 where the kind requires it; sizes >= 0
    (Trade, "price", Decimal(-1), "-1"),
    (Trade, "price", Decimal(0), "0"),
    (Trade, "price", Decimal("-0"), "-0"),
    (Trade, "size", Decimal(-1), "-1"),
    (Trade, "size", Decimal("-0"), "-0"),
    (PlaceOrder, "quantity", Decimal("-1"), "-1"),
    (PlaceOrder, "price", Decimal("-100"), "-100"),
    (Unit, "factor", Decimal(0), "0"),  # a factor divides: 0 is never a unit
    # tokens: one NATS subject token, bounded
    (Trade, "symbol", "BTC.USD", "BTC.USD"),
    (Trade, "symbol", "x" * 129, "x" * 129),
    (Trade, "symbol", "", ""),
    (Trade, "venue", "*", "*"),
    (Trade, "source", "fin x", "fin x"),
    (FeedStatus, "venue", "a>b", "a>b"),
    (PlaceOrder, "market", "FS.BTCUSD", "FS.BTCUSD"),
    # ids and client ids: a subject token, a header and a KV key
    (Trade, "id", "a b", "a b"),
    (Trade, "id", "x" * 129, "x" * 129),
    (Trade, "id", "abc\r\nX-Evil: 1", "abc\r\nX-Evil: 1"),
    (PlaceOrder, "client_id", "x" * 10_000, "x" * 10_000),
    (PlaceOrder, "client_id", "a.b", "a.b"),
    (PlaceOrder, "command_id", "id with spaces", "id with spaces"),
    (CancelOrders, "client_ids", ["ok", "a*b"], ["ok", "a*b"]),
    # bounded texts and literals
    (Instrument, "vendor_symbol", "x" * 2000, "x" * 2000),
    (Trade, "side", "sideways", "sideways"),
    (PlaceOrder, "leverage", 10**6, 10**6),
]


def _wire(event_type: type, field: str, bad: Any) -> bytes:
    obj = msgspec.to_builtins(event_type(**GOOD[event_type]))
    obj[field] = bad
    return msgspec.json.encode(obj)


def _names_field(message: str, event_type: type, field: str) -> bool:
    return f"{event_type.__name__}.{field}" in message or f"`$.{field}" in message


@pytest.mark.parametrize(("event_type", "field", "bad", "wire"), BAD,
                         ids=[f"{t.__name__}.{f}={str(b)[:20]}" for t, f, b, _ in BAD])
def test_a_broken_invariant_is_refused_when_built_and_when_decoded(event_type: type, field: str, bad: Any,
                                                                    wire: Any) -> None:
    with pytest.raises(InvariantError) as built:
        event_type(**{**GOOD[event_type], field: bad})
    assert f"{event_type.__name__}.{field}:" in str(built.value)
    assert isinstance(built.value, ValueError)

    data = _wire(event_type, field, wire)
    for decode in (codec.decode, lambda d: codec.decode_as(d, event_type)):
        with pytest.raises(msgspec.ValidationError) as decoded:
            decode(data)
        assert _names_field(str(decoded.value), event_type, field), str(decoded.value)


def test_the_good_events_are_accepted_both_ways() -> None:
    for event_type, kwargs in GOOD.items():
        event = event_type(**kwargs)
        assert codec.decode(codec.encode(event)) == event


def test_a_book_level_is_checked_inside_its_book() -> None:
    good = BookSnapshot(**BASE, bids=[BookLevel(Decimal(100), Decimal(1))], asks=[BookLevel(Decimal(101), Decimal(0))])
    for price in ("-1", "0", "-0"):
        with pytest.raises(InvariantError, match=r"BookLevel\.price"):
            BookLevel(Decimal(price), Decimal(1))
        data = codec.encode(good).replace(b'"asks":[["101","0",null]]', f'"asks":[["{price}","0",null]]'.encode())
        with pytest.raises(msgspec.ValidationError, match=r"BookLevel\.price.*\$\.asks\[0\]"):
            codec.decode(data)


def test_a_batch_is_checked_event_by_event() -> None:
    trade = Trade(**GOOD[Trade])
    batch = codec.make_batch([trade, msgspec.structs.replace(trade, id="ffff")])
    data = codec.encode(batch).replace(b'"price":"21865.01"', b'"price":"-0"', 1)
    with pytest.raises(msgspec.ValidationError, match=r"Trade\.price.*\$\.events\[0\]"):
        codec.decode(data)


def test_what_markets_legitimately_have_is_accepted() -> None:
    # Sitagri quotes spreads, basis and premiums: negative market prices, bars and deliveries
    spread = MarketPrice(**BASE, last="-3.25", bid="-3.5", perf="-0.02")  # its decimals are carried as text
    bar = Bar(**BASE, interval="1d", open=Decimal(-1), high=Decimal(0), low=Decimal(-2), close=Decimal("-0.5"))
    basis = CashPrice(**BASE, deliveries=[CashDelivery(start=0, end=MAX_TS_NS, value=Decimal(-12), prime=Decimal(-1))])
    # zero sizes (a deleted level, an empty trade print) and a market order without a price
    level = BookLevel(Decimal("0.000001"), Decimal(0))
    market_order = PlaceOrder(**{**GOOD[PlaceOrder], "order_type": "market", "price": None, "quantity": Decimal(0)})
    # the whole int64 range of timestamps, 18-place vendor decimals, a normalized exotic symbol
    edge = Trade(**{**GOOD[Trade], "ts_event": 0, "ts_recv": MAX_TS_NS, "price": Decimal("37795.000000000000000000"),
                    "symbol": "NIKKEI~2F225-JPY"})
    for event in (spread, bar, basis, market_order, edge):
        assert codec.decode(codec.encode(event)) == event
    assert codec.decode(codec.encode(BookSnapshot(**BASE, bids=[level], asks=[]))).bids == [level]


def test_invalid_utf8_and_deep_nesting_are_decode_errors() -> None:
    for data in (b'{"type":"trade","id":"\xff"}', b"[" * 100_000):
        with pytest.raises(msgspec.DecodeError):
            codec.decode(data)
        with pytest.raises(msgspec.DecodeError):
            codec.decode_as(data, Trade)
