"""The compiled live-tick reader (``_checks.market_price_push``, behind ``normalize.live_push``)
against the Python path (``push(decode_push(raw))``): the same events, the same published bytes,
the same refusals, on generated pushes (plain and odd numbers and dates, other keys, whitespace,
key orders, broken JSON) and on the recorded ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketbus.contracts import _checks, codec
from marketbus.runtime.publisher import EventWire
from services.ingest_sitagri import normalize as n

TS = 1_764_600_000_123_456_789
QUOTES = ["/market/sources/EURONEX/future/EMA/deliveries/EMAH16", "/market/sources/BINANCE/spot/ETH/deliveries/ETHUSDT"]
P = Path(__file__).parent / "payloads"


def python_path(raw: bytes) -> tuple[Any, ...]:
    try:
        obj = n.decode_push(raw)
        book = type(obj) is n.VOrderBook
        event = n.push(obj, TS, raw if book else None)
    except n.Malformed as exc:
        return ("refused", str(exc))
    return ("event", getattr(obj, "quote", None), book, event)


def live_path(raw: bytes) -> tuple[Any, ...]:
    try:
        quote, book, event = n.live_push(raw, TS)
    except n.Malformed as exc:
        return ("refused", str(exc))
    return ("event", quote, book, event)


def compiled(raw: bytes) -> Any:
    return _checks.market_price_push(raw, TS, n._LIVE_QUOTES, n._CHECK_MARKET_PRICE, n._LIVE_QUALITIES)


def same(raw: bytes) -> tuple[Any, ...]:
    """Both paths give the same outcome (event, quote and published bytes, or refusal message)."""
    want, got = python_path(raw), live_path(raw)
    assert got == want, raw
    if want[0] == "event":
        assert type(got[3]) is type(want[3])
        assert codec.encode(got[3]) == codec.encode(want[3])
        assert EventWire().message(got[3]) == EventWire().message(want[3])
    return want


@pytest.fixture(autouse=True)
def _learned() -> None:
    assert n._market_price_push is not None, "the C extension lacks the Sitagri block: rerun make venv"
    for quote in QUOTES:  # the Python path learns a quote the first time it reads one
        n.live_push(push_text(quote=quote).encode(), TS)
        assert quote in n._LIVE_QUOTES


def push_text(quote: str = QUOTES[0], date: str = "1458323240", quality: str = '"REALTIME"',
              last: str = '"value":152.25,"volume":3,"totalVolume":546,"orders":78',
              ask: str = '"value":154.5,"volume":5', bid: str = '"value":151.25,"volume":5',
              side_date: str | None = None, extra: str = "") -> str:
    sd = date if side_date is None else side_date
    return ('{"code":"marketPrice","quote":%s,"quality":%s,"last":{"date":%s,%s},"ask":{"date":%s,%s},'
            '"bid":{"date":%s,%s}%s}' % (json.dumps(quote), quality, date, last, sd, ask, sd, bid, extra))


def test_the_usual_shape_is_made_by_the_compiled_reader() -> None:
    raw = push_text().encode()
    made = compiled(raw)
    assert made is not None and made[0] == QUOTES[0]
    want = python_path(raw)
    assert want[0] == "event" and made[1] is False and made[2] == want[3]
    assert made[2].last == "152.25" and made[2].orders == 78 and made[2].quality == "realtime"
    same(raw)


@pytest.mark.parametrize("raw", [
    push_text(extra=',"stats":{"perf":1}'),  # another point: the Python path
    push_text(last='"value":152.25,"globalVolume":3'),
    push_text(ask='"value":154.5,"volume":5,"globalVolume":7'),
    push_text(extra=',"unknownKey":1'),
    push_text(extra=',"quality":"DELAYED"'),  # a duplicate key
    push_text(date="1.458323240e9"),
    push_text(date='"1458323240"'),
    push_text(date="null"),
    push_text(date="-1"),
    push_text(date="99999999999"),
    push_text(date="1458323240.1234567891"),
    push_text(side_date="1e9"),
    push_text(side_date='"x"'),
    push_text(quote="/market/sources/EURO\\u004eEX/future/EMA/deliveries/EMAH16"),
    push_text(quote="/market/sources/UNSEEN/spot/X/deliveries/XY"),
    push_text(quote="not a quote"),
    push_text(last='"value":1.5E+2,"volume":3'),
    push_text(last='"value":"152.25","volume":3'),
    push_text(last='"value":01,"volume":3'),  # not JSON
    push_text(last='"value":1.,"volume":3'),
    push_text(last='"value":NaN,"volume":3'),
    push_text(last='"value":152.25,"volume":-3'),  # a size below 0
    push_text(last='"value":152.25,"volume":-0.0'),
    push_text(last='"value":152.25,"orders":-1'),
    push_text(last='"value":152.25,"orders":1.5'),
    push_text(last='"value":' + "1" * 40),
    push_text(last='"value":0.' + "0" * 35 + "1"),
    push_text() + "x",
    push_text()[:-1],
    push_text().replace('"code":"marketPrice"', '"code":"marketprice"'),
    push_text().replace('"code":"marketPrice",', ""),
    push_text().replace(',"ask":{"date":1458323240,"value":154.5,"volume":5}', ""),
    push_text().replace('"last":{', '"last":null,"x":{'),
])
def test_what_the_compiled_reader_declines_is_read_by_the_python_path(raw: str) -> None:
    data = raw.encode()
    assert compiled(data) is None
    same(data)


def test_odd_but_plain_pushes_are_read_alike() -> None:
    for raw in [push_text(quality='"DELAYED"'), push_text(quality='"delayed"'), push_text(quality='""'),
                push_text().replace('"quality":"REALTIME",', ""),
                push_text(last='"value":null,"volume":null,"totalVolume":null,"orders":null'),
                push_text(last='"value":-0,"volume":0.000,"orders":0'),
                push_text(last='"value":-0.0'), push_text(last='"value":0.00000001234,"volume":12.5000'),
                push_text(ask='"value":1', bid='"volume":2'), push_text(side_date="null"),
                push_text(side_date="1458323241.5"), push_text(date="1458323240.000000001"),
                " \n" + push_text().replace(":", " : ").replace(",", " ,\t") + "\r\n"]:
        assert compiled(raw.encode()) is not None or python_path(raw.encode())[0] == "refused", raw
        same(raw.encode())


def test_recorded_pushes_are_read_alike() -> None:
    raws = msgspec.json.decode((P / "batch_prices_ema.json").read_bytes(), type=list[msgspec.Raw])
    for raw in raws:
        same(bytes(raw))


_plain_numbers = st.from_regex(r"(0|[1-9][0-9]{0,12})(\.[0-9]{1,12})?", fullmatch=True)
_odd_numbers = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=None).map(str),
    st.integers(-10**20, 10**20).map(str),
    st.from_regex(r"-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,40})?", fullmatch=True),
    st.sampled_from(["null", "-0", "-0.0", "0.0", "1e5", "1E-7", '"12.5"', "true", "1.", "00", "[]", "1" * 39,
                     "0.0000000001", "123456789012345678", "-5"]),
)
_numbers = st.one_of(_plain_numbers, _plain_numbers, _plain_numbers, _plain_numbers, _odd_numbers)
_plain_dates = st.from_regex(r"1[0-9]{9}(\.[0-9]{1,9})?", fullmatch=True)
_dates = st.one_of(
    _plain_dates, _plain_dates, _plain_dates,
    st.from_regex(r"[0-9]{1,11}(\.[0-9]{1,11})?", fullmatch=True),
    st.integers(0, 10**10).map(str),
    st.sampled_from(["null", "-1", "1e9", '"1458323240"', "9223372036", "9223372035.999999999", "0", "0.0"]),
)


def _point(fields: dict[str, str], keys: list[str]) -> str:
    return "{" + ",".join(f'"{k}":{fields[k]}' for k in keys if k in fields) + "}"


@st.composite
def pushes(draw: st.DrawFn) -> str:
    last = {k: draw(_numbers) for k in draw(st.sets(st.sampled_from(["value", "volume", "totalVolume"])))}
    if draw(st.booleans()):
        counts = st.integers(0, 10**6).map(str)
        last["orders"] = draw(st.one_of(counts, counts, st.integers(-5, 10**19).map(str), _numbers))
    if draw(st.integers(0, 9)) != 5:
        last["date"] = draw(_dates)
    sides = []
    for _ in range(2):
        side = {k: draw(_numbers) for k in draw(st.sets(st.sampled_from(["value", "volume"])))}
        choice = draw(st.integers(0, 4))
        if choice <= 2 and "date" in last:
            side["date"] = last["date"]
        elif choice == 3:
            side["date"] = draw(_dates)
        if draw(st.integers(0, 12)) == 5:
            side[draw(st.sampled_from(["globalVolume", "orders", "totalVolume"]))] = draw(_numbers)
        sides.append(side)
    members = {
        "code": '"marketPrice"',
        "quote": json.dumps(draw(st.sampled_from([*QUOTES, *QUOTES, "/market/sources/NEW/x/deliveries/Y", "bad"]))),
        "quality": draw(st.sampled_from(['"REALTIME"', '"REALTIME"', '"DELAYED"', '"OTHER"', '""', "null"])),
        "last": _point(last, draw(st.permutations(list(last)))),
        "ask": _point(sides[0], list(sides[0])),
        "bid": _point(sides[1], list(sides[1])),
    }
    if draw(st.integers(0, 10)) == 5:
        members[draw(st.sampled_from(["stats", "first", "high", "settlement", "extra"]))] = '{"value":1}'
    order = draw(st.permutations(list(members)))
    if draw(st.integers(0, 8)) == 5:
        del order[draw(st.integers(0, len(order) - 1))]
    sep = draw(st.sampled_from([",", ", ", " ,\n"]))
    text = "{" + sep.join(f'"{k}":{members[k]}' for k in order) + "}"
    if draw(st.integers(0, 15)) == 5:  # broken: cut or extended
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] if draw(st.booleans()) else text + draw(st.sampled_from(["x", "}", " "]))
    return text


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pushes())
def test_generated_pushes_are_read_alike(raw: str) -> None:
    same(raw.encode())


def test_the_generator_reaches_both_paths() -> None:
    """The property above is not vacuous: many generated pushes are made by the compiled reader,
    many are declined, and some are refused."""
    seen = {"compiled": 0, "declined": 0, "refused": 0}

    @settings(max_examples=300, deadline=None, database=None)
    @given(pushes())
    def count(raw: str) -> None:
        data = raw.encode()
        if compiled(data) is not None:
            seen["compiled"] += 1
        else:
            seen["declined"] += 1
        if python_path(data)[0] == "refused":
            seen["refused"] += 1

    count()
    assert min(seen.values()) >= 20, seen
