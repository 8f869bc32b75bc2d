"""Sitagri AgriMarket payloads -> contract events. Pure functions, no I/O.

Wire facts (../shared/vendors/sitagri.md): every object has a ``code`` (its type: ``marketPrice``,
``orderBook``, ``cashPrice``, ``indexPrice``, ``newsArticle``, ``history*Price``...); numbers are
plain JSON numbers (decoded straight to ``Decimal`` from their text, never through float; a market
price's are carried as their canonical text, no ``Decimal`` built: :data:`_json_text`); times
are unix seconds, possibly with decimals; fields without data are omitted.

Identity (so live pushes and back-filled history points get the same id):
- a price: the quote reference + the date of its value (``last.date`` for market prices, ``date``
  for cash and index prices);
- a news article: its source + its id (ids are unique within a source only).

Every public function raises :class:`Malformed` and nothing else for a payload it cannot turn
into valid events: whatever breaks a contract invariant (a book level price <= 0 or -0, a date
beyond 2262, NaN, 1e30, an oversized code) or has the wrong shape (see :func:`_declared`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from hashlib import blake2b
from typing import Any, TypeVar

import msgspec

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.codec import DECODE_ERRORS
from marketbus.contracts.ids import event_id, event_id_of, id_head
from marketbus.contracts.invariants import (
    MAX_TOKEN,
    MAX_TS_NS,
    decimal_in_bounds,
    decimal_text_of,
    decimal_text_of_json,
    seconds_ns,
)
from marketbus.contracts.market import (
    Bar,
    BookLevel,
    BookSnapshot,
    CashDelivery,
    CashPrice,
    IndexPrice,
    MarketPrice,
    News,
)
from marketbus.contracts.reference import (
    GeoSite,
    Incoterm,
    Instrument,
    InstrumentClass,
    ProductCategory,
    Unit,
    Venue,
)
from marketbus.contracts.subjects import normalize_symbol

SOURCE = "sitagri"
NS = 1_000_000_000
_NS_D = Decimal(NS)


class Malformed(ValueError):
    """A payload that cannot be normalized; the message is the reason (dead-lettered)."""


F = TypeVar("F", bound=Callable[..., Any])


def _declared(fn: F) -> F:
    """``fn`` raises :class:`Malformed` for any bad payload: a broken contract invariant
    (``InvariantError``), an impossible number (``ArithmeticError``) or a wrong JSON shape in the
    generic reference items (``TypeError``, ``AttributeError``) becomes one, with the reason."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Malformed:
            raise
        except (ValueError, ArithmeticError, TypeError, AttributeError) as exc:
            raise Malformed(f"{fn.__name__}: {type(exc).__name__}: {exc}") from None

    return wrapper  # type: ignore[return-value]


# --- vendor shapes (only what we read; unknown fields are ignored) -------------------------------
class Point(msgspec.Struct, gc=False):
    date: Decimal | None = None
    value: Decimal | None = None
    volume: Decimal | None = None
    totalVolume: Decimal | None = None
    globalVolume: Decimal | None = None
    orders: int | None = None
    openInterest: Decimal | None = None


class Stats(msgspec.Struct, gc=False):
    perf: Decimal | None = None
    relPerf: Decimal | None = None
    openInterest: Decimal | None = None


_NULL = msgspec.Raw(b"null")
_json_text = decimal_text_of_json
"""A vendor's raw JSON decimal (a number, a decimal string or null) -> the text a MarketPrice
carries, or None; raises what a ``Decimal | None`` field's decoding raises (``msgspec.DecodeError``,
a ``ValueError``: :func:`market_price` makes it :class:`Malformed`)."""


class LivePoint(msgspec.Struct, gc=False):
    """A point of a live marketPrice push (``first``, ``previousLast``, ``high``, ``low``,
    ``high1Y``, ``low1Y``: the value alone is read). What the event carries stays the raw JSON text
    (``msgspec.Raw``; ``null`` or absent is ``_NULL``): a decimal becomes the event's decimal text
    (:func:`decimal_text_of_json`, no ``Decimal`` built), and the date that names the event is turned
    into ns from its digits (:func:`raw_ns`; most of a push's dates are never read). What it does
    not carry is decoded as before (``Decimal | None``), so a bad one is refused by the decoder as
    it was."""

    date: msgspec.Raw = _NULL
    value: msgspec.Raw = _NULL
    volume: Decimal | None = None
    totalVolume: Decimal | None = None
    globalVolume: Decimal | None = None
    orders: int | None = None
    openInterest: Decimal | None = None


class LastPoint(msgspec.Struct, gc=False):
    """``last`` of a live marketPrice push: its value, volume, total volume and orders are carried."""

    date: msgspec.Raw = _NULL
    value: msgspec.Raw = _NULL
    volume: msgspec.Raw = _NULL
    totalVolume: msgspec.Raw = _NULL
    globalVolume: Decimal | None = None
    orders: int | None = None
    openInterest: Decimal | None = None


class SidePoint(msgspec.Struct, gc=False):
    """``ask`` or ``bid`` of a live marketPrice push: its value and its size (``volume``, else
    ``globalVolume``) are carried."""

    date: msgspec.Raw = _NULL
    value: msgspec.Raw = _NULL
    volume: msgspec.Raw = _NULL
    totalVolume: Decimal | None = None
    globalVolume: msgspec.Raw = _NULL
    orders: int | None = None
    openInterest: Decimal | None = None


class SettlementPoint(msgspec.Struct, gc=False):
    """``settlement`` of a live marketPrice push: its value, date and open interest are carried."""

    date: msgspec.Raw = _NULL
    value: msgspec.Raw = _NULL
    volume: Decimal | None = None
    totalVolume: Decimal | None = None
    globalVolume: Decimal | None = None
    orders: int | None = None
    openInterest: msgspec.Raw = _NULL


class LiveStats(msgspec.Struct, gc=False):
    perf: msgspec.Raw = _NULL
    relPerf: msgspec.Raw = _NULL
    openInterest: Decimal | None = None


class VMarketPrice(msgspec.Struct, tag_field="code", tag="marketPrice", gc=False):
    quote: str
    quality: str = ""
    last: LastPoint | None = None
    stats: LiveStats | None = None
    first: LivePoint | None = None
    previousLast: LivePoint | None = None
    settlement: SettlementPoint | None = None
    high: LivePoint | None = None
    low: LivePoint | None = None
    high1Y: LivePoint | None = None
    low1Y: LivePoint | None = None
    ask: SidePoint | None = None
    bid: SidePoint | None = None


class BookRow(msgspec.Struct, gc=False):
    ask: Point | None = None
    bid: Point | None = None


class VOrderBook(msgspec.Struct, tag_field="code", tag="orderBook", gc=False):
    quote: str
    quality: str = ""
    data: list[BookRow] = []


class VCashDelivery(msgspec.Struct, gc=False):
    start: Decimal
    end: Decimal
    value: Decimal
    prime: Decimal | None = None


class VCashPrice(msgspec.Struct, tag_field="code", tag="cashPrice", gc=False):
    quote: str
    quality: str = ""
    date: Decimal | None = None
    deliveries: list[VCashDelivery] = []


class VIndexPrice(msgspec.Struct, tag_field="code", tag="indexPrice", gc=False):
    quote: str
    quality: str = ""
    date: Decimal | None = None
    value: Decimal | None = None
    volume: Decimal | None = None
    standardDeviation: Decimal | None = None


class NewsMeta(msgspec.Struct, gc=False):
    dayTendency: int | None = None
    shortTermTendency: int | None = None


class VNews(msgspec.Struct, tag_field="code", tag="newsArticle", gc=False):
    id: int | str
    title: str
    source: str = ""
    lang: str = ""
    copyright: str | None = None
    publicationDate: Decimal | None = None
    modificationDate: Decimal | None = None
    snippet: str | None = None
    content: str | None = None
    words: int | None = None
    metadata: NewsMeta | None = None


Push = VMarketPrice | VOrderBook | VCashPrice | VIndexPrice | VNews


class Frame(msgspec.Struct, gc=False):
    """A netbus websocket frame: ``{"seq": n, "data": ...}`` (``seq`` -1 for pushes)."""

    seq: int
    data: msgspec.Raw = msgspec.Raw(b"null")


class HistEntry(msgspec.Struct, gc=False):
    date: Decimal | None = None
    first: Point | None = None
    last: Point | None = None
    high: Point | None = None
    low: Point | None = None
    stats: Stats | None = None
    deliveries: list[VCashDelivery] | None = None
    value: Decimal | None = None
    volume: Decimal | None = None
    standardDeviation: Decimal | None = None


class HistRange(msgspec.Struct, gc=False):
    start: Decimal | None = None
    end: Decimal | None = None
    resolution: str | int | None = None
    data: list[HistEntry] = []


class VHistory(msgspec.Struct, gc=False):
    code: str
    quote: str = ""
    quality: str = ""
    ranges: list[HistRange] = []


_frame_decoder = msgspec.json.Decoder(Frame)
_push_decoder = msgspec.json.Decoder(Push)
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_history_decoder = msgspec.json.Decoder(VHistory)
generic_decoder = msgspec.json.Decoder(float_hook=Decimal)
"""Generic JSON with every non-integer number as an exact Decimal (reference items)."""


def decode_frame(text: str | bytes) -> Frame:
    try:
        return _frame_decoder.decode(text)
    except DECODE_ERRORS as exc:
        raise Malformed(f"bad netbus frame: {exc}") from None


def decode_push(data: bytes | msgspec.Raw | str) -> Push:
    try:
        return _push_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise Malformed(f"bad push: {exc}") from None


def split_updates(body: bytes) -> list[msgspec.Raw]:
    """A long-polling reply: a JSON array of updates (kept raw, decoded one by one)."""
    try:
        return _raw_list_decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise Malformed(f"bad long-polling reply: {exc}") from None


def decode_history(data: bytes | msgspec.Raw) -> VHistory:
    try:
        out = _history_decoder.decode(data)
    except DECODE_ERRORS as exc:
        raise Malformed(f"bad history reply: {exc}") from None
    if not out.code.startswith("history"):
        raise Malformed(f"not a history reply: code {out.code!r}")
    return out


# --- identity ------------------------------------------------------------------------------------
@lru_cache(maxsize=65_536)
def quote_key(ref: str) -> tuple[str, str]:
    """``/market/sources/EURONEX/future/EMA/deliveries/EMAH16`` -> (``EURONEX``, ``EMAH16``),
    both NATS-token safe (venue = market source, symbol = the quote's code)."""
    parts = ref.strip("/").split("/")
    if len(parts) < 3 or parts[0] != "market" or parts[1] != "sources" or not parts[-1] or not parts[2]:
        raise Malformed(f"not a quote reference: {ref[:200]!r}")
    venue, symbol = normalize_symbol(parts[2]), normalize_symbol(parts[-1])
    if len(venue) > MAX_TOKEN or len(symbol) > MAX_TOKEN:
        raise Malformed(f"quote reference {ref[:200]!r}: a code does not fit a subject token")
    return venue, symbol


def source_code(ref: str) -> str:
    """``/news/sources/AFP`` or ``/market/sources/EURONEX`` -> the code."""
    return ref.rstrip("/").rsplit("/", 1)[-1]


_MAX_SECONDS = Decimal(MAX_TS_NS) / _NS_D


def to_ns(seconds: Decimal) -> int:
    """Unix seconds (maybe fractional, exact) -> int ns, within the contracts' range (1970..2262)."""
    if not decimal_in_bounds(seconds) or not 0 <= seconds <= _MAX_SECONDS:
        raise Malformed(f"date {str(seconds)[:40]} is out of range (1970..2262)")
    if seconds == seconds.to_integral_value():
        return int(seconds) * NS
    return int(seconds * _NS_D)


_date_decoder = msgspec.json.Decoder(Decimal | None)
_MAX_WHOLE = MAX_TS_NS // NS


def raw_ns(raw: msgspec.Raw) -> int | None:
    """A raw JSON date (unix seconds) -> int ns, None for ``null``: :func:`to_ns` of its exact
    value, computed from the digits when it is plain (``1764547200`` or ``1764547200.123``);
    anything else (an exponent, a string, more than 9 decimals, out of range) goes through
    ``Decimal`` and :func:`to_ns`, with their refusals."""
    text = bytes(raw)
    whole, dot, frac = text.partition(b".")
    if whole.isdigit() and len(whole) < 11 and (not dot or (frac.isdigit() and len(frac) <= 9)):
        seconds = int(whole)
        if seconds < _MAX_WHOLE:
            return seconds * NS + int(frac.ljust(9, b"0")) if dot else seconds * NS
    try:
        value = _date_decoder.decode(text)
    except DECODE_ERRORS as exc:
        raise Malformed(f"bad date {text[:40]!r}: {exc}") from None
    return None if value is None else to_ns(value)


def _check_dates(known: msgspec.Raw, *points: LivePoint | LastPoint | SidePoint | None) -> None:
    """The dates a push carries but its event does not use are checked as the decoder checked
    them before they were kept raw: a number, a decimal string or null (:class:`Malformed` else).
    A date with the same text as ``known`` (one already read, e.g. ``last.date``: a live push's
    sides usually carry it) needs no second look."""
    for point in points:
        if point is None or point.date == known:
            continue
        text = bytes(point.date)
        whole, dot, frac = text.partition(b".")
        if whole.isdigit() and (not dot or frac.isdigit()):
            continue
        try:
            _date_decoder.decode(text)
        except DECODE_ERRORS as exc:
            raise Malformed(f"bad date {text[:40]!r}: {exc}") from None


def _ns(seconds: Decimal | None) -> int | None:
    return None if seconds is None else to_ns(seconds)


def _quality(q: str) -> str:
    return "realtime" if q == "REALTIME" else "delayed" if q == "DELAYED" else "unknown"


def price_id(kind: str, quote: str, ts_ns: int) -> str:
    return event_id(SOURCE, kind, quote, ts_ns)


def canonical(value: Decimal | None) -> str:
    """A decimal's canonical text: no exponent, no trailing zeros, no sign on zero (``1.5E+2``,
    ``150.0`` and ``150`` are all ``150``); ``None`` for a missing value."""
    if value is None:
        return "None"
    if not value:
        return "0"
    return format(value.normalize(), "f")


def nolast_price_id(quote: str, ts_ns: int, ask: Decimal | str | None, bid: Decimal | str | None) -> str:
    """The id of a market price without a trade yet (no ``last.date``): the quote, the newest
    date of its sides and the ask and bid values (a ``Decimal`` or a decimal text), as
    :func:`canonical` text, so the same prices written differently by the vendor (``152.250``,
    ``1.5225E+2``) are the same event."""
    if ask.__class__ is str:
        ask = Decimal(ask)
    if bid.__class__ is str:
        bid = Decimal(bid)
    return event_id(SOURCE, "market_price", quote,
                    f"nolast:{ts_ns}:{canonical(ask)}:{canonical(bid)}")  # type: ignore[arg-type]


def news_id(source: str, article_id: int | str) -> str:
    return event_id(SOURCE, "news", source, article_id)


def _digest(*parts: object) -> str:
    return blake2b(repr(parts).encode(), digest_size=8).hexdigest()


def _val(p: Point | None) -> Decimal | None:
    return None if p is None else p.value


def _text(value: Decimal | None) -> str | None:
    """A decoded decimal -> the text a MarketPrice carries (``None`` stays ``None``)."""
    return None if value is None else decimal_text_of(value)


def _raw_text(point: LivePoint | LastPoint | SidePoint | SettlementPoint | None) -> str | None:
    """A point's raw value -> the text a MarketPrice carries (``None`` for no point, no value)."""
    return None if point is None else _json_text(point.value)


def _side_size(side: SidePoint) -> str | None:
    """A side's size: its ``volume``, else its ``globalVolume``; a ``globalVolume`` that is not
    used is still checked (a number, a decimal string or null), as the decoder checked it."""
    size = _json_text(side.volume)
    if side.globalVolume is not _NULL:
        other = _json_text(side.globalVolume)
        if size is None:
            return other
    return size


# --- prices --------------------------------------------------------------------------------------
def market_price(p: VMarketPrice, ts_recv: int, replay: bool = False) -> MarketPrice:
    """A marketPrice push -> MarketPrice (the live hot path: attribute reads, no helper calls
    per field). Raises :class:`Malformed` like the ``_declared`` functions do."""
    try:
        return _market_price(p, ts_recv, replay)
    except Malformed:
        raise
    except (ValueError, ArithmeticError, TypeError, AttributeError) as exc:
        raise Malformed(f"market_price: {type(exc).__name__}: {exc}") from None


def _market_price(p: VMarketPrice, ts_recv: int, replay: bool) -> MarketPrice:
    venue, symbol, head = _market_quote(p.quote)
    last, ask, bid = p.last, p.ask, p.bid
    if last is not None and ask is not None and bid is not None and p.settlement is None and p.stats is None \
            and p.first is None and p.previousLast is None and p.high is None and p.low is None and p.high1Y is None \
            and p.low1Y is None:
        # a live tick's usual shape (last, ask, bid), with few helper calls on the way: last.date's
        # plain digits read in one compiled call (raw_ns's plain-digits branch; any other date goes
        # to raw_ns), the sides' dates checked only when their text differs from it; the same
        # steps, in the same order, as the general path below
        known = last.date
        ts = seconds_ns(known)  # a plain date, compiled (raw_ns's plain-digits branch); any other: raw_ns
        if ts is None:
            ts = raw_ns(known)
        if ts is not None:
            if ask.date != known or bid.date != known:
                _check_dates(known, ask, bid)
            # the id is price_id("market_price", quote, ts) (the same text, the same hash, in one
            # compiled call); the absent fields keep their defaults (None): 11 keywords fewer to
            # pass (each costs msgspec ~35 ns); the decimals go from the vendor's JSON text to the
            # event's text (no Decimal), a side's size from its volume (its globalVolume when set)
            dec = _json_text
            return MarketPrice(
                id=event_id_of(head, str(ts)), source=SOURCE, venue=venue, symbol=symbol, ts_event=ts,
                ts_recv=ts_recv, replay=replay, quality=_QUALITY.get(p.quality, "unknown"),  # type: ignore[arg-type]
                last=dec(last.value), last_ts=ts, last_volume=dec(last.volume),
                total_volume=dec(last.totalVolume), orders=last.orders, bid=dec(bid.value),
                bid_size=dec(bid.volume) if bid.globalVolume is _NULL else _side_size(bid),
                ask=dec(ask.value),
                ask_size=dec(ask.volume) if ask.globalVolume is _NULL else _side_size(ask),
            )
    last_ts = None if last is None else raw_ns(last.date)
    if last_ts is not None:
        ts = last_ts
        eid = event_id_of(head, str(ts))  # price_id("market_price", quote, ts)
        _check_dates(last.date, p.ask, p.bid, p.first, p.previousLast, p.high, p.low, p.high1Y, p.low1Y)  # type: ignore[union-attr]
    else:
        # no trade yet: the newest date of the quote's sides names it
        dates = [d for d in (raw_ns(x.date) for x in (p.ask, p.bid, p.settlement) if x is not None) if d is not None]
        ts = max(dates) if dates else ts_recv
        eid = nolast_price_id(p.quote, ts, _raw_text(p.ask), _raw_text(p.bid))
        _check_dates(_NULL, p.first, p.previousLast, p.high, p.low, p.high1Y, p.low1Y)
    ask, bid, settle, stats, first, prev, high, low = (
        p.ask,
        p.bid,
        p.settlement,
        p.stats,
        p.first,
        p.previousLast,
        p.high,
        p.low,
    )
    high_1y, low_1y = p.high1Y, p.low1Y
    if last is not None and ask is not None and bid is not None and settle is None and stats is None \
            and first is None and prev is None and high is None and low is None and high_1y is None and low_1y is None:
        # a live tick's usual shape (last, ask, bid): the absent fields keep their defaults
        # (None), 11 keywords fewer to pass (each costs msgspec ~35 ns). The same event as below.
        return MarketPrice(
            id=eid, source=SOURCE, venue=venue, symbol=symbol, ts_event=ts, ts_recv=ts_recv, replay=replay,
            quality=_QUALITY.get(p.quality, "unknown"),  # type: ignore[arg-type]
            last=_json_text(last.value), last_ts=last_ts, last_volume=_json_text(last.volume),
            total_volume=_json_text(last.totalVolume), orders=last.orders, bid=_json_text(bid.value),
            bid_size=_side_size(bid), ask=_json_text(ask.value), ask_size=_side_size(ask),
        )
    return MarketPrice(
        id=eid, source=SOURCE, venue=venue, symbol=symbol, ts_event=ts, ts_recv=ts_recv, replay=replay,
        quality=_QUALITY.get(p.quality, "unknown"),  # type: ignore[arg-type]
        last=_raw_text(last),
        last_ts=last_ts,
        last_volume=_json_text(last.volume) if last is not None else None,
        total_volume=_json_text(last.totalVolume) if last is not None else None,
        orders=last.orders if last is not None else None,
        first=_raw_text(first),
        previous_last=_raw_text(prev),
        high=_raw_text(high),
        low=_raw_text(low),
        high_1y=_raw_text(high_1y),
        low_1y=_raw_text(low_1y),
        settlement=_raw_text(settle),
        settlement_ts=raw_ns(settle.date) if settle is not None else None,
        open_interest=_json_text(settle.openInterest) if settle is not None else None,
        bid=_raw_text(bid),
        bid_size=_side_size(bid) if bid is not None else None,
        ask=_raw_text(ask),
        ask_size=_side_size(ask) if ask is not None else None,
        perf=_json_text(stats.perf) if stats is not None else None,
        rel_perf=_json_text(stats.relPerf) if stats is not None else None,
    )


_QUALITY = {"REALTIME": "realtime", "DELAYED": "delayed"}


@lru_cache(maxsize=65_536)
def _market_quote(quote: str) -> tuple[str, str, bytes]:
    """:func:`quote_key` of a quote and the constant head of its market price ids' text (the same
    text as ``price_id``): ``event_id_of(head, str(ts_ns))`` is ``price_id("market_price", quote,
    ts_ns)``, in one compiled call. One cache lookup an event."""
    venue, symbol = quote_key(quote)
    return venue, symbol, id_head(SOURCE, "market_price", quote)


def _level(p: Point | None) -> BookLevel | None:
    if p is None or p.value is None:
        return None
    size = p.volume if p.volume is not None else p.globalVolume
    return BookLevel(p.value, size if size is not None else Decimal(0), p.orders)


@_declared
def order_book(p: VOrderBook, ts_recv: int, raw: bytes | None = None) -> BookSnapshot:
    """An orderBook (one row per depth level) -> BookSnapshot. The vendor gives no date: the id
    is the quote + the book's content, so the same book re-read is the same event."""
    venue, symbol = quote_key(p.quote)
    bids = [lv for lv in (_level(r.bid) for r in p.data) if lv is not None]
    asks = [lv for lv in (_level(r.ask) for r in p.data) if lv is not None]
    content = raw if raw is not None else repr((bids, asks)).encode()
    return BookSnapshot(
        id=event_id(SOURCE, "book", p.quote, blake2b(content, digest_size=8).hexdigest()),
        source=SOURCE, venue=venue, symbol=symbol, ts_event=ts_recv, ts_recv=ts_recv,
        bids=sorted(bids, key=lambda lv: lv.price, reverse=True), asks=sorted(asks, key=lambda lv: lv.price),
        quality=_quality(p.quality),  # type: ignore[arg-type]
    )


def _deliveries(items: list[VCashDelivery]) -> list[CashDelivery]:
    return [CashDelivery(start=to_ns(d.start), end=to_ns(d.end), value=d.value, prime=d.prime) for d in items]


@_declared
def cash_price(p: VCashPrice, ts_recv: int, replay: bool = False, currency: str | None = None) -> CashPrice:
    venue, symbol = quote_key(p.quote)
    if p.date is None:
        raise Malformed(f"cashPrice of {p.quote} has no date")
    ts = to_ns(p.date)
    return CashPrice(
        id=price_id("cash_price", p.quote, ts), source=SOURCE, venue=venue, symbol=symbol, ts_event=ts,
        ts_recv=ts_recv, replay=replay, deliveries=_deliveries(p.deliveries),
        quality=_quality(p.quality), currency=currency,  # type: ignore[arg-type]
    )


@_declared
def index_price(p: VIndexPrice, ts_recv: int, replay: bool = False) -> IndexPrice:
    venue, symbol = quote_key(p.quote)
    if p.date is None or p.value is None:
        raise Malformed(f"indexPrice of {p.quote} has no date or value")
    ts = to_ns(p.date)
    return IndexPrice(
        id=price_id("index_price", p.quote, ts), source=SOURCE, venue=venue, symbol=symbol, ts_event=ts,
        ts_recv=ts_recv, replay=replay, value=p.value, volume=p.volume, std_dev=p.standardDeviation,
        quality=_quality(p.quality),  # type: ignore[arg-type]
    )


@_declared
def news(a: VNews, ts_recv: int, replay: bool = False, source: str | None = None) -> News:
    src = source or (source_code(a.source) if a.source else "")
    if not src:
        raise Malformed(f"article {a.id} has no source")
    ts = _ns(a.publicationDate) or ts_recv
    meta = a.metadata
    return News(
        id=news_id(src, a.id), source=SOURCE, venue=normalize_symbol(src),
        symbol=normalize_symbol(a.lang) if a.lang else NO_VENUE, ts_event=ts, ts_recv=ts_recv, replay=replay,
        article_id=str(a.id), title=a.title, lang=a.lang, snippet=a.snippet, content=a.content,
        copyright=a.copyright, modified_ts=_ns(a.modificationDate), words=a.words,
        day_tendency=meta.dayTendency if meta else None, short_term_tendency=meta.shortTermTendency if meta else None,
    )


def push(obj: Push, ts_recv: int, raw: bytes | None = None) -> Any:
    """A decoded push -> its event (MarketPrice, BookSnapshot, CashPrice, IndexPrice or News).
    A market price (the live hot path) goes to :func:`_market_price` with no wrapper call on the
    way: the same refusals as :func:`market_price` gives."""
    if obj.__class__ is VMarketPrice:
        try:
            return _market_price(obj, ts_recv, False)
        except Malformed:
            raise
        except (ValueError, ArithmeticError, TypeError, AttributeError) as exc:
            raise Malformed(f"market_price: {type(exc).__name__}: {exc}") from None
    return _push(obj, ts_recv, raw)


# --- the live hot path: wire bytes -> event ------------------------------------------------------
try:  # a build without the Sitagri block (older than its source): the Python path alone
    from marketbus.contracts import _checks as _compiled_checks

    _market_price_push: Any = getattr(_compiled_checks, "market_price_push", None)
except ImportError:  # pragma: no cover - the extension is built by `make venv`
    _market_price_push = None
_LIVE_QUOTES: dict[str, tuple[Callable[[], MarketPrice], bytes, str]] = {}
"""quote -> (its template MarketPrice's ``__copy__``, its ids' head, the quote): what the compiled
reader needs of a quote, filled by :func:`live_push`'s Python path once it has read the quote."""
_MAX_LIVE_QUOTES = 65_536
_LIVE_QUALITIES = ("realtime", "delayed", "unknown")
_CHECK_MARKET_PRICE: Any = MarketPrice.__post_init__  # type: ignore[attr-defined]
_TEMPLATE_ID = "0" * 24


def live_push(raw: bytes | msgspec.Raw, ts_recv: int) -> tuple[str | None, bool, Any]:
    """A pushed object's wire bytes -> (its quote or None, whether it is an order book, its event):
    ``push(decode_push(raw), ts_recv, raw for a book)``, the live hot path (websocket and long
    polling). A live tick's usual shape (last, ask, bid, plain numbers) of a quote already seen is
    read and made in one compiled call (``_checks.market_price_push``: the same event, checked by
    ``MarketPrice``'s own ``__post_init__``); it leaves anything else to the Python path, which
    gives the events and the :class:`Malformed` refusals, and learns the quote."""
    if _market_price_push is not None:
        made = _market_price_push(raw, ts_recv, _LIVE_QUOTES, _CHECK_MARKET_PRICE, _LIVE_QUALITIES)
        if made is not None:  # (quote, False, event)
            return made
    obj = decode_push(raw)
    cls = obj.__class__
    event = push(obj, ts_recv, bytes(raw) if cls is VOrderBook else None)
    if cls is VMarketPrice and _market_price_push is not None:
        quote = obj.quote  # type: ignore[union-attr]
        if quote not in _LIVE_QUOTES:
            _learn_quote(quote)
    return getattr(obj, "quote", None), cls is VOrderBook, event


def _learn_quote(quote: str) -> None:
    venue, symbol, head = _market_quote(quote)
    if len(_LIVE_QUOTES) >= _MAX_LIVE_QUOTES:
        _LIVE_QUOTES.clear()
    template = MarketPrice(id=_TEMPLATE_ID, source=SOURCE, venue=venue, symbol=symbol, ts_event=0, ts_recv=0)
    _LIVE_QUOTES[quote] = (template.__copy__, head, quote)  # type: ignore[attr-defined]


@_declared
def _push(obj: Push, ts_recv: int, raw: bytes | None = None) -> Any:
    t = type(obj)
    if t is VCashPrice:
        return cash_price(obj, ts_recv)  # type: ignore[arg-type]
    if t is VIndexPrice:
        return index_price(obj, ts_recv)  # type: ignore[arg-type]
    if t is VNews:
        return news(obj, ts_recv)  # type: ignore[arg-type]
    return order_book(obj, ts_recv, raw)  # type: ignore[arg-type]


# --- history -------------------------------------------------------------------------------------
def entry_key(e: HistEntry, code: str) -> int:
    """The reference date of a history entry, ns: ``last.date`` for market prices, else ``date``."""
    if code == "historyMarketPrice":
        if e.last is None or e.last.date is None:
            raise Malformed("history entry without last.date")
        return to_ns(e.last.date)
    if e.date is None:
        raise Malformed("history entry without date")
    return to_ns(e.date)


INTERVALS = {"MINUTE": "1m", "HOUR": "1h", "DAY": "1d", "WEEK": "1w", "MONTH": "1M"}


def interval_of(resolution: str) -> str:
    if resolution in INTERVALS:
        return INTERVALS[resolution]
    if len(resolution) > 32:
        raise Malformed(f"bad resolution {resolution[:32]!r}...")
    if resolution.isdigit():
        return f"{int(resolution)}m"
    return resolution.lower()


@_declared
def history_event(code: str, quote: str, quality: str, e: HistEntry, resolution: str, ts_recv: int,
                  replay: bool = True) -> Any:
    """One history entry -> an event. TICK market entries are MarketPrice (same id as the live
    push of that tick); bars of other resolutions are Bar; cash and index entries are CashPrice /
    IndexPrice (same ids as live)."""
    venue, symbol = quote_key(quote)
    q = _quality(quality)
    if code == "historyCashPrice":
        ts = entry_key(e, code)
        return CashPrice(id=price_id("cash_price", quote, ts), source=SOURCE, venue=venue, symbol=symbol,
                         ts_event=ts, ts_recv=ts_recv, replay=replay, deliveries=_deliveries(e.deliveries or []),
                         quality=q)  # type: ignore[arg-type]
    if code == "historyIndexPrice":
        ts = entry_key(e, code)
        if e.value is None:
            raise Malformed("index history entry without value")
        return IndexPrice(id=price_id("index_price", quote, ts), source=SOURCE, venue=venue, symbol=symbol,
                          ts_event=ts, ts_recv=ts_recv, replay=replay, value=e.value, volume=e.volume,
                          std_dev=e.standardDeviation, quality=q)  # type: ignore[arg-type]
    ts = entry_key(e, code)
    last = e.last
    assert last is not None
    oi = e.stats.openInterest if e.stats is not None else None
    if resolution == "TICK":
        return MarketPrice(
            id=price_id("market_price", quote, ts), source=SOURCE, venue=venue, symbol=symbol, ts_event=ts,
            ts_recv=ts_recv, replay=replay, quality=q, last=_text(last.value), last_ts=ts,  # type: ignore[arg-type]
            last_volume=_text(last.volume), orders=last.orders, first=_text(_val(e.first)), high=_text(_val(e.high)),
            low=_text(_val(e.low)), open_interest=_text(oi),
        )
    if e.first is None or e.first.value is None or last.value is None or e.high is None or e.low is None \
            or e.high.value is None or e.low.value is None:
        raise Malformed("history bar without first/last/high/low")
    start = _ns(e.first.date) or ts
    return Bar(
        id=event_id(SOURCE, "bar", quote, resolution, ts), source=SOURCE, venue=venue, symbol=symbol,
        ts_event=start, ts_recv=ts_recv, replay=replay, interval=interval_of(resolution),
        open=e.first.value, high=e.high.value, low=e.low.value, close=last.value, volume=last.volume,
        open_interest=oi,
    )



# --- reference data ------------------------------------------------------------------------------
_LINK = re.compile(r"\{@:([^,}]*),([^}]*)\}")


def l10n_text(text: str | None) -> str | None:
    """An l10n text with its ``{@:/market/units/LBS,pounds}`` links reduced to their titles."""
    if text is None:
        return None
    return _LINK.sub(lambda m: m.group(2), text)


def _item_id(kind: str, ref: str, item: dict[str, Any]) -> str:
    """Reference ids: the vendor reference + a digest of the item, so an unchanged item re-read
    is the same event and a changed one is a new event."""
    return event_id(SOURCE, kind, ref, blake2b(msgspec.json.encode(item, order="sorted"), digest_size=8).hexdigest())


def _code_of(ref: str | None) -> str | None:
    return ref.rstrip("/").rsplit("/", 1)[-1] if ref else None


def _dec(v: Any) -> Decimal | None:
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, Decimal):
        return v
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, str):
        try:
            return Decimal(v)
        except ArithmeticError:
            raise Malformed(f"not a number: {v!r}") from None
    raise Malformed(f"not a number: {v!r}")


def _ns_opt(v: Any) -> int | None:
    d = _dec(v)
    return None if d is None else to_ns(d)


class Texts:
    """l10n reference -> text (what the crawl fetched)."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    def name(self, item: dict[str, Any]) -> str | None:
        return l10n_text(self.texts.get(item.get("name", "") or ""))

    def desc(self, item: dict[str, Any]) -> str | None:
        return l10n_text(self.texts.get(item.get("desc", "") or ""))


def _code(item: Any, what: str) -> str:
    if not isinstance(item, dict) or not isinstance(item.get("code"), str) or not item["code"]:
        raise Malformed(f"{what} without a code")
    return item["code"]


def _attrs(item: dict[str, Any], *keys: str) -> dict[str, str]:
    return {k: str(item[k]).lower() if isinstance(item[k], bool) else str(item[k]) for k in keys if k in item}


@_declared
def market_venue(item: dict[str, Any], texts: Texts, ts: int) -> Venue:
    code = _code(item, "market source")
    sym = normalize_symbol(code)
    return Venue(id=_item_id("venue", f"/market/sources/{code}", item), source=SOURCE, venue=sym, symbol=sym,
                 ts_event=ts, ts_recv=ts, name=texts.name(item), description=texts.desc(item),
                 attributes={"kind": "market", **_attrs(item, "rights", "orderBook", "autoCurrency")})


@_declared
def news_venue(item: dict[str, Any], texts: Texts, ts: int) -> Venue:
    code = _code(item, "news source")
    sym = normalize_symbol(code)
    attrs = {"kind": "news", **_attrs(item, "rights", "bypassFilters")}
    if isinstance(item.get("langs"), list):
        attrs["langs"] = ",".join(str(x) for x in item["langs"])
    return Venue(id=_item_id("venue", f"/news/sources/{code}", item), source=SOURCE, venue=sym, symbol=sym,
                 ts_event=ts, ts_recv=ts, name=texts.name(item), description=texts.desc(item), attributes=attrs)


@_declared
def future_class(ref: str, item: dict[str, Any], texts: Texts, ts: int) -> InstrumentClass:
    code = _code(item, "future class")
    venue, _ = quote_key(ref)
    return InstrumentClass(
        id=_item_id("instrument_class", ref, item), source=SOURCE, venue=venue, symbol=normalize_symbol(code),
        ts_event=ts, ts_recv=ts, class_type="future_class", vendor_symbol=code, name=texts.name(item),
        description=texts.desc(item), currency=item.get("currency"), product=_code_of(item.get("product")),
        members=[_code_of(r) or "" for r in item.get("deliveries", [])], vendor_ref=ref,
        attributes={**_attrs(item, "contractSize"), **({"contractUnit": _code_of(item["contractUnit"]) or ""}
                                                        if item.get("contractUnit") else {})},
    )


@_declared
def delivery(ref: str, item: dict[str, Any], cls: dict[str, Any], texts: Texts, ts: int) -> Instrument:
    """A future delivery: classic (EMAH16) or continuous (EMAC01, which follows its current
    underlying: its last trading date and maturity are the underlying's)."""
    code = _code(item, "delivery")
    venue, _ = quote_key(ref)
    cls_code = cls.get("code", "")
    tail = code[len(cls_code):] if cls_code and code.startswith(cls_code) else ""
    continuous = len(tail) >= 2 and tail[0] == "C" and tail[1:].isdigit()
    name = texts.name(cls)
    return Instrument(
        id=_item_id("instrument", ref, item), source=SOURCE, venue=venue, symbol=normalize_symbol(code),
        ts_event=ts, ts_recv=ts, instrument_type="continuous_future" if continuous else "future",
        vendor_symbol=code, name=f"{name} {code}" if name else code, description=texts.desc(cls),
        currency=cls.get("currency"), contract_size=_dec(cls.get("contractSize")),
        contract_unit=_code_of(cls.get("contractUnit")), product=_code_of(cls.get("product")),
        instrument_class=cls_code or None, expiry_ts=_ns_opt(item.get("lastTradingDate")),
        maturity_year=item.get("maturityYear"), maturity_month=item.get("maturityMonth"),
        continuous_index=int(tail[1:]) if continuous else None, vendor_ref=ref,
    )


@_declared
def option_class(ref: str, item: dict[str, Any], texts: Texts, ts: int) -> InstrumentClass:
    code = _code(item, "option class")
    venue, _ = quote_key(ref)
    return InstrumentClass(
        id=_item_id("instrument_class", ref, item), source=SOURCE, venue=venue, symbol=normalize_symbol(code),
        ts_event=ts, ts_recv=ts, class_type="option_class", vendor_symbol=code, name=texts.name(item),
        description=texts.desc(item), currency=item.get("currency"), product=_code_of(item.get("product")),
        members=[_code_of(r) or "" for r in item.get("series", [])],
        underlying=_code_of(item.get("underlyingFutureClass")), vendor_ref=ref,
    )


def strike_ref(series_ref: str, strike_code: str) -> str:
    return f"{series_ref}/strikes/{strike_code}"


@_declared
def option_series(ref: str, item: dict[str, Any], cls: dict[str, Any], texts: Texts,
                  ts: int) -> list[InstrumentClass | Instrument]:
    """An option series -> its InstrumentClass and one Instrument per strike (CALL and PUT)."""
    code = _code(item, "option series")
    venue, _ = quote_key(ref)
    underlying = _code_of(item.get("underlyingFutureQuote"))
    strikes = item.get("strikes") or []
    out: list[InstrumentClass | Instrument] = [InstrumentClass(
        id=_item_id("instrument_class", ref, item), source=SOURCE, venue=venue, symbol=normalize_symbol(code),
        ts_event=ts, ts_recv=ts, class_type="option_series", vendor_symbol=code, name=texts.name(cls),
        currency=cls.get("currency"), product=_code_of(cls.get("product")),
        members=[_code(s, "strike") for s in strikes], underlying=underlying, vendor_ref=ref,
        attributes=_attrs(item, "minStrikePrice", "maxStrikePrice", "maturityMonth", "maturityYear"),
    )]
    name = texts.name(cls)
    for s in strikes:
        s_code = _code(s, "strike")
        s_ref = strike_ref(ref, s_code)
        kind = str(s.get("optionType", "")).lower()
        out.append(Instrument(
            id=_item_id("instrument", s_ref, s), source=SOURCE, venue=venue, symbol=normalize_symbol(s_code),
            ts_event=ts, ts_recv=ts, instrument_type="option", vendor_symbol=s_code,
            name=f"{name} {s_code}" if name else s_code, currency=cls.get("currency"),
            product=_code_of(cls.get("product")), instrument_class=cls.get("code"),
            expiry_ts=_ns_opt(item.get("lastTradingDate")), maturity_year=item.get("maturityYear"),
            maturity_month=item.get("maturityMonth"), underlying=underlying, option_series=code,
            option_type=kind if kind in ("call", "put") else None, strike=_dec(s.get("strike")),  # type: ignore[arg-type]
            vendor_ref=s_ref,
        ))
    return out


@_declared
def simple_quote(ref: str, kind: str, item: dict[str, Any], texts: Texts, ts: int) -> Instrument:
    """A single, cash or index quote."""
    code = _code(item, f"{kind} quote")
    venue, _ = quote_key(ref)
    return Instrument(
        id=_item_id("instrument", ref, item), source=SOURCE, venue=venue, symbol=normalize_symbol(code),
        ts_event=ts, ts_recv=ts, instrument_type=kind,  # type: ignore[arg-type]
        vendor_symbol=code, name=texts.name(item), description=texts.desc(item), currency=item.get("currency"),
        contract_size=_dec(item.get("contractSize")), contract_unit=_code_of(item.get("contractUnit")),
        product=_code_of(item.get("product")), geo_site=_code_of(item.get("geoSite")),
        incoterm=_code_of(item.get("incoterm")), vendor_ref=ref,
        attributes=_attrs(item, "timezone", "frequency", "editable", "volumeMin"),
    )


@_declared
def currency_class(ref: str, item: dict[str, Any], ts: int) -> list[InstrumentClass | Instrument]:
    """A currency pair and its terms (absent when the pair cannot be converted)."""
    code = _code(item, "currency class")
    venue, _ = quote_key(ref)
    terms = item.get("terms") or []
    frm, to = item.get("from"), item.get("to")
    out: list[InstrumentClass | Instrument] = [InstrumentClass(
        id=_item_id("instrument_class", ref, item), source=SOURCE, venue=venue, symbol=normalize_symbol(code),
        ts_event=ts, ts_recv=ts, class_type="fx_class", vendor_symbol=code, name=f"{frm}/{to}",
        currency=to, members=[_code(t, "currency term") for t in terms], vendor_ref=ref,
        attributes={k: str(v) for k, v in (("from", frm), ("to", to)) if v},
    )]
    for t in terms:
        t_code = _code(t, "currency term")
        t_ref = f"{ref}/terms/{t_code}"
        term_type = str(t.get("termType", ""))
        out.append(Instrument(
            id=_item_id("instrument", t_ref, t), source=SOURCE, venue=venue, symbol=normalize_symbol(t_code),
            ts_event=ts, ts_recv=ts, instrument_type="fx" if term_type == "SPOT" else "fx_forward",
            vendor_symbol=t_code, name=f"{frm}/{to} {term_type.lower()} {t_code[len(code):]}".strip(),
            base=frm, quote=to, currency=to, instrument_class=code, fx_term_type=term_type or None,
            fx_term_days=t.get("termDuration"), vendor_ref=t_ref,
        ))
    return out


@_declared
def unit(item: dict[str, Any], texts: Texts, ts: int) -> Unit:
    code = _code(item, "unit")
    factor = _dec(item.get("convertionFactor", item.get("conversionFactor")))
    if factor is None:
        raise Malformed(f"unit {code} has no convertionFactor")
    return Unit(id=_item_id("unit", f"/market/units/{code}", item), source=SOURCE, venue=NO_VENUE,
                symbol=normalize_symbol(code), ts_event=ts, ts_recv=ts, code=code, name=texts.name(item),
                unit_symbol=item.get("symbol"), unit_type=item.get("type"), factor=factor,
                offset=_dec(item.get("convertionOffset", item.get("conversionOffset"))) or Decimal(0))


@_declared
def geo_site(item: dict[str, Any], texts: Texts, ts: int) -> GeoSite:
    code = _code(item, "geoSite")
    return GeoSite(id=_item_id("geo_site", f"/market/geoSites/{code}", item), source=SOURCE, venue=NO_VENUE,
                   symbol=normalize_symbol(code), ts_event=ts, ts_recv=ts, code=code, name=texts.name(item),
                   description=texts.desc(item), country=item.get("country"),
                   longitude=_dec(item.get("gpsLong")), latitude=_dec(item.get("gpsLat")))


@_declared
def incoterm(item: dict[str, Any], texts: Texts, ts: int) -> Incoterm:
    code = _code(item, "incoterm")
    return Incoterm(id=_item_id("incoterm", f"/market/incoterms/{code}", item), source=SOURCE, venue=NO_VENUE,
                    symbol=normalize_symbol(code), ts_event=ts, ts_recv=ts, code=code, name=texts.name(item),
                    description=texts.desc(item))


@_declared
def product_category(item: dict[str, Any], texts: Texts, ts: int) -> ProductCategory:
    code = _code(item, "prodcat")
    return ProductCategory(
        id=_item_id("product_category", f"/market/prodcats/{code}", item), source=SOURCE, venue=NO_VENUE,
        symbol=normalize_symbol(code), ts_event=ts, ts_recv=ts, code=code, name=texts.name(item),
        description=texts.desc(item), products=[_code_of(p) or "" for p in item.get("products", [])])

__all__ = [
    "SOURCE",
    "Frame",
    "HistEntry",
    "Malformed",
    "Push",
    "VHistory",
    "VMarketPrice",
    "VNews",
    "cash_price",
    "decode_frame",
    "decode_history",
    "decode_push",
    "entry_key",
    "generic_decoder",
    "history_event",
    "index_price",
    "market_price",
    "news",
    "news_id",
    "nolast_price_id",
    "order_book",
    "push",
    "quote_key",
    "split_updates",
    "to_ns",
]
