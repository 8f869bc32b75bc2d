"""Decimals carried as text (``invariants.AmountText``, ``SizeText``, ``PriceText``; issue #16):
MarketPrice's decimals are ``str`` in Python, the same JSON on the wire, the same invariants."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketbus.cli.output import plain_builtins
from marketbus.cli.tail import summarize
from marketbus.contracts import codec, invariants
from marketbus.contracts.invariants import (
    AmountText,
    InvariantError,
    decimal_text,
    decimal_text_fits,
    decimal_text_of_json,
    decimal_value,
)
from marketbus.contracts.market import MarketPrice
from marketbus.history.schema import SCHEMAS

CHECKS = invariants._checks
BASE: dict[str, Any] = {"id": "mp-1", "source": "sitagri", "venue": "EURONEX", "symbol": "EMAC01", "ts_event": 1,
                        "ts_recv": 2}
SIGNS = ("positive", "non_negative", "signed")

# JSON numbers around every bound: digits (38), |x| < 1e18, 1e-30, the plain/scientific switch at 1e-6,
# trailing zeros, -0, zeros with many places; strings, exponents and non-numbers
_digits = st.text("0123456789", min_size=1, max_size=42)
_fraction = st.one_of(st.just(""), _digits, st.text("0", max_size=40).map(lambda zeros: zeros + "1"))
_plain_number = st.builds(
    lambda neg, whole, frac: ("-" if neg else "") + (whole.lstrip("0") or "0") + (f".{frac}" if frac else ""),
    st.booleans(), st.text("0123456789", min_size=1, max_size=20), _fraction)
json_numbers = st.one_of(
    _plain_number,
    st.sampled_from(["0", "-0", "-0.0", "0.000", "1e2", "1.5E+2", "1E-7", "-1e-31", "1e30", "100.50", "null", "true",
                     "[]", "{}", '"1.5"', '"-0"', '"NaN"', '"Infinity"', '"x"', '" 1"', "01", "1.", ".5", "-", "",
                     "0." + "0" * 29 + "1", "0." + "0" * 30 + "1", "9" * 18, "1" + "0" * 18, "1." + "0" * 40]),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_numbers)
def test_the_compiled_text_of_a_json_number_is_the_python_steps_one(text: str) -> None:
    """decimal_text_of_json in C gives what the Python steps give (a Decimal | None decoder, then
    the canonical text, -0 kept) or raises what they raise, for every JSON number and non-number."""
    def run(fn: Any) -> Any:
        try:
            return "ok", fn(text.encode())
        except Exception as exc:  # the kind of refusal must be the same
            return "error", type(exc).__name__
    assert run(decimal_text_of_json) == run(invariants._decimal_text_of_json)


@settings(max_examples=1500, deadline=None)
@given(st.one_of(json_numbers, st.decimals(allow_nan=True).map(str), st.text(max_size=8)), st.sampled_from(SIGNS))
def test_the_compiled_accept_test_accepts_only_canonical_texts_python_accepts(text: str, sign: str) -> None:
    assert CHECKS is not None, "make venv builds the compiled checks"
    if CHECKS.decimal_text_fits(text, invariants.SIGNS[sign]):
        assert decimal_text_fits(text, sign) and decimal_text(text) == text


@pytest.mark.parametrize("value", ["0", "-3.25", "152.25", "1E-7", "1.5E-20", "0.000001", "-" + "9" * 18,
                                   "123456789012345678.12345678901234567", "100"])
def test_a_decimal_field_carries_text_encodes_as_a_decimal_does_and_gives_its_value(value: str) -> None:
    event = MarketPrice(**BASE, last=value, ask_size=value.lstrip("-"))
    assert event.last == value and event.decimal("last") == Decimal(value) == decimal_value(value)
    assert event.decimals() == {"last": Decimal(value), "ask_size": Decimal(value.lstrip("-"))}
    wire = codec.encode(event)
    assert f'"last":"{value}"'.encode() in wire
    # the very bytes a Decimal field of the same value gives (the codec writes str() of it)
    assert codec.encode_value(Decimal(value)) == f'"{value}"'.encode()
    assert codec.decode(wire) == event


@pytest.mark.parametrize(("given", "carried"), [("100.50", "100.5"), ("1.5E+2", "150"), ("-0.00", "0"), ("1e2", "100"),
                                                 ("0.0000001", "1E-7"), ("1.0E-7", "1E-7"), ("٣", "3")])
def test_a_non_canonical_text_is_carried_canonical_built_or_decoded(given: str, carried: str) -> None:
    assert MarketPrice(**BASE, last=given).last == carried
    wire = codec.encode(MarketPrice(**BASE)).replace(b'"last":null', b'"last":' + msgspec.json.encode(given))
    assert codec.decode(wire).last == carried


@pytest.mark.parametrize("compiled", [True, False])
def test_python_code_may_still_build_the_event_from_decimals(compiled: bool) -> None:
    """A producer written for Decimal fields keeps working: the event carries the canonical text."""
    was = CHECKS.set_enabled(compiled) if CHECKS is not None else None
    try:
        price = MarketPrice(**BASE, last=Decimal("-0.50"), bid_size=Decimal("1.5E+2"), high=Decimal("-0.00"))
    finally:
        if CHECKS is not None and was is not None:
            CHECKS.set_enabled(was)
    assert (price.last, price.bid_size, price.high) == ("-0.5", "150", "0")
    assert price.decimal("last") == Decimal("-0.5")
    assert codec.decode(codec.encode(price)) == price
    with pytest.raises(InvariantError, match="MarketPrice.bid_size: must be a decimal"):
        MarketPrice(**BASE, bid_size=Decimal("-1"))


@pytest.mark.parametrize(("field", "value"), [("last", "NaN"), ("last", "1E+18"), ("last", "1E-31"), ("last", "abc"),
                                              ("last", ""), ("last", Decimal("NaN")), ("last", 1), ("bid_size", "-1"),
                                              ("bid_size", "-0"), ("open_interest", "-0.0"), ("last", "1" * 39)])
def test_the_decimal_invariants_hold_for_text(field: str, value: Any) -> None:
    with pytest.raises(InvariantError, match=f"MarketPrice.{field}: must be a decimal"):
        MarketPrice(**BASE, **{field: value})
    if not isinstance(value, str):  # what a decoder cannot be given: a JSON string is a str
        return
    wire = codec.encode(MarketPrice(**BASE)).replace(f'"{field}":null'.encode(),
                                                     f'"{field}":'.encode() + msgspec.json.encode(str(value)))
    with pytest.raises(msgspec.ValidationError, match=f"MarketPrice.{field}"):
        codec.decode(wire)


def test_consumers_see_the_same_schema_and_storage_as_for_decimals() -> None:
    amount = msgspec.json.schema(AmountText)
    assert amount == msgspec.json.schema(invariants.Amount)  # key for key: other languages see no change
    market = SCHEMAS["market_price"]
    assert {name: kind for name, kind, _ in market.fields if name in invariants.decimal_text_fields(MarketPrice)} == \
        dict.fromkeys(invariants.decimal_text_fields(MarketPrice), "decimal")  # numeric / decimal(38, 18) columns
    assert len(invariants.decimal_text_fields(MarketPrice)) == 17


def test_the_cli_shows_decimal_texts_plain_as_it_shows_decimals() -> None:
    event = MarketPrice(**BASE, last="-3.25", ask_size="1.2E-7")
    assert "ask_size=0.00000012" in summarize(event) and "last=-3.25" in summarize(event)
    assert plain_builtins(event)["ask_size"] == "0.00000012"
    with pytest.raises(KeyError):
        event.decimal("last_ts")


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.builds(lambda w, f: w + (f".{f}" if f is not None else ""), st.text("0123456789", min_size=1, max_size=12),
              st.one_of(st.none(), st.text("0123456789", max_size=11))),
    st.sampled_from(["9223372035.999999999", "9223372036", "9223372036.0", "0", "0.5", "1e9", "-1", '"1"', "", ".5",
                     "1700000000.", "null"])))
def test_plain_unix_seconds_in_ns_compiled_and_python_alike_and_exact(text: str) -> None:
    raw = text.encode()
    assert CHECKS is not None
    got = CHECKS.seconds_ns(raw)
    assert got == invariants._seconds_ns(raw)
    if got is not None:  # the exact value of the decimal, in the contracts' int64 ns
        assert got == int(Decimal(text) * 10**9) and 0 <= got <= invariants.MAX_TS_NS
