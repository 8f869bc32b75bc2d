"""Pure functions: TickSupply payloads -> contract events (no I/O, no clock).

Catalog:
- an exchange ``{code, display_name}`` -> :class:`Venue` (``venue = symbol = code``);
- an instrument ``{symbol, base, quote, instrument_type}`` (+ its datastreams) -> :class:`Instrument`,
  the datastream ids in ``attributes`` (``datastream.<stream_type>.<wire_format>`` -> id);
- a datastream ``{datastream_id, exchange, instrument, stream_type, wire_format}`` ->
  :class:`InstrumentClass` with ``class_type="datastream"``, ``vendor_symbol``
  ``<instrument>:<stream_type>:<wire_format>`` and ``vendor_id`` = the datastream id.
Reference ids hash the vendor payload too, so a changed catalog entry is a new message while an
unchanged one re-synced is a JetStream duplicate.

Trades: an export artifact is a gzipped CSV with a header row; the ``raw`` trade schema is
``exchange_ts_ns,collection_ts_ns,trade_id,price,quantity,side``. Prices and sizes are decoded
from the CSV text straight into ``Decimal`` (never through float). A trade's id is
``event_id("ticksupply", "trade", datastream_id, trade_id)`` (the exchange's trade id within the
datastream; rows without one use their timestamps, price, size and side), so re-exporting a window
yields the same ids. Rows that do not parse, or that would break a contract invariant (a price
<= 0, a negative size, NaN, 1e30, a timestamp beyond int64 ns, an oversized trade id), are returned
as :class:`BadRow` (with the raw line) for the dead-letter queue; a file that is not a gzipped CSV
with the needed columns raises :class:`ArtifactError`. Catalog payloads that would not make valid
events raise :class:`MalformedPayload`.
"""

from __future__ import annotations

import copy
import csv
import zlib
from collections.abc import Iterator
from decimal import Decimal
from hashlib import blake2b
from operator import attrgetter
from typing import Annotated, Any, NamedTuple, cast

import msgspec
from isal import igzip
from isal.igzip_lib import IsalError

from marketbus.contracts.codec import DECODE_ERRORS
from marketbus.contracts.ids import event_id, event_id_of, id_head
from marketbus.contracts.invariants import (
    DECIMAL_ACCEPTS,
    DECIMAL_CONTEXT,
    MAX_LABEL,
    MAX_TS_NS,
    NON_NEGATIVE,
    POSITIVE,
    SIGNS,
    Checked,
    InvariantError,
    Label,
    Nanos,
    Rule,
    decimal_in_bounds,
)
from marketbus.contracts.market import Quote, Trade
from marketbus.contracts.reference import Instrument, InstrumentClass, Venue
from marketbus.contracts.subjects import check_token, normalize_symbol

SOURCE = "ticksupply"
TRADE_COLUMNS = ("exchange_ts_ns", "collection_ts_ns", "trade_id", "price", "quantity", "side")
BOOK_COLUMNS = ("exchange_ts_ns", "collection_ts_ns", "update_id", "side", "price", "quantity")
_SIDES = {"buy": "buy", "sell": "sell", "b": "buy", "s": "sell", "BUY": "buy", "SELL": "sell"}
_INSTRUMENT_TYPES = {"spot": "spot", "perpetual": "perpetual", "futures": "future", "future": "future",
                     "option": "option"}


class MalformedPayload(ValueError):
    """A vendor payload that cannot be turned into events (dead-lettered by the app)."""


class ArtifactError(MalformedPayload):
    """An artifact that is not a gzipped CSV with the columns we need."""


# --- datastreams -------------------------------------------------------------------------------
class DatastreamRef(msgspec.Struct, frozen=True):
    datastream_id: int
    exchange: str
    instrument: str
    stream_type: str
    wire_format: str = "json"

    @property
    def venue(self) -> str:
        return check_token(self.exchange.lower(), "venue")

    @property
    def symbol(self) -> str:
        return normalize_symbol(self.instrument)

    @property
    def vendor_symbol(self) -> str:
        return f"{self.instrument}:{self.stream_type}:{self.wire_format}"


def datastream_ref(payload: Any) -> DatastreamRef:
    """A datastream of the catalog; its events (:func:`datastream_event`, and the trades' venue
    and symbol) are checked against the contracts here, once."""
    try:
        ds = msgspec.convert(payload, DatastreamRef)
        ds.venue  # noqa: B018 - validates the exchange code as a subject token
        ds.symbol  # noqa: B018
        datastream_event(ds, 0)
    except (msgspec.ValidationError, ValueError) as exc:  # InvariantError is a ValueError
        raise MalformedPayload(f"bad datastream: {exc}") from None
    return ds


def _content_hash(payload: Any) -> str:
    return blake2b(msgspec.json.encode(payload, order="sorted"), digest_size=6).hexdigest()


# --- reference data ----------------------------------------------------------------------------
def venue_event(exchange: Any, ts: int) -> Venue:
    if not isinstance(exchange, dict) or not isinstance(exchange.get("code"), str) or not exchange["code"]:
        raise MalformedPayload("an exchange needs a code")
    try:
        code = check_token(exchange["code"].lower(), "venue")
    except ValueError as exc:
        raise MalformedPayload(str(exc)) from None
    try:
        return Venue(
            id=event_id(SOURCE, "venue", code, _content_hash(exchange)), source=SOURCE, venue=code, symbol=code,
            ts_event=ts, ts_recv=ts, name=exchange.get("display_name") or None,
        )
    except InvariantError as exc:
        raise MalformedPayload(f"bad exchange: {exc}") from None


def instrument_event(exchange_code: str, instrument: Any, datastreams: list[DatastreamRef], ts: int) -> Instrument:
    if not isinstance(instrument, dict) or not isinstance(instrument.get("symbol"), str) or not instrument["symbol"]:
        raise MalformedPayload("an instrument needs a symbol")
    vendor_symbol = instrument["symbol"]
    try:
        venue = check_token(exchange_code.lower(), "venue")
        symbol = normalize_symbol(vendor_symbol)
    except ValueError as exc:
        raise MalformedPayload(str(exc)) from None
    kind = _INSTRUMENT_TYPES.get(str(instrument.get("instrument_type") or "").lower(), "other")
    attributes = {f"datastream.{d.stream_type}.{d.wire_format}": str(d.datastream_id)
                  for d in sorted(datastreams, key=lambda d: d.datastream_id)}
    if instrument.get("instrument_type") and kind == "other":
        attributes["vendor_instrument_type"] = str(instrument["instrument_type"])
    identity = _content_hash([instrument, sorted(attributes.items())])
    try:
        return Instrument(
            id=event_id(SOURCE, "instrument", venue, vendor_symbol, identity), source=SOURCE, venue=venue,
            symbol=symbol, ts_event=ts, ts_recv=ts, instrument_type=kind, vendor_symbol=vendor_symbol,  # type: ignore[arg-type]
            base=instrument.get("base") or None, quote=instrument.get("quote") or None,
            currency=instrument.get("quote") or None, attributes=attributes,
        )
    except InvariantError as exc:
        raise MalformedPayload(f"bad instrument: {exc}") from None


def datastream_event(ds: DatastreamRef, ts: int) -> InstrumentClass:
    vendor_symbol = ds.vendor_symbol
    return InstrumentClass(
        id=event_id(SOURCE, "datastream", ds.datastream_id, _content_hash(msgspec.structs.asdict(ds))),
        source=SOURCE, venue=ds.venue, symbol=normalize_symbol(vendor_symbol), ts_event=ts, ts_recv=ts,
        class_type="datastream", vendor_symbol=vendor_symbol, name=f"{ds.exchange} {ds.instrument} {ds.stream_type}",
        members=[ds.instrument], underlying=ds.instrument, vendor_ref=str(ds.datastream_id),
        attributes={"datastream_id": str(ds.datastream_id), "stream_type": ds.stream_type,
                    "wire_format": ds.wire_format, "exchange": ds.exchange, "instrument": ds.instrument},
    )


# --- artifacts ---------------------------------------------------------------------------------
def _as_parsed(rule: Rule) -> Rule:
    """A contract decimal rule that leaves the value as parsed (not canonical): a row keeps the
    vendor's decimal (a trade without an id hashes its text); the event made of it is canonical."""
    twin = copy.copy(rule)
    twin.canonical = False
    return twin


_RowPrice = Annotated[Decimal, _as_parsed(POSITIVE)]
_RowSize = Annotated[Decimal, _as_parsed(NON_NEGATIVE)]


class TradeRow(Checked, frozen=True, array_like=True, gc=False):
    """A trade row that keeps the contract invariants of the Trade it makes: checked when decoded
    (compiled, in C), so a slice whose rows all decode needs no other check.

    A slice of the plain form whose rows all have a trade id is read by ``_checks.csv_trade_rows``
    instead: the same rows, but their decimals already in the canonical form the Trade carries
    (no id hashes their text then)."""

    exchange_ts_ns: Nanos
    collection_ts_ns: Nanos
    trade_id: Label
    price: _RowPrice
    quantity: _RowSize
    side: str


class _TradeRowText(msgspec.Struct, array_like=True, gc=False):
    """A trade row as parsed, unchecked: the careful path checks it with :func:`_check` (which
    gives the reason of a bad one) before making it a :class:`TradeRow`."""

    exchange_ts_ns: int
    collection_ts_ns: int
    trade_id: str
    price: Decimal
    quantity: Decimal
    side: str


class BookRow(msgspec.Struct, array_like=True, gc=False):
    exchange_ts_ns: int
    collection_ts_ns: int
    update_id: str
    side: str
    price: Decimal
    quantity: Decimal


class BadRow(NamedTuple):
    line_no: int  # 1-based line number in the file (the header is line 1)
    line: bytes
    reason: str


class ParsedArtifact(NamedTuple):
    rows: list[Any]  # TradeRow | BookRow, file order
    bad: list[BadRow]
    total_lines: int  # data lines (good + bad)


_trade_rows = msgspec.json.Decoder(list[TradeRow], strict=False)
# The compiled hot path (``_checks.c``, its TickSupply block): a plain trade CSV straight into
# TradeRows, and TradeRows into Trades, with no Python call per row. Either returns None for what
# it does not read (then the Python code below does, and gives the reasons of bad rows); absent
# when the extension is not built, or older than its source.
try:  # a build without the TickSupply block (older than its source, or no C extension): Python reads
    from marketbus.contracts import _checks

    _csv_trade_rows: Any = getattr(_checks, "csv_trade_rows", None)
    _trades_of_rows: Any = getattr(_checks, "trades_of_rows", None)
except ImportError:  # pragma: no cover - the extension is built by `make venv`
    _csv_trade_rows = _trades_of_rows = None
_new_trade_row = cast(Any, TradeRow(0, 0, "-", Decimal(1), Decimal(0), "buy")).__copy__
_UNCHECKED: dict[type, type] = {TradeRow: _TradeRowText}
_book_rows = msgspec.json.Decoder(list[BookRow], strict=False)


# (isal's stub declares IsalError an instance; it is the class of a corrupt deflate stream)
_GUNZIP_ERRORS = (OSError, EOFError, zlib.error, cast(type[Exception], IsalError))


def gunzip(data: bytes) -> bytes:
    """The artifact's CSV text. ISA-L's inflate (python-isal), about twice zlib's speed: the
    same bytes and the same refusals as ``gzip.decompress`` (several members, a bad header, a
    truncated or corrupt stream)."""
    try:
        return igzip.decompress(data)
    except _GUNZIP_ERRORS as exc:
        raise ArtifactError(f"not a gzip file: {exc}") from None


def _check(row: Any) -> str | None:
    """Why a parsed row cannot make a valid event (the contract invariants), or None."""
    try:
        if not (decimal_in_bounds(row.price) and row.price > 0):
            return f"price {row.price} must be > 0 and within the contract bounds"
        if not (decimal_in_bounds(row.quantity) and not row.quantity.is_signed()):
            return f"quantity {row.quantity} must be >= 0 and within the contract bounds"
    except ArithmeticError as exc:
        return f"bad number: {exc!r}"
    if not (0 <= row.exchange_ts_ns <= MAX_TS_NS and 0 <= row.collection_ts_ns <= MAX_TS_NS):
        return "timestamps must be int64 ns in 1970..2262"
    ident = row.update_id if type(row) is BookRow else row.trade_id
    if len(ident) > MAX_LABEL:
        return f"id longer than {MAX_LABEL} characters"
    return None


_TINY, _HUGE = Decimal("1e-30"), Decimal("1e18")
_fit = DECIMAL_CONTEXT.plus  # raises for a decimal with too many digits or out of reach


def _rows_fit(rows: list[Any], ident: str) -> bool:
    """Whether every row keeps the contract invariants (the hot path: comparisons only, and
    ``_fit``; a NaN raises in a comparison). False sends the rows to :func:`_check`, one by one."""
    ident_of = attrgetter(ident)
    if _accepts is not None:
        # the compiled contract test, reading each decimal in place: True only for a good one
        # (and False sends the rows to the careful path, which gives the reason)
        accepts, positive, non_negative = _accepts, _POSITIVE, _NON_NEGATIVE
        return all(accepts(r.price, positive) and accepts(r.quantity, non_negative)
                   and 0 <= r.exchange_ts_ns <= MAX_TS_NS and 0 <= r.collection_ts_ns <= MAX_TS_NS
                   and len(ident_of(r)) <= MAX_LABEL for r in rows)
    try:
        return all(_TINY <= r.price < _HUGE and _fit(r.price) is not None
                   and not r.quantity.is_signed() and r.quantity < _HUGE and _fit(r.quantity) is not None
                   and 0 <= r.exchange_ts_ns <= MAX_TS_NS and 0 <= r.collection_ts_ns <= MAX_TS_NS
                   and len(ident_of(r)) <= MAX_LABEL for r in rows)
    except ArithmeticError:
        return False


_accepts = DECIMAL_ACCEPTS
_POSITIVE, _NON_NEGATIVE = SIGNS.get("positive", 0), SIGNS.get("non_negative", 0)


def parse_artifact(data: bytes, stream_type: str = "trade") -> ParsedArtifact:
    """Gunzip and parse a whole artifact of the ``raw`` schema for ``stream_type`` (trade | depth)."""
    rows: list[Any] = []
    bad: list[BadRow] = []
    total = 0
    for piece in iter_artifact(data, stream_type, slice_bytes=None):
        rows.extend(piece.rows)
        bad.extend(piece.bad)
        total += piece.total_lines
    return ParsedArtifact(rows, bad, total)


def iter_artifact(
    data: bytes, stream_type: str = "trade", slice_bytes: int | None = 8 << 20
) -> Iterator[ParsedArtifact]:
    """Parse an artifact slice by slice (``slice_bytes`` of CSV text each, cut at line ends), so a
    large artifact never holds all its rows, let alone all its events, at once. Line numbers in
    :class:`BadRow` count from the top of the file. The same bytes always give the same slices."""
    text = gunzip(data)
    columns, row_type, decoder = (TRADE_COLUMNS, TradeRow, _trade_rows) if stream_type == "trade" else \
        (BOOK_COLUMNS, BookRow, _book_rows)
    newline = text.find(b"\n")
    header_line = text if newline < 0 else text[:newline]
    header = header_line.decode("utf-8", "replace").strip().split(",")
    if [h.strip() for h in header] != list(columns):
        # Columns in another order (or extra columns): the general path maps them by name.
        yield _parse_general(text, columns, row_type)
        return
    body = b"" if newline < 0 else text[newline + 1:]
    body = body.rstrip(b"\n")
    del text
    pos, line_no = 0, 2
    while pos < len(body):
        end = len(body) if slice_bytes is None else body.find(b"\n", pos + slice_bytes)
        if end < 0:
            end = len(body)
        piece = body[pos:end]
        yield _parse_body(piece, columns, row_type, decoder, line_no)
        pos = end + 1
        if pos < len(body):  # (the lines of the last slice need no counting)
            line_no += piece.count(b"\n") + 1


def _parse_body(body: bytes, columns: tuple[str, ...], row_type: type, decoder: Any, first_line: int) -> ParsedArtifact:
    if row_type is TradeRow and _csv_trade_rows is not None:
        # the plain form, every row good, read in C (decimals in their canonical form); None: the
        # paths below
        rows = _csv_trade_rows(body, _new_trade_row, "buy", "sell", MAX_LABEL)
        if rows is not None:
            return ParsedArtifact(rows, [], len(rows))
    # Fast path: a plain CSV (no quoting, no escapes) is turned into one JSON array of arrays of
    # strings and decoded in C straight into typed rows (str -> int, str -> Decimal).
    if b'"' not in body and b"\\" not in body and b"\r" not in body and b"\n\n" not in body:
        try:
            rows = decoder.decode(b'[["' + body.replace(b",", b'","').replace(b"\n", b'"],["') + b'"]]')
        except DECODE_ERRORS:
            pass
        else:
            # Decimal accepts NaN/Infinity, 1e30 and negatives: when a row breaks an invariant,
            # the careful path below finds which.
            # (a TradeRow is checked as it is decoded: a bad one made the decoding fail)
            if row_type is TradeRow or _rows_fit(rows, "update_id"):
                return ParsedArtifact(rows, [], len(rows))
    return _parse_lines(body.split(b"\n"), list(range(len(columns))), row_type, first_line=first_line)


def _parse_general(text: bytes, columns: tuple[str, ...], row_type: type) -> ParsedArtifact:
    lines = text.split(b"\n")
    try:
        header = next(csv.reader([lines[0].decode("utf-8")]))
    except (UnicodeDecodeError, StopIteration, csv.Error) as exc:
        raise ArtifactError(f"bad CSV header: {exc}") from None
    header = [h.strip() for h in header]
    missing = [c for c in columns if c not in header and c != "collection_ts_ns"]
    if missing:
        raise ArtifactError(f"CSV header {header} lacks the columns {missing}")
    index = [header.index(c) if c in header else -1 for c in columns]
    while lines and not lines[-1].strip():
        lines.pop()
    return _parse_lines(lines[1:], index, row_type, first_line=2)


def _parse_lines(lines: list[bytes], index: list[int], row_type: type, first_line: int) -> ParsedArtifact:
    """The careful path: row by row, each bad row kept with its reason."""
    rows: list[Any] = []
    bad: list[BadRow] = []
    total = 0
    for n, raw in enumerate(lines, start=first_line):
        if not raw.strip():
            continue
        total += 1
        try:
            fields = next(csv.reader([raw.decode("utf-8")]))
        except (UnicodeDecodeError, csv.Error, StopIteration) as exc:
            bad.append(BadRow(n, raw, f"undecodable line: {exc}"))
            continue
        if len(fields) < max(index) + 1:
            bad.append(BadRow(n, raw, f"expected {max(index) + 1} fields, got {len(fields)}"))
            continue
        values = [fields[i] if i >= 0 else "0" for i in index]
        row: Any
        try:
            row = msgspec.convert(values, _UNCHECKED.get(row_type, row_type), strict=False)
        except msgspec.ValidationError as exc:
            bad.append(BadRow(n, raw, f"bad field: {exc}"))
            continue
        problem = _check(row)
        if problem:
            bad.append(BadRow(n, raw, problem))
            continue
        rows.append(row if type(row) is row_type else row_type(*msgspec.structs.astuple(row)))
    return ParsedArtifact(rows, bad, total)


# --- rows -> events ----------------------------------------------------------------------------
def trade_event_id(ds: DatastreamRef, row: TradeRow) -> str:
    if row.trade_id:
        return event_id(SOURCE, "trade", ds.datastream_id, row.trade_id)
    return event_id(SOURCE, "trade", ds.datastream_id, "", row.exchange_ts_ns, row.collection_ts_ns, row.price,
                    row.quantity, row.side)


_TEMPLATE_ID, _ONE = "0" * 24, Decimal(1)


def trades(ds: DatastreamRef, rows: list[TradeRow], ts_recv: int, replay: bool = False) -> list[Trade]:
    """Trade events of parsed rows (file order). The hot path: one pass, the hashing inlined;
    compiled when the rows all have trade ids (each event a copy of the instrument's template,
    checked by ``Trade``'s own ``__post_init__``, so the same events as ``Trade(...)`` makes)."""
    venue, symbol = ds.venue, ds.symbol
    # event_id(SOURCE, "trade", ds_id, trade_id): the constant head once, the trade id per row
    head, id_of, sides = id_head(SOURCE, "trade", ds.datastream_id), event_id_of, _SIDES
    if _trades_of_rows is not None and rows:
        template = Trade(id=_TEMPLATE_ID, source=SOURCE, venue=venue, symbol=symbol, ts_event=0, ts_recv=ts_recv,
                         replay=replay, price=_ONE, size=_ONE, side="buy", trade_id=None)
        made = _trades_of_rows(rows, TradeRow, head, cast(Any, template).__copy__, cast(Any, Trade).__post_init__,
                               sides, "unknown")
        if made is not None:
            return cast(list[Trade], made)
    out: list[Trade] = []
    append = out.append
    for r in rows:
        tid: str | None = r.trade_id
        side = r.side
        if tid:
            ident = id_of(head, tid)
        else:
            ident, tid = trade_event_id(ds, r), None
        if side != "buy" and side != "sell":
            side = sides.get(side, "unknown")
        append(Trade(id=ident, source=SOURCE, venue=venue, symbol=symbol, ts_event=r.exchange_ts_ns, ts_recv=ts_recv,
                     replay=replay, price=r.price, size=r.quantity, side=side, trade_id=tid))  # type: ignore[arg-type]
    return out


def quotes(ds: DatastreamRef, rows: list[BookRow], ts_recv: int, replay: bool = False) -> list[Quote]:
    """Top-of-book quotes from a depth stream's ``raw`` rows (a bid row and an ask row per update)."""
    venue, symbol = ds.venue, ds.symbol
    out: list[Quote] = []
    pending: dict[str, Any] = {}
    current: str | None = None

    def flush() -> None:
        if current is None:
            return
        bid, ask = pending.get("bid"), pending.get("ask")
        first = bid or ask
        if first is None:  # an update id without a row: nothing to quote
            return
        out.append(Quote(
            id=event_id(SOURCE, "quote", ds.datastream_id, current), source=SOURCE, venue=venue, symbol=symbol,
            ts_event=first.exchange_ts_ns, ts_recv=ts_recv, replay=replay,
            bid_price=bid.price if bid else None, bid_size=bid.quantity if bid else None,
            ask_price=ask.price if ask else None, ask_size=ask.quantity if ask else None,
        ))

    for r in rows:
        if r.update_id != current:
            flush()
            pending = {}
            current = r.update_id
        side = r.side.lower()
        pending["bid" if side in ("bid", "buy", "b") else "ask"] = r
    flush()
    return out


def events_of(ds: DatastreamRef, rows: list[Any], ts_recv: int, replay: bool = False) -> list[Any]:
    """Events of rows from :func:`iter_artifact` (which keeps only rows that make valid events;
    should one not, the artifact is refused as a whole: :class:`ArtifactError`)."""
    try:
        return trades(ds, rows, ts_recv, replay) if ds.stream_type == "trade" else quotes(ds, rows, ts_recv, replay)
    except InvariantError as exc:
        raise ArtifactError(f"a row breaks a contract invariant: {exc}") from None
