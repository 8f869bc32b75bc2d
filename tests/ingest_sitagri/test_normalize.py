"""Pure normalization of recorded payloads (the seed document's examples) and paging logic."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from marketbus.contracts import codec
from marketbus.contracts.market import BookSnapshot, CashPrice, IndexPrice, MarketPrice, News
from marketbus.contracts.reference import Instrument, InstrumentClass
from marketbus.contracts.units import convert
from services.ingest_sitagri import history as hist
from services.ingest_sitagri import normalize as n

P = Path(__file__).parent / "payloads"
NS = 1_000_000_000


def load(name: str) -> bytes:
    return (P / name).read_bytes()


def test_market_prices_of_the_seed_batch_reply() -> None:
    raws = msgspec.json.decode(load("batch_prices_ema.json"), type=list[msgspec.Raw])
    events = [n.push(n.decode_push(r), 1) for r in raws]
    assert [e.symbol for e in events] == ["EMAC01", "EMAC02", "EMAC03", "EMAC04"]
    c01 = events[0]
    assert isinstance(c01, MarketPrice) and c01.venue == "EURONEX" and c01.quality == "realtime"
    # decimals are carried as their canonical text; their exact value on request
    assert (c01.last, c01.total_volume, c01.orders, c01.last_ts) == ("152.25", "546", 78, 1458323240 * NS)
    assert (c01.decimal("last"), c01.decimal("total_volume")) == (Decimal("152.25"), Decimal(546))
    assert (c01.settlement, c01.open_interest, c01.rel_perf) == ("155", "14018", "-0.8143")
    assert (c01.bid, c01.bid_size, c01.ask, c01.ask_size) == ("151.25", "5", "154.5", "5")
    assert c01.last_volume is None  # omitted by the vendor, not invented
    assert events[3].bid is None and events[3].ask == "185"  # EMAC04 has an ask but no bid
    assert c01.id == n.price_id("market_price", "/market/sources/EURONEX/future/EMA/deliveries/EMAC01", 1458323240 * NS)
    assert len({e.id for e in events}) == 4


def test_cash_index_book_news_pushes() -> None:
    frames = [n.decode_frame(json.dumps(f)) for f in json.loads(load("push_frames.json"))]
    assert [f.seq for f in frames] == [-1, -1, -1, -1, 42]
    cash, index, book, news = (n.push(n.decode_push(f.data), 7, bytes(f.data)) for f in frames[:4])
    assert (
        isinstance(cash, CashPrice) and cash.deliveries[1].value == Decimal("208.5") and cash.deliveries[1].prime == 3
    )
    assert (
        isinstance(index, IndexPrice) and index.ts_event == 1458323240_250_000_000 and index.std_dev == Decimal("1.05")
    )
    assert isinstance(book, BookSnapshot) and [lv.price for lv in book.asks] == [Decimal("154.5"), Decimal("154.75")]
    assert [lv.price for lv in book.bids] == [Decimal("151.25")]
    assert isinstance(news, News) and (news.venue, news.symbol, news.article_id) == ("AFP", "EN", "57852")
    assert (news.day_tendency, news.short_term_tendency, news.content) == (9, 7, None)
    assert news.id == n.news_id("AFP", 57852)
    with pytest.raises(n.Malformed):
        n.decode_push(frames[4].data)  # a register reply is not a push


def test_history_bars_and_ticks_share_live_ids() -> None:
    h = n.decode_history(load("history_market.json"))
    entry = h.ranges[0].data[0]
    bar = n.history_event(h.code, h.quote, h.quality, entry, "HOUR", 1)
    assert bar.interval == "1h" and (bar.open, bar.high, bar.low, bar.close) == (
        Decimal("153.25"), Decimal("153.5"), Decimal("152.25"), Decimal("152.5"))
    tick = n.history_event(h.code, h.quote, h.quality, entry, "TICK", 1)
    assert isinstance(tick, MarketPrice) and tick.replay and tick.quality == "delayed"
    assert tick.id == n.price_id("market_price", h.quote, 1454342300 * NS)  # the key is last.date
    assert tick.last == "152.5" and tick.decimal("last") == Decimal("152.5")  # the bar's close, as text


def test_reference_items_of_the_seed() -> None:
    texts = n.Texts({"/l10n/market/EURONEX_FUTURE_EMA": "Corn future",
                     "/l10n/market/EURONEX_FUTURE_EMA_DESC": "Corn, 50 {@:/market/units/TON,tons}"})
    cls = n.generic_decoder.decode(load("future_classes.json"))["data"][0]
    ref = "/market/sources/EURONEX/future/EMA"
    fc = n.future_class(ref, cls, texts, 1)
    assert isinstance(fc, InstrumentClass) and fc.description == "Corn, 50 tons" and len(fc.members) == 14
    dlv = n.delivery(f"{ref}/deliveries/EMAH16", n.generic_decoder.decode(load("delivery.json")), cls, texts, 1)
    assert (dlv.instrument_type, dlv.maturity_month, dlv.expiry_ts) == ("future", 3, 1457352000 * NS)
    assert dlv.contract_size == 50 and dlv.contract_unit == "TON" and dlv.name == "Corn future EMAH16"
    cont = n.delivery(
        f"{ref}/deliveries/EMAC02", {**n.generic_decoder.decode(load("delivery.json")), "code": "EMAC02"}, cls, texts, 1
    )
    assert cont.instrument_type == "continuous_future" and cont.continuous_index == 2
    series = n.option_series(
        "/market/sources/EURONEX/option/OMA/series/OMAH16",
        n.generic_decoder.decode(load("option_series.json")),
        {"code": "OMA", "currency": "EUR"},
        texts,
        1,
    )
    strikes = [e for e in series if isinstance(e, Instrument)]
    assert [(s.option_type, s.strike) for s in strikes] == [("call", 250), ("put", 250)]
    assert strikes[0].underlying == "EMAH16"
    fx = n.currency_class(
        "/market/sources/FOREX/currency/EURUSD", n.generic_decoder.decode(load("currency_class.json")), 1
    )
    assert fx[1].instrument_type == "fx" and fx[1].base == "EUR" and fx[1].quote == "USD"
    ton = n.unit({"code": "TON", "convertionFactor": 1000, "convertionOffset": 0}, texts, 1)
    bushel = n.unit(n.generic_decoder.decode(load("units.json"))["data"][0], texts, 1)
    assert convert(1, bushel, ton) == Decimal("0.0272155")


async def test_paging_without_hole_or_duplicate_ascending_and_descending() -> None:
    """A fake vendor: a point every 0.25 s, capped at 7 points per reply."""
    points = [1000 * NS + i * 250_000_000 for i in range(100)]

    def reply(a: int, b: int) -> bytes:
        lo, hi = min(a, b) * NS, max(a, b) * NS
        chosen = [p for p in points if lo <= p <= hi]
        chosen = sorted(chosen, reverse=a > b)[:7]
        data = [{"date": p / NS, "last": {"date": p / NS, "value": 1}} for p in chosen]
        return json.dumps({"code": "historyMarketPrice", "quote": "/market/sources/X/single/Y",
                           "ranges": [{"data": data}]}).encode()

    for descending in (False, True):
        got: list[int] = []

        async def fetch(ref: str) -> bytes:
            a, b, _ = ref.rsplit("/", 1)[1].split(",")
            return reply(int(a), int(b))

        async for page in hist.pages(fetch, lambda a, b: f"/x/history/{a},{b},TICK", points[3], points[90],
                                     resolution="TICK", cap=7, descending=descending):
            got.extend(k for k, _ in page.entries)
        assert sorted(got) == points[3:91] and len(got) == len(set(got))

    async def stuck(ref: str) -> bytes:  # eight points in one second, a cap of seven
        return json.dumps({"code": "historyMarketPrice", "quote": "/market/sources/X/single/Y", "ranges": [{"data": [
            {"last": {"date": 5 + i / 10, "value": 1}} for i in range(7)]}]}).encode()

    with pytest.raises(hist.HistoryStuck):
        async for _ in hist.pages(stuck, lambda a, b: f"/x/history/{a},{b},TICK", 5 * NS, 6 * NS,
                                  resolution="TICK", cap=7):
            pass


BOOK_QUOTE = "/market/sources/EURONEX/future/EMA/deliveries/EMAH16"


@pytest.mark.parametrize("price", ["-1", "0", "-0.0", "1e30"])
def test_book_levels_with_an_impossible_price_are_malformed(price: str) -> None:
    raw = ('{"code":"orderBook","quote":"%s","data":[{"bid":{"value":%s,"volume":3}}]}' % (BOOK_QUOTE, price)).encode()
    with pytest.raises(n.Malformed, match="BookLevel.price"):
        n.push(n.decode_push(raw), 1, raw)


@pytest.mark.parametrize("date", ["253402300799", "-1", "1e30", '"NaN"'])  # 9999-12-31, before 1970, huge, NaN
def test_dates_out_of_range_are_malformed(date: str) -> None:
    raw = ('{"code":"indexPrice","quote":"/market/sources/SITSISALMONI/index/SISALMONI","date":%s,"value":81.55}'
           % date).encode()
    with pytest.raises(n.Malformed, match="out of range"):
        n.push(n.decode_push(raw), 1)


def test_a_negative_basis_is_a_valid_cash_price() -> None:
    raw = (b'{"code":"cashPrice","quote":"/market/sources/SITCASHFR/cash/FRA18EXWAUB","date":1458323240,'
           b'"deliveries":[{"start":1456790400,"end":1459468799,"value":-12.5,"prime":-1}]}')
    event = n.push(n.decode_push(raw), 1)
    assert event.deliveries[0].value == Decimal("-12.5")


def test_an_oversized_quote_code_is_malformed() -> None:
    raw = (
        '{"code":"indexPrice","quote":"/market/sources/X/index/%s","date":1458323240,"value":1}' % ("Y" * 500)
    ).encode()
    with pytest.raises(n.Malformed, match="subject token"):
        n.push(n.decode_push(raw), 1)


def test_a_market_price_id_is_the_documented_event_id() -> None:
    """The live path hashes the id itself (a prefixed hasher per quote): it must stay the id
    ``event_id`` gives, or a replay of the same price would be stored twice."""
    from marketbus.contracts.ids import event_id

    quote = "/market/sources/EURONEX/future/EMA/deliveries/EMAX01"
    for date in ("1700000000.5", "1700000001"):
        raw = ('{"code":"marketPrice","quote":"%s","quality":"REALTIME","last":{"date":%s,"value":152.25,"volume":3}}'
               % (quote, date)).encode()
        event = n.push(n.decode_push(raw), 1)
        assert event.id == event_id("sitagri", "market_price", quote, event.ts_event)
        assert event.ts_event == int(Decimal(date) * NS) and event.quality == "realtime"


def test_a_market_price_without_last_has_one_id_whatever_the_decimal_text() -> None:
    """No trade yet: the id is the quote, the newest side date and the ask/bid values as
    canonical text (it used to pass that text where ``price_id`` takes an int date, and the
    vendor's rendering of the same value gave different ids)."""
    from marketbus.contracts.ids import event_id

    quote = "/market/sources/EURONEX/future/EMA/deliveries/EMAX01"

    def event(ask: str, bid: str) -> MarketPrice:
        raw = ('{"code":"marketPrice","quote":"%s","ask":{"date":1700000000,"value":%s},'
               '"bid":{"date":1699999999,"value":%s}}' % (quote, ask, bid)).encode()
        return n.push(n.decode_push(raw), 1)

    first = event("152.25", "150")
    assert first.id == event_id("sitagri", "market_price", quote, f"nolast:{1700000000 * NS}:152.25:150")
    assert first.ts_event == 1700000000 * NS and first.last is None and first.last_ts is None
    assert event("152.250", "1.5E+2").id == first.id == event("1.5225e2", "150.000").id
    assert event("152.5", "150").id != first.id
    assert event("0.0", "-0").id == event("0", "0").id != first.id
    assert n.nolast_price_id(quote, 5, None, Decimal("1E+1")) == event_id(
        "sitagri", "market_price", quote, "nolast:5:None:10"
    )


@pytest.mark.parametrize("text", ["0", "1700000000", "1700000000.5", "1700000000.123456789", "1700000000.1234567891",
                                  "1.7e9", "9223372035.999999999", "9223372036.854775807", '"1700000000.25"'])
def test_a_live_date_in_ns_is_the_exact_value(text: str) -> None:
    """The live path turns a plain date into ns from its digits: the same ns as ``to_ns`` of the
    exact decimal, other forms go through it."""
    value = Decimal(text.strip('"'))
    assert n.raw_ns(msgspec.Raw(text.encode())) == n.to_ns(value)


@pytest.mark.parametrize("text", ["-1", "9223372037", "1e30", '"NaN"', "true", '"x"', "[1]"])
def test_a_live_date_out_of_range_or_not_a_number_is_malformed(text: str) -> None:
    raw = ('{"code":"marketPrice","quote":"/market/sources/EURONEX/future/EMA/deliveries/EMAX01",'
           '"last":{"date":%s,"value":1}}' % text).encode()
    with pytest.raises(n.Malformed):
        n.push(n.decode_push(raw), 1)
    assert n.raw_ns(msgspec.Raw(b"null")) is None


@pytest.mark.parametrize("point", ["ask", "bid", "first", "high", "low1Y"])
def test_a_bad_date_in_a_point_the_event_does_not_use_still_refuses_the_push(point: str) -> None:
    """Dates are kept raw until used; one that is not a number, a decimal string or null is still
    a malformed push, as when the decoder read every date."""
    quote = "/market/sources/EURONEX/future/EMA/deliveries/EMAX01"
    good = '{"code":"marketPrice","quote":"%s","last":{"date":1700000000,"value":1},"%s":{"date":%s,"value":2}}'
    assert n.push(n.decode_push((good % (quote, point, '"1700000000.5"')).encode()), 1).last == "1"
    for bad in ('"x"', "true", "[1]", "{}"):
        with pytest.raises(n.Malformed, match="bad date"):
            n.push(n.decode_push((good % (quote, point, bad)).encode()), 1)


def test_a_live_tick_with_last_ask_and_bid_is_the_event_of_every_field() -> None:
    """A push with only last, ask and bid takes a shorter constructor call (fewer keywords): its
    event is the one built with every field, and adding any other point takes the general path
    with the same common fields. Sides equal to ``last.date`` are checked once, not skipped:
    a bad date on a side still refuses the push."""
    quote = "/market/sources/EURONEX/future/EMA/deliveries/EMAX01"
    tick = ('{"code":"marketPrice","quote":"%s","quality":"DELAYED","last":{"date":1700000000.5,"value":152.25,'
            '"volume":3,"totalVolume":40,"orders":2},"ask":{"date":1700000000.5,"value":152.5,"globalVolume":7},'
            '"bid":{"date":1700000000.5,"value":152,"volume":1}%s}')
    event = n.push(n.decode_push((tick % (quote, "")).encode()), 9)
    venue, symbol = n.quote_key(quote)
    assert event == MarketPrice(
        id=event.id, source="sitagri", venue=venue, symbol=symbol, ts_event=1700000000500000000, ts_recv=9,
        replay=False, quality="delayed", last="152.25", last_ts=1700000000500000000,
        last_volume="3", total_volume="40", orders=2, first=None, previous_last=None, high=None,
        low=None, high_1y=None, low_1y=None, settlement=None, settlement_ts=None, open_interest=None,
        bid="152", bid_size="1", ask="152.5", ask_size="7", perf=None, rel_perf=None)
    with_high = n.push(n.decode_push((tick % (quote, ',"high":{"date":1700000000,"value":153}')).encode()), 9)
    assert msgspec.structs.replace(with_high, high=None) == event
    with pytest.raises(n.Malformed, match="bad date"):
        bad = (tick % (quote, "")).replace('"bid":{"date":1700000000.5', '"bid":{"date":"x"')
        n.push(n.decode_push(bad.encode()), 9)


@pytest.mark.parametrize("text", ["0", "1700000000", "1700000000.5", "1700000000.123456789", "1700000000.1234567891",
                                  "1.7e9", "9223372035.999999999", "9223372036.854775807", '"1700000000.25"',
                                  "0.5", "5.25", "-1", "9223372037", "99999999999", "1e30", '"NaN"', '"x"', "true",
                                  "null"])
def test_a_live_tick_reads_last_date_as_the_general_path_does(text: str) -> None:
    """The usual live shape (last, ask, bid) reads ``last.date`` inline: for every form of date
    (plain, fractional, exponent, string, out of range, not a number, null) its event or its
    refusal is the general path's (the same push with one more point, which changes one field)."""
    quote = "/market/sources/EURONEX/future/EMA/deliveries/EMAX01"
    tick = ('{"code":"marketPrice","quote":"%s","last":{"date":%s,"value":152.25,"volume":3},'
            '"ask":{"date":%s,"value":152.5,"volume":1},"bid":{"date":1700000000,"value":152,"volume":2}%s}')

    def event(extra: str) -> MarketPrice | str:
        try:
            return n.push(n.decode_push((tick % (quote, text, text, extra)).encode()), 9)
        except n.Malformed as exc:
            return f"refused: {exc}"

    usual, general = event(""), event(',"high":{"date":1700000000,"value":153}')
    if isinstance(general, str):
        assert usual == general
    else:
        assert usual == msgspec.structs.replace(general, high=None)


@pytest.mark.parametrize(("field", "wire", "carried"), [
    ("value", "152.250", "152.25"), ("value", "1.5225E+2", "152.25"), ("value", '"152.5"', "152.5"),
    ("value", "-0.0", "0"), ("value", "-3.250", "-3.25"), ("value", "0.00000012", "1.2E-7"), ("value", "1e2", "100"),
    ("volume", "0.000", "0"), ("volume", "7", "7"),
])
def test_a_live_decimal_is_carried_as_the_canonical_text_a_decimal_gives(field: str, wire: str, carried: str) -> None:
    """The vendor's JSON decimal becomes the event's text without a Decimal: the very text the
    codec wrote for a Decimal field of that value (canonical), and its exact value on request."""
    raw = ('{"code":"marketPrice","quote":"/market/sources/EURONEX/future/EMA/deliveries/EMAX01",'
           '"last":{"date":1700000000,"%s":%s},"ask":{"date":1700000000,"value":2},'
           '"bid":{"date":1700000000,"value":1}}' % (field, wire)).encode()
    event = n.push(n.decode_push(raw), 1)
    name = {"value": "last", "volume": "last_volume"}[field]
    assert getattr(event, name) == carried
    assert event.decimal(name) == Decimal(wire.strip('"'))
    assert f'"{name}":"{carried}"'.encode() in codec.encode(event)


@pytest.mark.parametrize("wire", ["-1", "-0.0", "true", '"x"', "[1]", "{}", '"NaN"', "1e30", "0." + "0" * 31 + "1"])
@pytest.mark.parametrize("point", ["last.volume", "last.totalVolume", "ask.volume", "bid.globalVolume",
                                   "ask.totalVolume", "first.volume", "last.openInterest"])
def test_a_bad_size_is_refused_whether_the_event_carries_it_or_not(point: str, wire: str) -> None:
    """A size the event carries (its text is checked by the contract) and one it does not (still
    decoded as a decimal) are refused alike: a negative size, -0, not a number, out of bounds."""
    side, field = point.split(".")
    sides = {"last": '"date":1700000000,"value":1', "ask": '"date":1700000000,"value":2',
             "bid": '"date":1700000000,"value":1,"volume":1'}
    if side == "first":
        sides["first"] = '"value":1'
    sides[side] += ',"%s":%s' % (field, wire)
    raw = ('{"code":"marketPrice","quote":"/market/sources/EURONEX/future/EMA/deliveries/EMAX01",%s}'
           % ",".join(f'"{k}":{{{v}}}' for k, v in sides.items())).encode()
    # a negative size the event does not carry (a side's totalVolume, a first's volume, the bid's
    # globalVolume when it has a volume) is no size of the event: it is read as a decimal, as before,
    # and let be
    carried = point in ("last.volume", "last.totalVolume", "ask.volume")
    if not carried and wire in ("-1", "-0.0", "1e30", "0." + "0" * 31 + "1", '"NaN"'):
        n.push(n.decode_push(raw), 1)
        return
    with pytest.raises(n.Malformed):
        n.push(n.decode_push(raw), 1)
