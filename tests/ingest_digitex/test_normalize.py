"""Digitex normalizer on payloads recorded from the sandbox (bot API wire format)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from marketbus.contracts import codec, subjects
from marketbus.contracts.ids import event_id
from marketbus.contracts.invariants import canonical_decimal
from services.ingest_digitex import normalize

PAYLOADS = Path(__file__).parent / "payloads"
TS = 1_800_000_000_000_000_000
V = "DIGITEX"


def load(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def test_markets_to_instruments() -> None:
    inst = {i.vendor_symbol: i for i in normalize.markets(load("sandbox_markets.json"), V, TS)}
    fut = inst["FS:BTCUSD"]
    assert (fut.symbol, fut.instrument_type, fut.base, fut.quote, fut.currency) == (
        "FS-BTCUSD",
        "perpetual",
        "BTC",
        "USD",
        "USDC",
    )
    assert fut.tick_size == Decimal(5) and fut.lot_size == Decimal(1) and fut.contract_size == Decimal("0.01")
    assert fut.vendor_id == "1"
    assert subjects.for_event(fut) == "ref.instrument.digitex.DIGITEX.FS-BTCUSD"
    spot = inst["S:BTCUSDC"]
    assert spot.instrument_type == "spot" and spot.contract_unit is None and spot.currency == "USDC"


def test_currencies_and_exchange_info() -> None:
    cur = {c.code: c for c in normalize.currencies(load("sandbox_currency.json"), TS)}
    assert cur["DGTX"].scale == 4 and cur["DGTX"].vendor_id == "1" and cur["BTC"].name == "Bitcoin"
    venue, currencies, instruments, limits = normalize.exchange_info(load("sandbox_exchange_info.json"), V, TS)
    assert limits == {"SECOND": 50, "MINUTE": 500}
    assert venue.symbol == V and venue.attributes == {"rate_limit_second": "50", "rate_limit_minute": "500"}
    assert {c.code for c in currencies} == set(cur) and len(instruments) == 3
    # the same currency from both endpoints is the same event
    assert {c.id for c in currencies} == {c.id for c in cur.values()}


def test_recent_trades_oldest_first_with_vendor_ids() -> None:
    raw = msgspec.json.decode(load("sandbox_recent_trades_1.json"))
    trades, bad, oldest = normalize.recent_trades(load("sandbox_recent_trades_1.json"), "FS-BTCUSD", V, TS)
    assert bad == [] and len(trades) == len(raw["recent_trades"]) == 20
    ids = [int(t.trade_id) for t in trades]
    assert ids == sorted(ids) and oldest == ids[0]
    wire = {w["trade_id"]: w for w in raw["recent_trades"]}
    for t in trades:
        w = wire[int(t.trade_id)]
        assert t.price == Decimal(w["price"]) and t.size == Decimal(w["base_volume"])
        # the vendor's exact decimal, in the contracts' canonical text (trailing zeros dropped), on the bus too
        exact = str(canonical_decimal(Decimal(w["price"])))
        assert str(t.price) == exact and str(t.size) == str(canonical_decimal(Decimal(w["base_volume"])))
        assert msgspec.json.decode(codec.encode(t))["price"] == exact
        assert t.ts_event == w["timestamp"] * 1000
        assert t.side == {1: "buy", 2: "sell"}[w["side"]]
        assert t.id == event_id("digitex", "trade", 1, w["trade_id"])
    assert subjects.for_event(trades[0]) == "md.trade.digitex.DIGITEX.FS-BTCUSD"
    # de-duplication by trade id: only newer ones
    newer, _, _ = normalize.recent_trades(load("sandbox_recent_trades_1.json"), "FS-BTCUSD", V, TS, after_id=ids[-3])
    assert [int(t.trade_id) for t in newer] == ids[-2:]


def test_recent_trades_in_any_wire_order_come_out_oldest_first() -> None:
    raw = msgspec.json.decode(load("sandbox_recent_trades_1.json"))
    expected, _, oldest = normalize.recent_trades(load("sandbox_recent_trades_1.json"), "FS-BTCUSD", V, TS)
    rows = raw["recent_trades"]
    for shuffled in (rows[::-1], rows[1::2] + rows[0::2]):
        trades, bad, got_oldest = normalize.recent_trades(
            msgspec.json.encode({**raw, "recent_trades": shuffled}), "FS-BTCUSD", V, TS)
        assert bad == [] and trades == expected and got_oldest == oldest


def test_order_book_snapshot() -> None:
    raw = msgspec.json.decode(load("sandbox_order_book_1.json"))
    book = normalize.order_book(load("sandbox_order_book_1.json"), "FS-BTCUSD", V, TS)
    assert book.bids[0].price == Decimal(raw["bids"][0][0]) and book.asks[0].size == Decimal(raw["asks"][0][1])
    assert book.bids[0].price > book.bids[-1].price and book.asks[0].price < book.asks[-1].price
    assert book.bids[0].price < book.asks[0].price
    assert book.ts_event == raw["timestamp"] * 1000 and subjects.for_event(book) == "md.book.digitex.DIGITEX.FS-BTCUSD"


def test_ohlcv_bars() -> None:
    raw = msgspec.json.decode(load("sandbox_ohlcv_1_1.json"))
    bars, bad, server = normalize.bars(load("sandbox_ohlcv_1_1.json"), 1, "1", "FS-BTCUSD", V, TS)
    assert bad == [] and len(bars) == len(raw["ohlcv"]) and server == raw["timestamp"]
    first = raw["ohlcv"][0]
    assert (
        bars[0].interval == "1m"
        and bars[0].open == Decimal(first["open"])
        and bars[0].volume == Decimal(first["volume"])
    )
    assert bars[0].ts_event == first["timestamp"] * 1000
    assert subjects.for_event(bars[0]) == "md.bar.digitex.DIGITEX.FS-BTCUSD"


@pytest.mark.parametrize(
    "res, interval",
    [
        ("1", "1m"),
        ("5", "5m"),
        ("60", "1h"),
        ("1440", "1d"),
        ("D", "1d"),
        ("1D", "1d"),
        ("1W", "1w"),
        ("1M", "1mo"),
        ("", None),
        ("x", None),
        ("0", None),
    ],
)
def test_resolutions(res: str, interval: str | None) -> None:
    assert normalize.interval_of(res) == interval


@pytest.mark.parametrize("payload, fn", [
    (b"<html>Server Error</html>", "order_book"),
    (b'{"market_id": 1, "timestamp": 1, "bids": [["abc", "1"]], "asks": []}', "order_book"),
    (b'{"market_id": 1, "timestamp": 1, "bids": [["1"]], "asks": []}', "order_book"),
    (b'{"market_id": 1}', "recent_trades"),
    (b'{"ohlcv": "nope"}', "bars"),
])
def test_malformed_payloads_raise_malformed(payload: bytes, fn: str) -> None:
    with pytest.raises(normalize.Malformed):
        if fn == "order_book":
            normalize.order_book(payload, "FS-BTCUSD", V, TS)
        elif fn == "recent_trades":
            normalize.recent_trades(payload, "FS-BTCUSD", V, TS)
        else:
            normalize.bars(payload, 1, "1", "FS-BTCUSD", V, TS)


def test_a_bad_trade_row_is_reported_the_rest_kept() -> None:
    raw = msgspec.json.decode(load("sandbox_recent_trades_1.json"))
    raw["recent_trades"][0]["price"] = "NaN"
    trades, bad, _ = normalize.recent_trades(msgspec.json.encode(raw), "FS-BTCUSD", V, TS)
    assert len(trades) == 19 and len(bad) == 1 and "price" in bad[0][1] and "finite" in bad[0][1]


@pytest.mark.parametrize("price", ["-1", "0", "-0", "NaN", "Infinity", "1e30", "-0.000000000000000000"])
def test_book_levels_with_an_impossible_price_are_malformed(price: str) -> None:
    book = {"market_id": 1, "timestamp": 1_700_000_000_000_000, "bids": [["100", "1"], [price, "1"]], "asks": []}
    with pytest.raises(normalize.Malformed, match="bid"):
        normalize.order_book(msgspec.json.encode(book), "FS-BTCUSD", "DIGITEX", 1)


@pytest.mark.parametrize(("field", "value"), [("price", "0"), ("price", "-0"), ("base_volume", "-1"),
                                              ("price", "1e30"), ("timestamp", 2**63)])
def test_trades_breaking_an_invariant_are_reported_the_rest_kept(field: str, value: object) -> None:
    good = {"trade_id": 1, "timestamp": 1_700_000_000_000_000, "price": "100.5", "base_volume": "1", "side": 1}
    page = {"market_id": 1, "recent_trades": [{**good, "trade_id": 2, field: value}, good]}
    trades, bad, _ = normalize.recent_trades(msgspec.json.encode(page), "FS-BTCUSD", "DIGITEX", 1)
    assert [t.trade_id for t in trades] == ["1"] and len(bad) == 1


def test_an_oversized_market_code_is_malformed() -> None:
    market = {"id": 1, "code": "FS:" + "X" * 500, "market_type": 1, "base_currency": {"id": 1, "code": "BTC"},
              "quote_currency": {"id": 2, "code": "USD"}}
    with pytest.raises(normalize.Malformed):
        normalize.markets(msgspec.json.encode([market]), "DIGITEX", 1)


def test_a_refused_trade_price_is_not_remembered_for_later_payloads() -> None:
    """Trade decimals are cached only once the Trade contract accepted them: a price refused in
    a trade must still be refused by ``dec`` (which promises decimals within the bounds to the
    instrument arithmetic) and in an order book."""
    raw = msgspec.json.decode(load("sandbox_recent_trades_1.json"))
    raw["recent_trades"][0]["price"] = "1e30"
    _trades, bad, _ = normalize.recent_trades(msgspec.json.encode(raw), "FS-BTCUSD", V, TS)
    assert len(bad) == 1 and "Trade.price" in bad[0][1]
    with pytest.raises(normalize.Malformed, match="out of bounds"):
        normalize.dec("1e30", "tick_size")
    book = {"market_id": 1, "timestamp": 1, "bids": [["1e30", "1"]], "asks": []}
    with pytest.raises(normalize.Malformed, match="bid"):
        normalize.order_book(msgspec.json.encode(book), "FS-BTCUSD", V, TS)


@pytest.mark.parametrize(("field", "value"), [("price", "-1.000000000000000000"),
                                              ("base_volume", "-0.500000000000000000"),
                                              ("price", "0.000000000000000000"), ("price", "1." + "0" * 40)])
def test_a_refused_trade_quotes_its_decimal_as_sent(field: str, value: str) -> None:
    """The hot path parses the 18-place texts without their trailing zeros (same value): a refusal
    still quotes the value as the vendor wrote it, and the same values are refused."""
    good = {"trade_id": 1, "timestamp": 1_700_000_000_000_000, "price": "100.500000000000000000",
            "base_volume": "1.000000000000000000", "side": 1}
    page = {"market_id": 1, "recent_trades": [{**good, "trade_id": 2, field: value}, good]}
    trades, bad, _ = normalize.recent_trades(msgspec.json.encode(page), "FS-BTCUSD", "DIGITEX", 1)
    assert [(t.trade_id, str(t.price), str(t.size)) for t in trades] == [("1", "100.5", "1")]
    assert len(bad) == 1 and repr(Decimal(value)) in bad[0][1], bad
