"""Fuzz every vendor normalizer (issue #12): hostile payloads raise only the normalizer's declared
error, and every event it does produce keeps the contract invariants (it survives the codec, which
validates on decoding, unchanged).

Two kinds of input per vendor: valid-shaped payloads whose fields take hostile values (prices -1,
0, -0, NaN, 1e30; dates 9999-12-31 and before 1970; oversized codes...), and raw garbage (random
bytes, random JSON). Bounded examples, no deadline: the whole module runs in a few seconds.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marketbus.contracts import codec, subjects
from marketbus.contracts.base import MarketEvent
from services.ingest_digitex import normalize as digitex
from services.ingest_finx import normalize as finx
from services.ingest_sitagri import normalize as sitagri
from services.ingest_ticksupply import normalize as ticksupply

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TS_RECV = 1_700_000_000_000_000_000


# --- hostile values --------------------------------------------------------------------------------
NUMBER_TEXT = st.one_of(
    st.sampled_from(["-1", "0", "-0", "0.0", "-0.0", "1e30", "1E+999999", "1e-999999", "0E-1000000", "1e-31",
                     "123456789012345678901234567890123456789012345", "0." + "0" * 40 + "1",
                     "999999999999999999", "1000000000000000000", "21865.01", "0.015", "37795.000000000000000000"]),
    st.from_regex(r"-?(0|[1-9][0-9]{0,21})(\.[0-9]{1,24})?([eE][-+]?[0-9]{1,3})?", fullmatch=True),
)
"""A JSON number's text: valid and hostile magnitudes, signs and exponents."""
DECIMAL_TEXT = st.one_of(NUMBER_TEXT, st.sampled_from(["NaN", "nan", "sNaN", "-NaN", "Infinity", "-Infinity", "inf",
                                                      "", " ", "1,5", "0x10", "१२३", "1_000", "abc"]))
"""A decimal in a JSON string: also NaN, Infinity and non-numbers."""
CODE = st.one_of(
    st.sampled_from(["BTC", "FS:BTCUSD", "BTC:USD", "EMAH16", "", "a.b", "a b", "*", ">", "x" * 300, "é" * 100,
                     "BTC:USD\n", "../../etc/passwd"]),
    st.text(max_size=40),
)
INT64_EDGE = st.one_of(st.sampled_from([0, -1, 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]),
                       st.integers(-(2**70), 2**70))


def raw_json(value: Any) -> bytes:
    return msgspec.json.encode(value)


def num(text: str) -> msgspec.Raw:
    """A JSON number written exactly as ``text``."""
    return msgspec.Raw(text.encode())


GARBAGE = st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                 lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=12).map(raw_json),
    st.sampled_from([b"", b"{", b"[]", b"{}", b"null", b'"\xff\xfe"', b"[" * 5000, b"\xff\xfe\x00"]),
)


# --- the contract invariants of an output ------------------------------------------------------------
def assert_valid(events: Iterable[Any]) -> None:
    """Each event survives the codec (the decoder validates every invariant) unchanged, and a
    market or reference event makes a five-token subject."""
    for event in events:
        assert codec.decode(codec.encode(event)) == event
        if isinstance(event, MarketEvent):
            assert len(subjects.for_event(event).split(".")) == 5


def refused_or_valid(call: Callable[[], Any], declared: tuple[type[BaseException], ...]) -> None:
    try:
        out = call()
    except declared:
        return
    assert_valid(_events_in(out))


def _events_in(out: Any) -> list[Any]:
    if out is None:
        return []
    if isinstance(out, tuple):  # (events, bad rows, ...)
        return [e for part in out if isinstance(part, list) for e in part if isinstance(e, msgspec.Struct)] + \
            [part for part in out if isinstance(part, MarketEvent)]
    if isinstance(out, list):
        return out
    return [out]


# --- FinX ------------------------------------------------------------------------------------------
FINX_DECLARED = (finx.Malformed, finx.VendorError)
finx_row = st.fixed_dictionaries(
    {
        "pair": st.one_of(st.just("BTC:USD"), CODE),
        "date": st.sampled_from(
            [
                "2022-06-15",
                "9999-12-31",
                "1969-12-31",
                "0001-01-01",
                "2262-04-12",
                "2262-04-10",
                "2022-13-01",
                "",
                "today",
            ]
        ),
        "time": st.one_of(
            st.sampled_from(
                [
                    "21:27:40.453Z",
                    "23:59:60.999Z",
                    "24:00:00.000Z",
                    "21:27",
                    "21:27:40.123456789Z",
                    "",
                    "99:99:99.999Z",
                    "21:27:40.45aZ",
                    "21:27:40.²³⁴Z",
                    "21:27:40.١٢٣Z",
                    "21:27:4²",
                ]
            ),
            st.from_regex(r"[0-9²١]{2}:[0-9²]{2}(:[0-9]{2}(\.[0-9²]{1,9})?)?Z?", fullmatch=True),
        ),
        "exchange": st.one_of(st.just("COINBASE"), CODE),
        "price": DECIMAL_TEXT,
    }
)


@FUZZ
@given(finx_row)
def test_finx_snap_with_hostile_fields(row: dict[str, Any]) -> None:
    refused_or_valid(lambda: finx.snap(raw_json(row), TS_RECV), FINX_DECLARED)


@FUZZ
@given(st.lists(finx_row, max_size=4))
def test_finx_history_with_hostile_rows(rows: list[dict[str, Any]]) -> None:
    frame = raw_json({str(i): row for i, row in enumerate(rows)})
    refused_or_valid(lambda: finx.history(frame, TS_RECV), FINX_DECLARED)


@FUZZ
@given(st.fixed_dictionaries({"ticker": CODE, "security-name": st.one_of(st.text(max_size=30), st.integers()),
                              "finx-sec-id": st.one_of(st.none(), CODE, st.integers())}),
       st.sampled_from(["2022-06-15T00:00:00Z", "9999-12-31T23:59:59Z", "1900-01-01", "garbage", None]))
def test_finx_reference_with_hostile_fields(ref: dict[str, Any], stamp: str | None) -> None:
    frame = raw_json({"function-call": "secdb", "request-datestamp": stamp, "ref-data": ref})
    refused_or_valid(lambda: finx.currency(finx.decode(frame), TS_RECV), FINX_DECLARED)


@FUZZ
@given(GARBAGE)
def test_finx_garbage(frame: bytes) -> None:
    refused_or_valid(lambda: finx.snap(frame, TS_RECV), FINX_DECLARED)
    refused_or_valid(lambda: finx.history(frame, TS_RECV), FINX_DECLARED)
    refused_or_valid(lambda: finx.currency(finx.decode(frame), TS_RECV), FINX_DECLARED)


# --- Digitex ---------------------------------------------------------------------------------------
DIGITEX = (digitex.Malformed,)
levels = st.lists(st.lists(DECIMAL_TEXT, min_size=0, max_size=3), max_size=4)
w_trade = st.fixed_dictionaries({"trade_id": INT64_EDGE, "timestamp": INT64_EDGE, "price": DECIMAL_TEXT,
                                 "base_volume": DECIMAL_TEXT, "side": st.integers(-1, 3)})
w_currency = st.fixed_dictionaries({"id": st.integers(0, 10**6), "code": CODE,
                                    "currency_scale": st.one_of(st.none(), INT64_EDGE)})
w_market = st.fixed_dictionaries({
    "id": st.integers(0, 10**6), "code": CODE, "market_type": st.integers(0, 3), "base_currency": w_currency,
    "quote_currency": w_currency, "tick_size": st.one_of(st.none(), DECIMAL_TEXT),
    "tick_price": st.one_of(st.none(), DECIMAL_TEXT), "lot_size": st.one_of(st.none(), DECIMAL_TEXT),
})
w_bar = st.fixed_dictionaries({"timestamp": INT64_EDGE, "open": DECIMAL_TEXT, "high": DECIMAL_TEXT,
                               "low": DECIMAL_TEXT, "close": DECIMAL_TEXT,
                               "volume": st.one_of(st.none(), DECIMAL_TEXT)})


@FUZZ
@given(st.fixed_dictionaries({"market_id": st.integers(0, 100), "timestamp": INT64_EDGE, "bids": levels,
                              "asks": levels}))
def test_digitex_order_book_with_hostile_levels(book: dict[str, Any]) -> None:
    refused_or_valid(lambda: digitex.order_book(raw_json(book), "FS-BTCUSD", "DIGITEX", TS_RECV), DIGITEX)


@FUZZ
@given(st.lists(w_trade, max_size=4), st.one_of(st.none(), st.integers(-1, 10)))
def test_digitex_trades_with_hostile_fields(trades: list[dict[str, Any]], after: int | None) -> None:
    page = raw_json({"market_id": 1, "recent_trades": trades})
    refused_or_valid(lambda: digitex.recent_trades(page, "FS-BTCUSD", "DIGITEX", TS_RECV, after), DIGITEX)


@FUZZ
@given(st.lists(w_bar, max_size=3), st.sampled_from(["1", "60", "D", "1W", "1M"]))
def test_digitex_bars_with_hostile_fields(bars: list[dict[str, Any]], resolution: str) -> None:
    page = raw_json({"ohlcv": bars, "market_id": 1})
    refused_or_valid(lambda: digitex.bars(page, 1, resolution, "FS-BTCUSD", "DIGITEX", TS_RECV), DIGITEX)


@FUZZ
@given(st.lists(w_market, max_size=2), st.lists(w_currency, max_size=2), st.one_of(st.none(), INT64_EDGE))
def test_digitex_reference_with_hostile_fields(markets: list[Any], currencies: list[Any], server_time: Any) -> None:
    refused_or_valid(lambda: digitex.markets(raw_json(markets), "DIGITEX", TS_RECV), DIGITEX)
    refused_or_valid(lambda: digitex.currencies(raw_json(currencies), TS_RECV), DIGITEX)
    info = raw_json({"currencies": currencies, "markets": markets, "server_time": server_time,
                     "rate_limits": [{"interval": "SECOND", "limit": 10}]})
    refused_or_valid(lambda: digitex.exchange_info(info, "DIGITEX", TS_RECV)[:3], DIGITEX)


@FUZZ
@given(GARBAGE)
def test_digitex_garbage(payload: bytes) -> None:
    refused_or_valid(lambda: digitex.order_book(payload, "FS-BTCUSD", "DIGITEX", TS_RECV), DIGITEX)
    refused_or_valid(lambda: digitex.recent_trades(payload, "FS-BTCUSD", "DIGITEX", TS_RECV), DIGITEX)
    refused_or_valid(lambda: digitex.bars(payload, 1, "1", "FS-BTCUSD", "DIGITEX", TS_RECV), DIGITEX)
    refused_or_valid(lambda: digitex.exchange_info(payload, "DIGITEX", TS_RECV)[:3], DIGITEX)
    refused_or_valid(lambda: digitex.markets(payload, "DIGITEX", TS_RECV), DIGITEX)


# --- Sitagri ---------------------------------------------------------------------------------------
SITAGRI = (sitagri.Malformed,)
quote_ref = st.one_of(st.just("/market/sources/EURONEX/future/EMA/deliveries/EMAH16"),
                      CODE.map(lambda c: f"/market/sources/{c}/future/EMA/deliveries/{c}"), CODE)
sitagri_number = st.one_of(NUMBER_TEXT.map(num), DECIMAL_TEXT)  # numbers, or decimals as strings
date_number = st.one_of(st.sampled_from(["1458323240", "1458323240.25", "253402300799", "-1", "1e30", "1e999999",
                                         "9223372037", "9223372036.854775807"]).map(num), NUMBER_TEXT.map(num),
                        st.just("NaN"))
point = st.fixed_dictionaries({}, optional={"date": date_number, "value": sitagri_number, "volume": sitagri_number,
                                            "orders": INT64_EDGE})
pushes = st.one_of(
    st.fixed_dictionaries({"code": st.just("marketPrice"), "quote": quote_ref},
                          optional={"last": point, "bid": point, "ask": point, "settlement": point, "high": point,
                                    "stats": st.fixed_dictionaries({}, optional={"perf": sitagri_number})}),
    st.fixed_dictionaries({"code": st.just("orderBook"), "quote": quote_ref,
                           "data": st.lists(st.fixed_dictionaries({}, optional={"bid": point, "ask": point}),
                                            max_size=4)}),
    st.fixed_dictionaries({"code": st.just("cashPrice"), "quote": quote_ref, "date": date_number,
                           "deliveries": st.lists(st.fixed_dictionaries(
                               {"start": date_number, "end": date_number, "value": sitagri_number}), max_size=3)}),
    st.fixed_dictionaries({"code": st.just("indexPrice"), "quote": quote_ref, "date": date_number,
                           "value": sitagri_number}, optional={"standardDeviation": sitagri_number}),
    st.fixed_dictionaries({"code": st.just("newsArticle"), "id": st.one_of(INT64_EDGE, CODE), "title": CODE,
                           "source": st.one_of(st.just("/news/sources/AFP"), CODE), "lang": CODE},
                          optional={"publicationDate": date_number, "words": INT64_EDGE}),
)


@FUZZ
@given(pushes)
def test_sitagri_pushes_with_hostile_fields(data: dict[str, Any]) -> None:
    raw = raw_json(data)

    def run() -> Any:
        obj = sitagri.decode_push(raw)
        return sitagri.push(obj, TS_RECV, raw if isinstance(obj, sitagri.VOrderBook) else None)

    refused_or_valid(run, SITAGRI)


@FUZZ
@given(st.sampled_from(["historyMarketPrice", "historyCashPrice", "historyIndexPrice", "prices"]),
       st.sampled_from(["TICK", "HOUR", "DAY", "15", "x" * 100, "9" * 5000]),
       st.lists(st.fixed_dictionaries({}, optional={"date": date_number, "first": point, "last": point,
                                                    "high": point, "low": point, "value": sitagri_number}),
                max_size=3))
def test_sitagri_history_with_hostile_entries(code: str, resolution: str, entries: list[Any]) -> None:
    raw = raw_json({"code": code, "quote": "/market/sources/EURONEX/future/EMA/deliveries/EMAH16",
                    "ranges": [{"resolution": resolution, "data": entries}]})

    def run() -> list[Any]:
        page = sitagri.decode_history(raw)
        out: list[Any] = []
        for rng in page.ranges:
            for entry in rng.data:
                try:
                    out.append(sitagri.history_event(page.code, page.quote, page.quality, entry,
                                                     str(rng.resolution), TS_RECV))
                except sitagri.Malformed:
                    pass  # one bad entry is refused on its own
        return out

    refused_or_valid(run, SITAGRI)


reference_item = st.dictionaries(
    st.sampled_from(["code", "convertionFactor", "convertionOffset", "gpsLong", "gpsLat", "lastTradingDate",
                     "maturityYear", "maturityMonth", "contractSize", "currency", "strikes", "terms", "deliveries",
                     "product", "name", "strike", "termDuration", "country"]),
    st.one_of(CODE, sitagri_number, INT64_EDGE, st.none(), st.lists(CODE, max_size=2),
              st.lists(st.fixed_dictionaries({"code": CODE}, optional={"strike": sitagri_number}), max_size=2)),
    max_size=8,
)
REFERENCE_MAKERS: list[Callable[[dict[str, Any]], Any]] = [
    lambda i: sitagri.unit(i, sitagri.Texts({}), TS_RECV),
    lambda i: sitagri.geo_site(i, sitagri.Texts({}), TS_RECV),
    lambda i: sitagri.incoterm(i, sitagri.Texts({}), TS_RECV),
    lambda i: sitagri.product_category(i, sitagri.Texts({}), TS_RECV),
    lambda i: sitagri.market_venue(i, sitagri.Texts({}), TS_RECV),
    lambda i: sitagri.delivery("/market/sources/EURONEX/future/EMA/deliveries/X", i, {"code": "EMA"},
                               sitagri.Texts({}), TS_RECV),
    lambda i: sitagri.option_series("/market/sources/EURONEX/option/OMA/series/X", i, {"code": "OMA"},
                                    sitagri.Texts({}), TS_RECV),
    lambda i: sitagri.currency_class("/market/sources/FX/currency/EURUSD", i, TS_RECV),
    lambda i: sitagri.simple_quote("/market/sources/SITCASHFR/cash/X", "cash", i, sitagri.Texts({}), TS_RECV),
]


@FUZZ
@given(st.sampled_from(range(len(REFERENCE_MAKERS))), reference_item)
def test_sitagri_reference_items_with_hostile_fields(which: int, item: dict[str, Any]) -> None:
    item = sitagri.generic_decoder.decode(raw_json(item))  # as the crawl decodes them: numbers exact
    refused_or_valid(lambda: REFERENCE_MAKERS[which](item), SITAGRI)


@FUZZ
@given(GARBAGE)
def test_sitagri_garbage(raw: bytes) -> None:
    refused_or_valid(lambda: sitagri.push(sitagri.decode_push(raw), TS_RECV, raw), SITAGRI)
    refused_or_valid(lambda: sitagri.decode_frame(raw) and None, SITAGRI)
    refused_or_valid(lambda: sitagri.split_updates(raw) and None, SITAGRI)
    refused_or_valid(lambda: sitagri.decode_history(raw) and None, SITAGRI)


# --- TickSupply ------------------------------------------------------------------------------------
TICKSUPPLY = (ticksupply.MalformedPayload,)
TRADE_DS = ticksupply.datastream_ref({"datastream_id": 7, "exchange": "coinbase", "instrument": "BTC-USD",
                                      "stream_type": "trade"})
DEPTH_DS = ticksupply.datastream_ref({"datastream_id": 8, "exchange": "coinbase", "instrument": "BTC-USD",
                                      "stream_type": "depth"})
ts_text = st.one_of(st.sampled_from(["1700000000000000000", "-1", "9223372036854775808", "99999999999999999999",
                                     "0", "1.5", ""]), INT64_EDGE.map(str))
field = st.text(alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=10)
trade_line = st.tuples(ts_text, ts_text, st.one_of(st.integers(0, 10**6).map(str), field, st.just("x" * 2000)),
                       DECIMAL_TEXT, DECIMAL_TEXT, st.sampled_from(["buy", "sell", "b", "", "weird"]))
depth_line = st.tuples(ts_text, ts_text, st.integers(0, 5).map(str), st.sampled_from(["bid", "ask", "b", "s"]),
                       DECIMAL_TEXT, DECIMAL_TEXT)


def artifact(columns: tuple[str, ...], lines: list[tuple[str, ...]], quote: bool) -> bytes:
    def cell(text: str) -> str:
        return '"' + text.replace('"', '""') + '"' if quote or "," in text or '"' in text else text

    body = "\n".join(",".join(cell(x) for x in line) for line in lines)
    return gzip.compress(f"{','.join(columns)}\n{body}\n".encode())


@FUZZ
@given(st.lists(trade_line, max_size=6), st.booleans())
def test_ticksupply_trades_with_hostile_fields(lines: list[tuple[str, ...]], quote: bool) -> None:
    def run() -> list[Any]:
        parsed = ticksupply.parse_artifact(artifact(ticksupply.TRADE_COLUMNS, lines, quote), "trade")
        assert len(parsed.rows) + len(parsed.bad) == parsed.total_lines
        return ticksupply.events_of(TRADE_DS, parsed.rows, TS_RECV)

    refused_or_valid(run, TICKSUPPLY)


@FUZZ
@given(st.lists(depth_line, max_size=6), st.booleans())
def test_ticksupply_depth_with_hostile_fields(lines: list[tuple[str, ...]], quote: bool) -> None:
    def run() -> list[Any]:
        parsed = ticksupply.parse_artifact(artifact(ticksupply.BOOK_COLUMNS, lines, quote), "depth")
        return ticksupply.events_of(DEPTH_DS, parsed.rows, TS_RECV)

    refused_or_valid(run, TICKSUPPLY)


@FUZZ
@given(st.fixed_dictionaries({"datastream_id": INT64_EDGE, "exchange": CODE, "instrument": CODE,
                              "stream_type": st.one_of(st.sampled_from(["trade", "depth"]), CODE),
                              "wire_format": CODE}),
       st.fixed_dictionaries({"code": CODE}, optional={"display_name": CODE}),
       st.fixed_dictionaries({"symbol": CODE}, optional={"base": CODE, "quote": CODE, "instrument_type": CODE}))
def test_ticksupply_catalog_with_hostile_fields(ds: dict[str, Any], exchange: dict[str, Any],
                                                instrument: dict[str, Any]) -> None:
    def datastream() -> Any:
        ref = ticksupply.datastream_ref(ds)
        return [ticksupply.datastream_event(ref, TS_RECV), *ticksupply.trades(ref, [], TS_RECV)]

    refused_or_valid(datastream, TICKSUPPLY)
    refused_or_valid(lambda: ticksupply.venue_event(exchange, TS_RECV), TICKSUPPLY)
    refused_or_valid(lambda: ticksupply.instrument_event(exchange.get("code", ""), instrument, [TRADE_DS], TS_RECV),
                     TICKSUPPLY)


@FUZZ
@given(GARBAGE, st.sampled_from(["trade", "depth"]))
def test_ticksupply_garbage(data: bytes, stream_type: str) -> None:
    def run(payload: bytes) -> list[Any]:
        parsed = ticksupply.parse_artifact(payload, stream_type)
        return ticksupply.events_of(TRADE_DS if stream_type == "trade" else DEPTH_DS, parsed.rows, TS_RECV)

    refused_or_valid(lambda: run(data), TICKSUPPLY)  # not gzip
    refused_or_valid(lambda: run(gzip.compress(data)), TICKSUPPLY)  # gzip, not CSV
    header = ",".join(ticksupply.TRADE_COLUMNS if stream_type == "trade" else ticksupply.BOOK_COLUMNS).encode()
    refused_or_valid(lambda: run(gzip.compress(header + b"\n" + data)), TICKSUPPLY)  # a header, then garbage


# --- the same shapes with good values make events (the fuzzing above is not vacuous) ----------------
def test_good_values_in_the_fuzzed_shapes_make_valid_events() -> None:
    row = {
        "pair": "BTC:USD",
        "date": "2022-06-15",
        "time": "21:27:40.453Z",
        "exchange": "COINBASE",
        "price": "21865.01",
    }
    made: list[Any] = [finx.snap(raw_json(row), TS_RECV)]
    book = {"market_id": 1, "timestamp": 1_700_000_000_000_000, "bids": [["100.5", "2"]], "asks": [["101", "0"]]}
    made.append(digitex.order_book(raw_json(book), "FS-BTCUSD", "DIGITEX", TS_RECV))
    trade = {"trade_id": 5, "timestamp": 1_700_000_000_000_000, "price": "100.5", "base_volume": "1", "side": 1}
    made += digitex.recent_trades(raw_json({"market_id": 1, "recent_trades": [trade]}), "FS-BTCUSD", "DIGITEX",
                                  TS_RECV)[0]
    push = {"code": "orderBook", "quote": "/market/sources/EURONEX/future/EMA/deliveries/EMAH16",
            "data": [{"bid": {"value": num("153.25"), "volume": num("3")}, "ask": {"value": num("153.5")}}]}
    made.append(sitagri.push(sitagri.decode_push(raw_json(push)), TS_RECV, raw_json(push)))
    basis = {"code": "cashPrice", "quote": "/market/sources/SITCASHFR/cash/FRA18EXWAUB", "date": num("1458323240"),
             "deliveries": [{"start": num("1456790400"), "end": num("1459468799"), "value": num("-12.5")}]}
    made.append(sitagri.push(sitagri.decode_push(raw_json(basis)), TS_RECV))  # a basis may be negative
    lines = [("1700000000000000000", "1700000000000000001", "9", "100.5", "0.25", "buy")]
    parsed = ticksupply.parse_artifact(artifact(ticksupply.TRADE_COLUMNS, lines, False), "trade")
    made += ticksupply.events_of(TRADE_DS, parsed.rows, TS_RECV)
    assert len(made) == 6 and all(made)
    assert_valid(made)
