"""FinX TickPlant payloads -> contract events. Pure functions, no I/O.

Wire facts (../shared/vendors/finx.md): a tick row is
``{"pair":"BTC:USD","date":"2022-06-15","time":"21:27:40.453Z","exchange":"COINBASE","price":"21865.01"}``
(price a string, sometimes with float noise, kept exactly); a history reply is an object keyed
"0".."N-1" of rows, unsorted; reference data is ``{"function-call":"secdb", ..., "ref-data":{...}}``.

A tick's identity is (pair, exchange, time, price text): the same tick seen in a snap and in a
history page gets the same id, so it is published once.

Whatever breaks a contract invariant (a date beyond 2262 or before 1970, a price <= 0, NaN or
1e30, an oversized pair) is :class:`Malformed`, never another exception.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from operator import attrgetter
from typing import Any

import msgspec

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.codec import DECODE_ERRORS
from marketbus.contracts.ids import event_id, event_id_of, id_head
from marketbus.contracts.invariants import MAX_TOKEN, MAX_TS_NS, InvariantError
from marketbus.contracts.market import Tick
from marketbus.contracts.reference import Currency, Instrument
from marketbus.contracts.subjects import normalize_symbol

SOURCE = "finx"
NS_PER_S = 1_000_000_000
NS_PER_DAY = 86400 * NS_PER_S
MAX_PAIR = 64  # characters of a pair or an exchange code (real ones have fewer than 30)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


class Malformed(ValueError):
    """A payload that cannot be normalized; the message is the reason (dead-lettered)."""


class VendorError(Exception):
    """The vendor answered with an error frame (``{"error": ...}``)."""

    def __init__(self, message: str, payload: Any = None) -> None:
        super().__init__(message)
        self.payload = payload

    @property
    def auth(self) -> bool:
        return "key" in str(self).lower() or (
            isinstance(self.payload, dict) and self.payload.get("authenticated") is False
        )


class Row(msgspec.Struct, gc=False):
    """A tick row as sent (snap rows also carry ``unix_time``, ignored: ``date``+``time`` rule)."""

    pair: str
    date: str
    time: str
    exchange: str
    price: str


_page_decoder = msgspec.json.Decoder(dict[str, Row])
_row_decoder = msgspec.json.Decoder(Row)
_any_decoder = msgspec.json.Decoder()

# --- small caches (the hot path normalizes ~100k rows/s) -------------------------------------
_DAYS: dict[str, int] = {}
_SYMBOLS: dict[str, str] = {}
_VENUES: dict[str, str] = {}


def day_ns(date_text: str) -> int:
    ns = _DAYS.get(date_text)
    if ns is None:
        try:
            day = dt.date.fromisoformat(date_text)
        except (ValueError, TypeError):
            raise Malformed(f"bad date {date_text!r}") from None
        ns = (day.toordinal() - _EPOCH_ORDINAL) * NS_PER_DAY
        if not 0 <= ns <= MAX_TS_NS - NS_PER_DAY:  # the day's every time must be an int64 ns
            raise Malformed(f"date {date_text!r} is out of range (1970..2262)")
        if len(_DAYS) > 10_000:
            _DAYS.clear()
        _DAYS[date_text] = ns
    return ns


_SECONDS: dict[str, int] = {}  # "HH:MM:SS." (a valid second and its point) -> ns since midnight
_MSZ = {f"{ms:03d}Z": ms * 1_000_000 for ms in range(1000)}  # the wire's "fffZ" tail -> ns


def clock_ns(text: str) -> int:
    """``HH:MM:SS[.fff]Z`` (or ``HH:MM[:SS]``) -> ns since midnight."""
    # Fast path, the wire's own form "21:27:40.453Z": the second "21:27:40." is cached once valid,
    # and the "453Z" tail read from a table of the 1000 valid ones (ASCII digits only).
    sod, ms = _SECONDS.get(text[:9]), _MSZ.get(text[9:])
    if ms is not None:
        if sod is not None:
            return sod + ms
        if text[8:9] == ".":
            sod = _slow_clock_ns(text[:8])
            if len(_SECONDS) > 100_000:
                _SECONDS.clear()
            _SECONDS[text[:9]] = sod
            return sod + ms
    return _slow_clock_ns(text)


def _slow_clock_ns(text: str) -> int:
    t = text[:-1] if text.endswith("Z") else text
    n = len(t)
    try:
        if n < 5 or t[2] != ":":
            raise ValueError
        h, m = int(t[0:2]), int(t[3:5])
        s = frac = 0
        if n > 5:
            if t[5] != ":" or n < 8:
                raise ValueError
            s = int(t[6:8])
            if n > 8:
                if t[8] != "." or n > 18 or n == 9:
                    raise ValueError
                digits = t[9:]
                if not digits.isdigit():
                    raise ValueError
                frac = int(digits) * 10 ** (9 - len(digits))
        if not (0 <= h < 24 and 0 <= m < 60 and 0 <= s < 61):
            raise ValueError
    except ValueError:
        raise Malformed(f"bad time {text!r}") from None
    return ((h * 60 + m) * 60 + s) * NS_PER_S + frac


def wire_ts(date_text: str, time_text: str) -> int:
    return day_ns(date_text) + clock_ns(time_text)


def request_date_time(ts_ns: int) -> tuple[str, str]:
    """The ``date``/``time`` request fields for a start time (ms precision, the wire's)."""
    secs, ms = divmod(ts_ns // 1_000_000, 1000)
    day, sod = divmod(secs, 86400)
    hh, rem = divmod(sod, 3600)
    mm, ss = divmod(rem, 60)
    return dt.date.fromordinal(_EPOCH_ORDINAL + day).isoformat(), f"{hh:02d}:{mm:02d}:{ss:02d}.{ms:03d}"


def _token_of(text: str, what: str) -> str:
    if len(text) > MAX_PAIR:
        raise Malformed(f"{what} {text[:MAX_PAIR]!r}... is longer than {MAX_PAIR} characters")
    token = normalize_symbol(text.upper())
    if len(token) > MAX_TOKEN:
        raise Malformed(f"{what} {text!r} does not fit a subject token")
    return token


def _cached_token(cache: dict[str, str], text: str, what: str) -> str:
    token = cache.get(text)
    if token is None:
        token = _token_of(text, what)
        if len(cache) > 10_000:
            cache.clear()
        cache[text] = token
    return token


def symbol_of(pair: str) -> str:
    if not isinstance(pair, str) or not pair or ":" not in pair:
        raise Malformed(f"bad pair {pair!r}")
    return _cached_token(_SYMBOLS, pair, "pair")


def venue_of(exchange: str) -> str:
    if not isinstance(exchange, str) or not exchange:
        raise Malformed("empty exchange")
    return _cached_token(_VENUES, exchange, "exchange")


def price_of(text: str) -> Decimal:
    try:
        price = Decimal(text)
    except (InvalidOperation, TypeError):
        raise Malformed(f"bad price {text!r}") from None
    if not price.is_finite() or price <= 0:
        raise Malformed(f"bad price {text!r}")
    return price


def tick_id(pair: str, exchange: str, ts_ns: int, price_text: str) -> str:
    """``event_id("finx", "tick", pair, exchange, ts_ns, price_text)``, from the instrument's
    cached head of the text (``id_head``)."""
    return event_id_of(_instrument(pair, exchange)[2], f"{ts_ns}\x1f{price_text}")


# (exchange, pair) -> (venue, symbol, id_head("finx", "tick", pair, exchange): the head of the text
# ``event_id`` hashes, so a tick's id hashes it and its own tail)
_INSTRUMENTS: dict[tuple[str, str], tuple[str, str, bytes]] = {}


def _instrument(pair: str, exchange: str) -> tuple[str, str, bytes]:
    inst = _INSTRUMENTS.get((exchange, pair))
    if inst is None:
        venue, symbol = venue_of(exchange), symbol_of(pair)  # their errors, in this order
        if len(_INSTRUMENTS) > 10_000:
            _INSTRUMENTS.clear()
        inst = _INSTRUMENTS[(exchange, pair)] = (venue, symbol, id_head(SOURCE, "tick", pair, exchange))
    return inst


def tick(row: Row, ts_recv: int, replay: bool = False) -> Tick:
    """One tick row -> Tick (``md.tick.finx.<EXCHANGE>.<BASE-QUOTE>``). The hot path: the caches
    of days, seconds and instruments (venue, symbol, id head) are read inline, a function is
    called only for a value not seen yet; the price's bounds are the contract's own check."""
    text, clock = row.price, row.time
    day, sod, ms = _DAYS.get(row.date), _SECONDS.get(clock[:9]), _MSZ.get(clock[9:])
    if day is None or sod is None or ms is None:
        ts = day_ns(row.date) + clock_ns(clock)
    else:
        ts = day + sod + ms
    inst = _INSTRUMENTS.get((row.exchange, row.pair))
    venue, symbol, head = _instrument(row.pair, row.exchange) if inst is None else inst
    ident = event_id_of(head, f"{ts}\x1f{text}")
    try:
        price = Decimal(text)
    except (InvalidOperation, TypeError):
        raise Malformed(f"bad price {text!r}") from None
    try:
        return Tick(id=ident, source=SOURCE, venue=venue, symbol=symbol, ts_event=ts, ts_recv=ts_recv,
                    replay=replay, price=price)
    except InvariantError as exc:  # a price <= 0 or NaN (its own reason), or e.g. of 1e30
        price_of(text)
        raise Malformed(str(exc)) from None


def _error_of(obj: Any) -> VendorError | None:
    if isinstance(obj, dict) and "error" in obj and isinstance(obj.get("error"), str):
        return VendorError(obj["error"], obj)
    return None


def decode(frame: str | bytes) -> Any:
    """Any reply frame -> Python object; raises Malformed (not JSON) or VendorError (error frame)."""
    try:
        obj = _any_decoder.decode(frame)
    except DECODE_ERRORS as exc:
        raise Malformed(f"not JSON: {exc}") from None
    err = _error_of(obj)
    if err is not None:
        raise err
    return obj


def snap(frame: str | bytes, ts_recv: int) -> Tick | None:
    """A tickSnap reply: one row, or ``{}`` when there is no tick yet."""
    try:
        row = _row_decoder.decode(frame)
    except msgspec.ValidationError:
        obj = decode(frame)
        if obj == {}:
            return None
        try:
            row = msgspec.convert(obj, Row)
        except msgspec.ValidationError as exc:
            raise Malformed(f"bad snap row: {exc}") from None
    except DECODE_ERRORS as exc:
        raise Malformed(f"not JSON: {exc}") from None
    return tick(row, ts_recv)


def history_rows(frame: str | bytes) -> tuple[list[Row], list[tuple[Any, str]]]:
    """A tickHistory reply -> (valid rows, [(bad row, reason)]). Raises Malformed when the frame
    itself is not a history object, VendorError on an error frame."""
    try:
        page = _page_decoder.decode(frame)
        return list(page.values()), []
    except msgspec.ValidationError:
        pass
    except DECODE_ERRORS as exc:
        raise Malformed(f"not JSON: {exc}") from None
    obj = decode(frame)
    if not isinstance(obj, dict):
        raise Malformed(f"history reply is a {type(obj).__name__}, not an object of rows")
    if obj and not any(key.isdigit() for key in obj):
        raise Malformed(f"history reply has no row keys: {sorted(obj)[:5]}")
    rows: list[Row] = []
    bad: list[tuple[Any, str]] = []
    for key, value in obj.items():
        try:
            if not key.isdigit():
                raise Malformed(f"unexpected key {key!r}")
            rows.append(msgspec.convert(value, Row))
        except (msgspec.ValidationError, Malformed) as exc:
            bad.append((value, f"bad history row {key!r}: {exc}"))
    return rows, bad


def history(frame: str | bytes, ts_recv: int, replay: bool = True) -> tuple[list[Tick], list[tuple[Any, str]]]:
    """A tickHistory page -> (ticks sorted by time then exchange, [(bad row, reason)])."""
    rows, bad = history_rows(frame)
    ticks: list[Tick] = []
    append, make = ticks.append, tick
    for row in rows:
        try:
            append(make(row, ts_recv, replay))
        except Malformed as exc:
            bad.append((msgspec.structs.asdict(row), f"bad history row: {exc}"))
    ticks.sort(key=_order)
    return ticks, bad


_order = attrgetter("ts_event", "venue", "id")


# --- reference data ---------------------------------------------------------------------------
def _iso_ns(text: Any) -> int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    ns = int(when.timestamp()) * NS_PER_S + when.microsecond * 1000
    return ns if 0 <= ns <= MAX_TS_NS else None


def currency(obj: Any, ts_recv: int) -> Currency:
    """A referenceData (secdb) reply -> Currency (``ref.currency.finx._.<TICKER>``)."""
    if not isinstance(obj, dict):
        raise Malformed("reference reply is not an object")
    ref = obj.get("ref-data")
    if not isinstance(ref, dict):
        raise Malformed("reference reply has no ref-data object")
    ticker, name, sec_id = ref.get("ticker"), ref.get("security-name"), ref.get("finx-sec-id")
    if not isinstance(ticker, str) or not ticker:
        raise Malformed("ref-data has no ticker")
    if sec_id is not None and not isinstance(sec_id, str):
        raise Malformed("ref-data finx-sec-id is not a string")
    code = ticker.upper()
    ts = _iso_ns(obj.get("request-datestamp")) or ts_recv
    try:
        return Currency(
            id=event_id(SOURCE, "currency", code, sec_id, name), source=SOURCE, venue=NO_VENUE,
            symbol=_token_of(code, "ticker"), ts_event=ts, ts_recv=ts_recv, code=code,
            name=name if isinstance(name, str) else None, vendor_id=sec_id,
        )
    except InvariantError as exc:  # e.g. a name of a megabyte
        raise Malformed(str(exc)) from None


def reference(frame: str | bytes, ts_recv: int) -> Currency:
    """A referenceData reply frame -> Currency; raises Malformed, or VendorError on an error frame."""
    return currency(decode(frame), ts_recv)


def instrument(pair: str, currencies: dict[str, Currency], ts_recv: int) -> Instrument:
    """A configured pair -> Instrument (``ref.instrument.finx._.<BASE-QUOTE>``), enriched with the
    reference data of its two legs."""
    pair = pair.upper()
    base, _, quote = pair.partition(":")
    b, q = currencies.get(base), currencies.get(quote)
    name = f"{b.name if b and b.name else base} / {q.name if q and q.name else quote}"
    attributes = {k: v for k, v in (("base_finx_sec_id", b.vendor_id if b else None),
                                    ("quote_finx_sec_id", q.vendor_id if q else None)) if v}
    try:
        return Instrument(
            id=event_id(SOURCE, "instrument", pair, *sorted(attributes.values())), source=SOURCE, venue=NO_VENUE,
            symbol=symbol_of(pair), ts_event=ts_recv, ts_recv=ts_recv, instrument_type="spot", vendor_symbol=pair,
            name=name, base=base, quote=quote, currency=quote, attributes=attributes,
        )
    except InvariantError as exc:
        raise Malformed(str(exc)) from None
