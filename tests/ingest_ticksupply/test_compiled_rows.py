"""The compiled trade path (``_checks.csv_trade_rows`` + ``trades_of_rows``) against the Python one.

Whatever the CSV, an artifact gives the same rows (by value), the same bad rows with the same
reasons, and the same events (bytes) or the same refusal, compiled or not: the compiled path only
reads the plain form of a slice in which every row is good, and leaves anything else to Python."""

from __future__ import annotations

import gzip
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from marketbus.contracts import _checks, codec
from marketbus.contracts.invariants import InvariantError
from marketbus.contracts.market import Trade
from services.ingest_ticksupply import normalize

pytestmark = pytest.mark.skipif(normalize._csv_trade_rows is None, reason="the compiled checks are not built")

DS = normalize.DatastreamRef(datastream_id=7, exchange="binance", instrument="BTCUSDT", stream_type="trade")
HEADER = ",".join(normalize.TRADE_COLUMNS)

TIMES = ["0", "1", "007", "00", "1700000000000000000", "9223372036854775807", "9223372036854775808", "-1", "",
         "1.5", " 1", "+1", "99999999999999999999", "1e3", "１"]
IDS = ["", "7", "abc-1", "A:b/c_9", "x" * 1024, "x" * 1025, "a b", "é", 't"1', "id\\", "\t1", "0", "007"]
DECIMALS = ["0", "-0", "1", "100.50", "100.", ".5", "0.000", "00.5", "1e30", "1E-5", "NaN", "Infinity", "-1", "+1",
            "1" + "0" * 17, "1" + "0" * 18, "0." + "0" * 29 + "1", "0." + "0" * 30 + "1", "1." + "0" * 37,
            "1." + "0" * 38, "1" * 38, "1" * 39, "12345678901234567890.123", " 1", "1.2.3", "", "-", ".", "0.10"]
SIDES = ["buy", "sell", "b", "s", "BUY", "Sell", "", "x y", "buy ", "unknown", "bid"]

decimal_text = st.one_of(st.sampled_from(DECIMALS), st.decimals(allow_nan=False, allow_infinity=False).map(str),
                         st.from_regex(r"[0-9]{1,20}(\.[0-9]{1,20})?", fullmatch=True))
time_text = st.one_of(st.sampled_from(TIMES), st.integers(0, 2**63 - 1).map(str))
id_text = st.one_of(st.sampled_from(IDS), st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=12))
row = st.tuples(time_text, time_text, id_text, decimal_text, decimal_text, st.sampled_from(SIDES))
line = st.one_of(row.map(",".join), st.sampled_from(["", "1,2,3", "1,2,3,4,5,6,7", "1,2,t,1,1,buy\r"]))


def outcome(data: bytes, slice_bytes: int | None) -> tuple[Any, ...]:
    pieces = list(normalize.iter_artifact(data, "trade", slice_bytes))
    rows = [r for p in pieces for r in p.rows]
    try:
        events: Any = [codec.encode(e) for p in pieces for e in normalize.events_of(DS, p.rows, 5, replay=True)]
    except normalize.ArtifactError as exc:
        events = ("refused", str(exc))
    return ([(r.exchange_ts_ns, r.collection_ts_ns, r.trade_id, r.price, r.quantity, r.side) for r in rows],
            [tuple(b) for p in pieces for b in p.bad], sum(p.total_lines for p in pieces), events)


def python_outcome(data: bytes, slice_bytes: int | None) -> tuple[Any, ...]:
    was = _checks.set_enabled(False)  # every compiled check and path steps aside
    try:
        return outcome(data, slice_bytes)
    finally:
        _checks.set_enabled(was)


def artifact(lines: list[str]) -> bytes:
    return gzip.compress((HEADER + "\n" + "\n".join(lines) + "\n").encode())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(row.map(",".join), line), min_size=1, max_size=6), st.sampled_from([None, 40]))
def test_the_compiled_path_gives_what_the_python_path_gives(lines: list[str], slice_bytes: int | None) -> None:
    data = artifact(lines)
    assert outcome(data, slice_bytes) == python_outcome(data, slice_bytes)


@pytest.mark.parametrize("value", DECIMALS)
@pytest.mark.parametrize("field", [3, 4])
def test_each_edge_decimal_alone(value: str, field: int) -> None:
    fields = ["1700000000000000000", "1700000000000000001", "t1", "100.5", "0.25", "sell"]
    fields[field] = value
    data = artifact([",".join(fields), "1,2,t2,3.10,4.000,buy"])
    assert outcome(data, None) == python_outcome(data, None)


def test_a_plain_slice_is_read_in_c_with_canonical_decimals() -> None:
    body = b"1,2,t1,100.50,0.000,buy\n3,4,t2,7,1.25,sell"
    rows = normalize._csv_trade_rows(body, normalize._new_trade_row, "buy", "sell", 1024)
    assert [(r.exchange_ts_ns, r.trade_id, str(r.price), str(r.quantity), r.side) for r in rows] == [
        (1, "t1", "100.5", "0", "buy"), (3, "t2", "7", "1.25", "sell")]
    # anything else is left to Python: a bad value, a row without an id, a blank line, a quote
    for other in (b"1,2,t1,-1,1,buy", b"1,2,,1,1,buy", b"1,2,t1,1,1,buy\n\n3,4,t2,1,1,buy", b'1,2,"t1",1,1,buy',
                  b"01,2,t1,1,1,buy", b"1,2,t1,1,1,buy,x", b"1,2,t1,1e3,1,buy"):
        assert normalize._csv_trade_rows(other, normalize._new_trade_row, "buy", "sell", 1024) is None, other


def test_compiled_trades_are_checked_as_trade_checks_them() -> None:
    """A row that would break the contract (here built by hand, past the row checks) raises the
    InvariantError ``Trade(...)`` raises, and events_of makes it an ArtifactError."""
    bad = normalize.TradeRow(1, 2, "t1", Decimal(1), Decimal(1), "buy")
    msgspec.structs.force_setattr(bad, "price", Decimal(-1))
    with pytest.raises(InvariantError, match="Trade.price"):
        normalize.trades(DS, [bad], 5)
    with pytest.raises(normalize.ArtifactError, match="Trade.price"):
        normalize.events_of(DS, [bad], 5)
    good = normalize.parse_artifact(artifact(["1,2,t1,2.50,1.0,b"])).rows
    (trade,) = normalize.trades(DS, good, 5, replay=True)
    assert trade == Trade(id=trade.id, source="ticksupply", venue="binance", symbol="BTCUSDT", ts_event=1, ts_recv=5,
                          replay=True, price=Decimal("2.5"), size=Decimal(1), side="buy", trade_id="t1")


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.from_regex(r"[0-9]{1,38}", fullmatch=True),
                 st.from_regex(r"[0-9]{1,20}\.[0-9]{1,18}", fullmatch=True),
                 st.from_regex(r"0\.0{0,30}[1-9][0-9]{0,6}0{0,5}", fullmatch=True),
                 st.sampled_from(["9" * 38, "9" * 19 + "." + "9" * 19, "1" + "0" * 18, "1" + "0" * 19, "0.1",
                                  "0.000"])))
@example("0.00000000000000000000000000100000000000")  # in bounds, 39 digits of text: left to Python
def test_decimals_read_in_c_are_the_decimals_decimal_makes(text: str) -> None:
    """Each decimal of a row is what ``decimal_of_text`` (``Decimal`` of the text without its
    fraction's trailing zeros) makes: same digits, exponent, text, hash and arithmetic."""
    expected = _checks.decimal_of_text(text)
    rows = normalize._csv_trade_rows(f"1,2,t,1,{text},buy".encode(), normalize._new_trade_row, "buy", "sell", 1024)
    if rows is None:  # out of the contract bounds, or more digits of text than it reads (38): Python reads it
        in_bounds = expected < Decimal("1e18") and (expected == 0 or expected >= Decimal("1e-30"))
        assert not in_bounds or sum(c.isdigit() for c in text) > 38
        return
    got = rows[0].quantity
    assert got.as_tuple() == expected.as_tuple() and str(got) == str(expected) and hash(got) == hash(expected)
    assert got * 3 + 1 == expected * 3 + 1 and got.adjusted() == expected.adjusted()
