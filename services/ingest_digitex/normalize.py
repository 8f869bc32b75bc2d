"""Digitex bot API payloads -> contract events. Pure functions, no I/O.

Wire facts (../shared/vendors/digitex.md): unwrapped JSON, decimals as strings (18 places),
timestamps in µs, enums as ints. Market codes like ``FS:BTCUSD`` become the symbol ``FS-BTCUSD``;
the venue is the exchange itself (``DIGITEX``).

Whatever breaks a contract invariant (a book level or trade price <= 0 or -0, NaN, 1e30, a
timestamp beyond int64 ns, an oversized code) is :class:`Malformed`, never another exception.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from operator import gt
from typing import Any

import msgspec

from marketbus.contracts.base import NO_VENUE
from marketbus.contracts.codec import DECODE_ERRORS
from marketbus.contracts.ids import event_id, event_id_of, id_head
from marketbus.contracts.invariants import InvariantError, decimal_in_bounds, decimal_of_text
from marketbus.contracts.market import Bar, BookLevel, BookSnapshot, Trade
from marketbus.contracts.reference import Currency, Instrument, Venue
from marketbus.contracts.subjects import check_token, normalize_symbol

SOURCE = "digitex"
US = 1000  # ns per µs
FUTURES, SPOT = 1, 2
SIDES = {1: "buy", 2: "sell"}


class Malformed(ValueError):
    """A payload that cannot be normalized; the message is the reason (dead-lettered)."""


def venue_token(venue: str) -> str:
    return check_token(venue, "venue")


MAX_CODE = 64  # characters of a market or currency code (real ones have fewer than 20)


def symbol_of(code: str) -> str:
    if not isinstance(code, str) or not code or len(code) > MAX_CODE:
        raise Malformed(f"bad market code {code[:MAX_CODE] if isinstance(code, str) else code!r}")
    return normalize_symbol(code)


# The hot path parses ~100k trades/s whose prices and sizes repeat a lot (a few hundred distinct
# 18-place strings per page): a Decimal is immutable, so the exact value parsed once is reused.
_DECIMALS: dict[str, Decimal] = {}
_DECIMALS_MAX = 50_000


def dec(value: Any, what: str) -> Decimal:
    """The vendor's decimal string -> Decimal, exactly as sent (never through float)."""
    out = _DECIMALS.get(value) if type(value) is str else None
    if out is not None:
        return out
    if not isinstance(value, str):
        raise Malformed(f"{what} is not a decimal string: {value!r}")
    try:
        out = Decimal(value)
    except InvalidOperation:
        raise Malformed(f"{what} is not a decimal: {value!r}") from None
    if not decimal_in_bounds(out):
        raise Malformed(f"{what} is not finite or out of bounds: {value[:60]!r}")
    if len(_DECIMALS) >= _DECIMALS_MAX:
        _DECIMALS.clear()
    _DECIMALS[value] = out
    return out


def _opt_dec(value: Any, what: str) -> Decimal | None:
    return None if value is None else dec(value, what)


_RES = re.compile(r"^(\d*)([DWM]?)$")


def interval_of(resolution: str) -> str | None:
    """OHLCV resolution -> contract interval: ``1`` -> ``1m``, ``60`` -> ``1h``, ``D`` -> ``1d``,
    ``1W`` -> ``1w``, ``1M`` -> ``1mo``; None when it is not a resolution."""
    text = str(resolution).strip().upper()
    match = _RES.match(text)
    if not text or not match:
        return None
    count_text, unit = match.groups()
    if unit == "" and not count_text:
        return None
    count = int(count_text or 1)
    if count <= 0:
        return None
    if unit == "":
        if count % 1440 == 0:
            return f"{count // 1440}d"
        if count % 60 == 0:
            return f"{count // 60}h"
        return f"{count}m"
    return f"{count}{ {'D': 'd', 'W': 'w', 'M': 'mo'}[unit] }"


def resolution_us(resolution: str) -> int:
    """Approximate length of a bar in µs (exact for minutes, days and weeks)."""
    text = str(resolution).strip().upper()
    count_text, unit = _RES.match(text).groups()  # type: ignore[union-attr]
    count = int(count_text or 1)
    minutes = {"": 1, "D": 1440, "W": 7 * 1440, "M": 31 * 1440}[unit]
    return count * minutes * 60_000_000


# --- wire shapes ----------------------------------------------------------------------------
class WCurrency(msgspec.Struct):
    id: int
    code: str
    name: str | None = None
    currency_scale: int | None = None
    withdraw_fee: str | None = None


class WMarket(msgspec.Struct):
    id: int
    code: str
    market_type: int
    base_currency: WCurrency
    quote_currency: WCurrency
    name: str | None = None
    description: str | None = None
    contract_currency: WCurrency | None = None
    tick_size: str | None = None
    tick_price: str | None = None
    tick_scale: int | None = None
    lot_size: str | None = None
    funding: str | None = None


class WTrade(msgspec.Struct, gc=False):
    trade_id: int
    timestamp: int
    price: str
    base_volume: str
    side: int = 0
    quote_volume: str | None = None


class WRecentTrades(msgspec.Struct, gc=False):
    market_id: int
    recent_trades: list[WTrade]
    timestamp: int | None = None


class WOrderBook(msgspec.Struct):
    market_id: int
    timestamp: int
    bids: list[list[str]]
    asks: list[list[str]]


class WBar(msgspec.Struct):
    timestamp: int
    open: str
    high: str
    low: str
    close: str
    volume: str | None = None


class WOHLCV(msgspec.Struct):
    ohlcv: list[WBar]
    market_id: int | None = None
    timestamp: int | None = None
    resolution: str | None = None


class WRateLimit(msgspec.Struct):
    interval: str
    limit: int


class WExchangeInfo(msgspec.Struct):
    currencies: list[WCurrency] = []
    markets: list[WMarket] = []
    server_time: int | None = None
    rate_limits: list[WRateLimit] = []


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decode(payload: bytes | str, shape: Any, what: str) -> Any:
    decoder = _DECODERS.get(shape)
    if decoder is None:
        decoder = _DECODERS[shape] = msgspec.json.Decoder(shape)
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise Malformed(f"bad {what}: {exc}") from None
    except DECODE_ERRORS as exc:
        raise Malformed(f"{what} is not JSON: {exc}") from None


# --- reference ------------------------------------------------------------------------------
def _currency(c: WCurrency, ts_recv: int) -> Currency:
    try:
        return Currency(
            id=event_id(SOURCE, "currency", c.id, c.code, c.name, c.currency_scale), source=SOURCE, venue=NO_VENUE,
            symbol=symbol_of(c.code), ts_event=ts_recv, ts_recv=ts_recv, code=c.code, name=c.name,
            scale=c.currency_scale, vendor_id=str(c.id),
        )
    except InvariantError as exc:
        raise Malformed(f"bad currency: {exc}") from None


def currencies(payload: bytes | str, ts_recv: int) -> list[Currency]:
    """``currency/`` -> Currency events (``ref.currency.digitex._.<CODE>``)."""
    return [_currency(c, ts_recv) for c in _decode(payload, list[WCurrency], "currency list")]


def _instrument(m: WMarket, venue: str, ts_recv: int) -> Instrument:
    futures = m.market_type == FUTURES
    contract = m.contract_currency.code if m.contract_currency else None
    attributes = {k: v for k, v in (("tick_price", m.tick_price), ("funding", m.funding),
                                    ("market_type", str(m.market_type))) if v is not None}
    tick_size, lot_size = _opt_dec(m.tick_size, "tick_size"), _opt_dec(m.lot_size, "lot_size")
    tick_price = _opt_dec(m.tick_price, "tick_price")
    contract_size = tick_price / tick_size if futures and tick_price is not None and tick_size else None
    try:
        return _instrument_event(m, venue, ts_recv, futures, contract, attributes, tick_size, lot_size, contract_size)
    except InvariantError as exc:
        raise Malformed(f"bad market {m.code[:MAX_CODE]!r}: {exc}") from None


def _instrument_event(m: WMarket, venue: str, ts_recv: int, futures: bool, contract: str | None,
                      attributes: dict[str, str], tick_size: Decimal | None, lot_size: Decimal | None,
                      contract_size: Decimal | None) -> Instrument:
    return Instrument(
        id=event_id(SOURCE, "instrument", m.id, m.code, m.tick_size, m.tick_price, m.lot_size, contract),
        source=SOURCE, venue=venue, symbol=symbol_of(m.code), ts_event=ts_recv, ts_recv=ts_recv,
        instrument_type="perpetual" if futures else "spot", vendor_symbol=m.code, name=m.name,
        description=m.description, base=m.base_currency.code, quote=m.quote_currency.code,
        currency=contract or m.quote_currency.code, tick_size=tick_size, lot_size=lot_size,
        contract_size=contract_size.normalize() if contract_size is not None else None,
        contract_unit=contract, vendor_id=str(m.id), attributes=attributes,
    )


def markets(payload: bytes | str, venue: str, ts_recv: int) -> list[Instrument]:
    """``markets/`` -> Instrument events (``ref.instrument.digitex.DIGITEX.<FS-BTCUSD>``)."""
    return [_instrument(m, venue, ts_recv) for m in _decode(payload, list[WMarket], "market list")]


def market_defs(payload: bytes | str) -> list[WMarket]:
    return _decode(payload, list[WMarket], "market list")


def exchange_info(
    payload: bytes | str, venue: str, ts_recv: int
) -> tuple[Venue, list[Currency], list[Instrument], dict[str, int]]:
    """``exchange_info/`` -> the Venue, its currencies and markets, and the advertised rate limits."""
    info: WExchangeInfo = _decode(payload, WExchangeInfo, "exchange_info")
    limits = {r.interval.upper(): r.limit for r in info.rate_limits}
    attributes = {f"rate_limit_{k.lower()}": str(v) for k, v in limits.items()}
    ts = info.server_time * US if info.server_time else ts_recv
    try:
        event = Venue(
            id=event_id(SOURCE, "venue", venue, *sorted(attributes.items())), source=SOURCE, venue=venue, symbol=venue,
            ts_event=ts, ts_recv=ts_recv, name="Digitex", description="Digitex futures exchange (bot API)",
            attributes=attributes,
        )
    except InvariantError as exc:
        raise Malformed(f"bad exchange_info: {exc}") from None
    return (event, [_currency(c, ts_recv) for c in info.currencies],
            [_instrument(m, venue, ts_recv) for m in info.markets], limits)


# --- market data ----------------------------------------------------------------------------
def trade_id(market_id: int, vendor_trade_id: int) -> str:
    """``event_id("digitex", "trade", market_id, trade_id)``, from the market's cached head (hot path)."""
    return event_id_of(_id_head(market_id), str(vendor_trade_id))


_ID_HEADS: dict[int, bytes] = {}


def _id_head(market_id: int) -> bytes:
    """The constant head of a market's trade ids' text (``id_head``), computed once per market."""
    head = _ID_HEADS.get(market_id)
    if head is None:
        if len(_ID_HEADS) >= 10_000:  # market ids are few; bounded all the same
            _ID_HEADS.clear()
        head = _ID_HEADS[market_id] = id_head(SOURCE, "trade", market_id)
    return head


def _parse_dec(value: str, what: str) -> Decimal:
    """The vendor's decimal string -> Decimal, parsed only: for a trade's price and size, whose
    bounds the ``Trade`` contract checks itself (cached by :func:`recent_trades` once it has).
    Parsed by ``decimal_of_text``: the 18-place text comes out in the canonical form the contract
    would give it (same value), so the contract makes no second Decimal."""
    try:
        return decimal_of_text(value)
    except (InvalidOperation, TypeError):
        raise Malformed(f"{what} is not a decimal: {str(value)[:60]!r}") from None


def _remember(text: str, value: Decimal) -> None:
    if len(_DECIMALS) >= _DECIMALS_MAX:
        _DECIMALS.clear()
    _DECIMALS[text] = value


def recent_trades(payload: bytes | str, symbol: str, venue: str, ts_recv: int, after_id: int | None = None,
                  replay: bool = False) -> tuple[list[Trade], list[tuple[Any, str]], int]:
    """``recent_trades/`` -> (trades with trade_id > after_id, oldest first; [(bad row, reason)];
    the oldest trade_id in the reply, or -1 when empty)."""
    page: WRecentTrades = _decode(payload, WRecentTrades, "recent_trades")
    rows = page.recent_trades
    if not rows:
        return [], [], -1
    # The wire lists them newest first: oldest first is then a reversal (sorted otherwise).
    ids = [w.trade_id for w in rows]
    ordered = all(map(gt, ids, ids[1:]))  # strictly decreasing; no Python frame per row
    rows = rows[::-1] if ordered else sorted(rows, key=_by_trade_id)
    oldest = rows[0].trade_id
    if after_id is not None:
        rows = [w for w in rows if w.trade_id > after_id]
    out: list[Trade] = []
    bad: list[tuple[Any, str]] = []
    market_id = page.market_id
    # one Trade per row, the per-page constants hoisted (the hot path: ~1000 rows a page). The
    # decimals are parsed by decimal_of_text, straight to their canonical form (~120 ns each): no
    # cache (its upkeep cost as much as the parse it saved when prices vary, issue #16)
    head, parse, sides, append, id_of = _id_head(market_id), decimal_of_text, SIDES.get, out.append, event_id_of
    for w in rows:
        tid = str(w.trade_id)
        try:
            append(Trade(
                id=id_of(head, tid), source=SOURCE, venue=venue, symbol=symbol, ts_event=w.timestamp * US,
                ts_recv=ts_recv, replay=replay, price=parse(w.price), size=parse(w.base_volume),
                side=sides(w.side, "unknown"),  # type: ignore[arg-type]
                trade_id=tid,
            ))
        except (ArithmeticError, InvariantError) as exc:  # not a decimal; a price <= 0, NaN or 1e30, a
            # timestamp beyond int64 ns: the reason as the careful functions give it
            why = _refusal(w, venue, symbol, ts_recv, replay) if isinstance(exc, InvariantError) else _unparsed(w)
            bad.append((msgspec.structs.asdict(w), f"bad trade {w.trade_id}: {why or exc}"))
    return out, bad, oldest


def _unparsed(w: WTrade) -> Malformed | None:
    """Which decimal of a row does not parse, and why (price first, as the row is read)."""
    try:
        _parse_dec(w.price, "price")
        _parse_dec(w.base_volume, "base_volume")
    except Malformed as exc:
        return exc
    return None


def _refusal(w: WTrade, venue: str, symbol: str, ts_recv: int, replay: bool) -> InvariantError | None:
    """The contract's refusal of a row, with its decimals parsed as the vendor wrote them
    (``Decimal(text)``): the message quotes the value as sent (``Decimal('-1.000000000000000000')``),
    not the shorter text the hot path parsed."""
    try:
        Trade(id="x", source=SOURCE, venue=venue, symbol=symbol, ts_event=w.timestamp * US, ts_recv=ts_recv,
              replay=replay, price=Decimal(w.price), size=Decimal(w.base_volume),
              side=SIDES.get(w.side, "unknown"), trade_id=str(w.trade_id))  # type: ignore[arg-type]
    except InvariantError as exc:
        return exc
    return None


def _by_trade_id(w: WTrade) -> int:
    return w.trade_id


def _levels(rows: list[list[str]], what: str) -> list[BookLevel]:
    levels = []
    for row in rows:
        if len(row) < 2:
            raise Malformed(f"{what} level {row!r} has no size")
        try:
            levels.append(BookLevel(dec(row[0], f"{what} price"), dec(row[1], f"{what} size")))
        except InvariantError as exc:  # a price of -1, 0 or -0; a negative size
            raise Malformed(f"{what} level {row[:2]!r}: {exc}") from None
    return levels


def order_book(payload: bytes | str, symbol: str, venue: str, ts_recv: int) -> BookSnapshot:
    """``order_book/`` -> BookSnapshot (``md.book.digitex.DIGITEX.<FS-BTCUSD>``)."""
    book: WOrderBook = _decode(payload, WOrderBook, "order_book")
    bids, asks = _levels(book.bids, "bid"), _levels(book.asks, "ask")
    bids.sort(key=lambda lv: lv.price, reverse=True)
    asks.sort(key=lambda lv: lv.price)
    try:
        return BookSnapshot(
            id=event_id(SOURCE, "book", book.market_id, book.timestamp), source=SOURCE, venue=venue, symbol=symbol,
            ts_event=book.timestamp * US, ts_recv=ts_recv, bids=bids, asks=asks, quality="realtime",
        )
    except InvariantError as exc:
        raise Malformed(f"bad order_book: {exc}") from None


def bars(payload: bytes | str, market_id: int, resolution: str, symbol: str, venue: str, ts_recv: int,
         replay: bool = False) -> tuple[list[Bar], list[tuple[Any, str]], int | None]:
    """``history/ohlcv/`` -> (Bars oldest first, [(bad bar, reason)], the reply's timestamp in µs)."""
    page: WOHLCV = _decode(payload, WOHLCV, "ohlcv")
    interval = interval_of(resolution)
    if interval is None:
        raise Malformed(f"bad resolution {resolution!r}")
    out: list[Bar] = []
    bad: list[tuple[Any, str]] = []
    for w in page.ohlcv:
        try:
            out.append(Bar(
                id=event_id(SOURCE, "bar", market_id, interval, w.timestamp), source=SOURCE, venue=venue,
                symbol=symbol, ts_event=w.timestamp * US, ts_recv=ts_recv, replay=replay, interval=interval,
                open=dec(w.open, "open"), high=dec(w.high, "high"), low=dec(w.low, "low"),
                close=dec(w.close, "close"), volume=_opt_dec(w.volume, "volume"),
            ))
        except (Malformed, InvariantError) as exc:
            bad.append((msgspec.structs.asdict(w), f"bad bar {w.timestamp}: {exc}"))
    out.sort(key=lambda b: b.ts_event)
    return out, bad, page.timestamp
