"""Export schemas: the built-in ones, validation of custom ones, and compiling either into CSV columns.

Built-in schemas (rendered natively for speed, shown through the API with their column specs):

* trade ``raw``: ``exchange_ts_ns, collection_ts_ns, trade_id, price, quantity, side``
  (ns integers, the exchange's trade id, exact decimal strings, ``buy``/``sell`` = aggressor side).
* trade ``normalized``: ``exchange, instrument, exchange_time, collection_time, trade_id, price,
  quantity, side`` (times as ISO 8601 with nanoseconds).
* book_update ``raw``: ``exchange_ts_ns, collection_ts_ns, update_id, side, price, quantity``
  (two rows per update: the best bid then the best ask).
* book_update ``normalized``: ``exchange, instrument, exchange_time, collection_time, update_id,
  side, price, quantity``.

Custom schemas extract ``meta`` (collection timestamp in ns/us/ms/s/iso8601) and ``data`` columns
by dot path from the exchange's native message (Binance combined-stream trade, Coinbase ``match``,
Kraken v2 ``trade``); ``unfold`` expands an array into one row per element. ``transform`` SQL and
``derive`` rules are stored and echoed but not evaluated (the raw value is written).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from marketbus.runtime.tsapi_schemas import (  # noqa: F401 - re-exported for the sandbox modules
    BUILT_IN_COLUMNS,
    BUILT_IN_NAMES,
    CATEGORIES,
    Column,
    Content,
    Extractor,
    JsonPath,
    Meta,
    Unfold,
    built_in_spec,
    dot_path,
    parse_content,
    scalar_text,
    unfolded,
)
from marketbus.vendor.timeparse import ns_iso
from services.sandbox.common.tape import Tick

from .catalog import Datastream, tick_decimal

STREAM_CATEGORY = {"trade": "trade", "depth": "book_update"}


# --- native exchange messages, what custom ``data`` paths address -------------------------------
def _side(tick: Tick) -> str:
    return "buy" if tick.side == 1 else "sell"


def native_message(ds: Datastream, tick: Tick) -> dict[str, Any]:
    price, qty = tick_decimal(tick.price), tick_decimal(tick.size)
    if ds.stream_type != "trade":
        return {"update_id": tick.index, "E": tick.ts_ns // 1_000_000, "bids": [[tick_decimal(_bid(ds, tick)), qty]],
                "asks": [[tick_decimal(_ask(ds, tick)), tick_decimal(_ask_size(ds, tick))]]}
    if ds.exchange == "binance":
        ms = tick.ts_ns // 1_000_000
        return {"stream": f"{ds.symbol.lower()}@trade", "data": {
            "e": "trade", "E": ms, "s": ds.symbol, "t": tick.index, "p": price, "q": qty, "T": ms, "m": tick.side == 2}}
    if ds.exchange == "coinbase":
        return {"type": "match", "trade_id": tick.index, "product_id": ds.symbol, "price": price, "size": qty,
                "side": _side(tick), "time": ns_iso(tick.ts_ns, 6)}
    inst = ds.instrument
    return {"channel": "trade", "type": "update", "data": [{
        "symbol": f"{inst.base}/{inst.quote}", "side": _side(tick), "price": tick.price, "qty": tick.size,
        "ord_type": "market", "trade_id": tick.index, "timestamp": ns_iso(tick.ts_ns, 6)}]}


def _bid(ds: Datastream, tick: Tick) -> Decimal:
    return tick.price - ds.tape.tick_size


def _ask(ds: Datastream, tick: Tick) -> Decimal:
    return tick.price + ds.tape.tick_size


def _ask_size(ds: Datastream, tick: Tick) -> Decimal:
    return ds.tape.size(tick.index + 7_777_777)


# --- rows ------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Record:
    """One source row before column extraction (a depth update yields two: bid and ask)."""

    tick: Tick
    collection_ts: int
    side: str
    price: Decimal
    quantity: Decimal


def records(ds: Datastream, start_ns: int, end_ns: int) -> Iterator[Record]:
    for tick in ds.tape.ticks(start_ns, end_ns):
        coll = ds.collection_ts(tick.index, tick.ts_ns)
        if ds.stream_type == "trade":
            yield Record(tick, coll, _side(tick), tick.price, tick.size)
        else:
            yield Record(tick, coll, "bid", _bid(ds, tick), tick.size)
            yield Record(tick, coll, "ask", _ask(ds, tick), _ask_size(ds, tick))


ColumnFn = Callable[[Datastream, Any], str]  # a Record, or a Record with its native message

_FIELDS: dict[str, ColumnFn] = {
    "exchange_ts_ns": lambda ds, r: str(r.tick.ts_ns),
    "collection_ts_ns": lambda ds, r: str(r.collection_ts),
    "exchange_time": lambda ds, r: ns_iso(r.tick.ts_ns),
    "collection_time": lambda ds, r: ns_iso(r.collection_ts),
    "trade_id": lambda ds, r: str(r.tick.index),
    "update_id": lambda ds, r: str(r.tick.index),
    "price": lambda ds, r: tick_decimal(r.price),
    "quantity": lambda ds, r: tick_decimal(r.quantity),
    "side": lambda ds, r: r.side,
    "exchange": lambda ds, r: ds.exchange,
    "instrument": lambda ds, r: ds.symbol,
}

# --- compiled schema ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CompiledSchema:
    header: list[str]
    columns: list[ColumnFn]
    unfold: dict[str, str]  # exchange -> array path, for custom schemas only
    native: bool  # custom data columns need the native message

    def rows(self, ds: Datastream, start_ns: int, end_ns: int) -> Iterator[list[str]]:
        cols = self.columns
        for rec in records(ds, start_ns, end_ns):
            if not self.native:
                yield [fn(ds, rec) for fn in cols]
                continue
            for message in unfolded(native_message(ds, rec.tick), self.unfold.get(ds.exchange)):
                yield [fn(ds, _WithMessage(rec, message)) for fn in cols]


class _WithMessage:
    """A Record plus the native message a custom data column reads."""

    __slots__ = ("collection_ts", "message", "price", "quantity", "side", "tick")

    def __init__(self, rec: Record, message: dict[str, Any]) -> None:
        self.tick, self.collection_ts, self.side = rec.tick, rec.collection_ts, rec.side
        self.price, self.quantity = rec.price, rec.quantity
        self.message = message


def _convert(value: Any, kind: str) -> str:
    if value is None:
        return ""
    text = scalar_text(value, kind)
    return str(value) if text is None else text


def _meta_fn(fmt: str) -> ColumnFn:
    divisors = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
    if fmt == "iso8601":
        return lambda ds, r: ns_iso(r.collection_ts)
    div = divisors[fmt]
    return lambda ds, r: str(r.collection_ts // div)


def _data_fn(data: dict[str, Extractor]) -> ColumnFn:
    def extract(ds: Datastream, r: Any) -> str:
        ex = data.get(ds.exchange)
        if ex is None or ex.json is None:
            return ""
        return _convert(dot_path(r.message, ex.json.path), ex.json.type)

    return extract


def compile_built_in(category: str, name: str) -> CompiledSchema:
    header = BUILT_IN_COLUMNS[(category, name)]
    return CompiledSchema(header, [_FIELDS[c] for c in header], {}, native=False)


def compile_custom(content: Content) -> CompiledSchema:
    header = [c.output_column for c in content.columns]
    fns = [_meta_fn(c.meta.format) if c.meta is not None else _data_fn(c.data or {}) for c in content.columns]
    unfold = {ex: u.path for ex, u in (content.unfold or {}).items()}
    return CompiledSchema(header, fns, unfold, native=any(c.data is not None for c in content.columns))
