"""CSV/Parquet column layouts of an export: marketbus's own, TickSupply's built-in ``raw`` and
``normalized``, or a TickSupply custom schema (column specs).

- ``marketbus``: the event's own fields (``id, source, venue, symbol, ts_event, ...``), what the NATS
  export API and the CLI write;
- ``raw`` (the default of the TickSupply-compatible HTTP API) and ``normalized``: exactly the
  TickSupply built-in trade layouts, and for quotes (TickSupply's depth streams) the built-in
  ``book_update`` layouts, a ``bid`` row then an ``ask`` row per quote (:mod:`marketbus.runtime.tsapi_schemas`): ns integers,
  ISO 8601 with nine fraction digits, exact decimal text, ``buy``/``sell`` (an ``unknown`` aggressor
  side is written empty), and CSV quoted only where a value needs it, as TickSupply writes it;
- ``custom``: a TickSupply column spec over marketbus's events: ``meta`` columns are the collection
  time (``ts_recv``) in the asked unit, ``data`` columns read the event field named by the ``json.path``
  of the column's extractor for the datastream's exchange (the venue; ``*`` matches any), converted
  to its ``type``; a path that names no field is written empty. ``unfold``/``derive``/``transform``
  are stored and echoed but not evaluated (marketbus events are flat).

A layout is a function from a history batch (all event fields) to the batch that is written.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from marketbus.contracts.subjects import denormalize_symbol
from marketbus.runtime.tsapi_schemas import BUILT_IN_COLUMNS, Content, parse_content

MARKETBUS = "marketbus"
TICKSUPPLY_LAYOUTS = ("raw", "normalized")
LAYOUTS = (MARKETBUS, *TICKSUPPLY_LAYOUTS, "custom")
# marketbus kinds -> TickSupply stream categories
# (a quote is top of book: TickSupply's depth stream, category book_update)
CATEGORY = {"trade": "trade", "book": "orderbook", "book_delta": "book_update", "quote": "book_update", "bar": "kline",
            "tick": "ticker", "market_price": "ticker", "index_price": "ticker", "cash_price": "ticker", "news": "ticker"}
# kinds that have the built-in TickSupply layouts
BUILT_IN_KINDS = ("trade", "quote")

Layout = Callable[[pa.RecordBatch], pa.RecordBatch]


def category_of(kind: str) -> str:
    return CATEGORY.get(kind, "ticker")


def _text(col: pa.Array) -> pa.Array:
    return pc.fill_null(pc.cast(col, pa.string()), "")


def _iso(col: pa.Array) -> pa.Array:
    """ns -> ``2024-01-01T00:00:00.123456789Z`` (Arrow's timestamp text with T and Z: 20x strftime)."""
    ts = pc.cast(col, pa.timestamp("ns"))
    text = pc.cast(ts, pa.string())  # "2024-01-01 00:00:00.123456789"
    if pc.all(pc.equal(pc.binary_length(text), 29)).as_py() is not False:
        return pc.binary_replace_slice(pc.binary_replace_slice(text, start=10, stop=11, replacement="T"),
                                       start=29, stop=29, replacement="Z")
    return pc.strftime(ts, format="%Y-%m-%dT%H:%M:%SZ")  # a year outside 1000-9999


def _instrument(col: pa.Array) -> pa.Array:
    dictionary = pc.dictionary_encode(col)
    names = pa.array([denormalize_symbol(s) for s in dictionary.dictionary.to_pylist()], pa.string())
    return pc.take(names, dictionary.indices)


def _side(col: pa.Array) -> pa.Array:
    return pc.if_else(pc.is_in(col, pa.array(["buy", "sell"])), col, pa.scalar("", pa.string()))


_TRADE_COLUMNS: dict[str, Callable[[pa.RecordBatch], pa.Array]] = {
    "exchange_ts_ns": lambda b: b.column("ts_event"),
    "collection_ts_ns": lambda b: b.column("ts_recv"),
    "trade_id": lambda b: _text(b.column("trade_id")),
    "price": lambda b: b.column("price"),
    "quantity": lambda b: b.column("size"),
    "side": lambda b: _side(pc.fill_null(b.column("side"), "")),
    "exchange": lambda b: b.column("venue"),
    "instrument": lambda b: _instrument(b.column("symbol")),
    "exchange_time": lambda b: _iso(b.column("ts_event")),
    "collection_time": lambda b: _iso(b.column("ts_recv")),
}


def update_ids(ids: pa.Array) -> pa.Array:
    """A quote's ``update_id``: an i64 from its event id (the first 15 hex digits, 60 bits),
    stable across exports and the same on its bid and ask rows (marketbus quotes keep the vendor's
    update id only inside their event id)."""
    return pa.array([int(i[:15], 16) for i in ids.to_pylist()], pa.int64())


def quote_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Top-of-book quotes as TickSupply's depth (``book_update``) rows: per quote a ``bid`` row
    (bid price and size) then an ``ask`` row (ask price and size); a side without a price has no
    row. Columns: the quote's own plus ``update_id``, ``side``, ``price``, ``quantity``."""
    n = batch.num_rows
    take = pa.array([i // 2 for i in range(2 * n)], pa.int64())
    rows = batch.take(take)
    is_bid = pa.array([i % 2 == 0 for i in range(2 * n)], pa.bool_())
    price = pc.if_else(is_bid, rows.column("bid_price"), rows.column("ask_price"))
    quantity = pc.if_else(is_bid, rows.column("bid_size"), rows.column("ask_size"))
    side = pc.if_else(is_bid, pa.scalar("bid"), pa.scalar("ask"))
    out = pa.RecordBatch.from_arrays(
        [*rows.columns, update_ids(rows.column("id")), side, price, quantity],
        names=[*rows.schema.names, "update_id", "side", "price", "quantity"])
    return out.filter(pc.is_valid(price))


_BOOK_COLUMNS: dict[str, Callable[[pa.RecordBatch], pa.Array]] = {
    **_TRADE_COLUMNS,
    "update_id": lambda b: b.column("update_id"),
    "side": lambda b: b.column("side"),
    "quantity": lambda b: b.column("quantity"),
}

# kind -> (rows of TickSupply's stream, the built-in columns): quotes are TickSupply's depth rows
_ROWS: dict[str, Callable[[pa.RecordBatch], pa.RecordBatch]] = {"quote": quote_rows}
_COLUMNS = {"trade": _TRADE_COLUMNS, "quote": _BOOK_COLUMNS}


def built_in(name: str, kind: str) -> Layout:
    if kind not in BUILT_IN_KINDS:
        raise ValueError(f"the {name} schema is defined for trade and quote (depth) datastreams; use schema "
                         f"{MARKETBUS!r} for {kind}")
    header = BUILT_IN_COLUMNS[(category_of(kind), name)]
    fns = [_COLUMNS[kind][h] for h in header]
    rows = _ROWS.get(kind)

    def layout(batch: pa.RecordBatch) -> pa.RecordBatch:
        if rows is not None:
            batch = rows(batch)
        return pa.RecordBatch.from_arrays([fn(batch) for fn in fns], names=header)

    return layout


_DIV = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}


def _convert(col: pa.Array, kind: str) -> pa.Array:
    if kind == "i64":
        return pc.cast(col, pa.int64())
    if kind == "f64":
        return pc.cast(col, pa.float64())
    if kind == "bool":
        return pc.cast(col, pa.bool_()) if pa.types.is_boolean(col.type) else pc.equal(_text(col), "true")
    return _text(col)


def custom(content: Content, kind: str, venue: str) -> Layout:
    def layout(batch: pa.RecordBatch) -> pa.RecordBatch:
        names, arrays = [], []
        for col in content.columns:
            names.append(col.output_column)
            if col.meta is not None:
                recv = batch.column("ts_recv")
                fmt = col.meta.format
                arrays.append(_iso(recv) if fmt == "iso8601" else pc.divide(recv, _DIV[fmt]))
                continue
            data = col.data or {}
            ex = data.get(venue) or data.get("*")
            path = ex.json.path if ex is not None and ex.json is not None else None
            if path is None or path not in batch.schema.names:
                arrays.append(pa.nulls(batch.num_rows, pa.string()))
                continue
            assert ex is not None and ex.json is not None
            try:
                arrays.append(_convert(batch.column(path), ex.json.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                arrays.append(_text(batch.column(path)))
        return pa.RecordBatch.from_arrays(arrays, names=names)

    return layout


def layout_for(schema: str, spec: str | None, kind: str, venue: str) -> Layout | None:
    """The layout of an export's ``schema`` for ``kind`` (None = marketbus's own columns)."""
    if schema == MARKETBUS:
        return None
    if schema in TICKSUPPLY_LAYOUTS:
        return built_in(schema, kind)
    if schema == "custom" and spec is not None:
        return custom(parse_content(spec), kind, venue)
    raise ValueError(f"unknown schema {schema!r}")


def csv_text(batch: pa.RecordBatch, header: bool) -> bytes:
    """CSV as TickSupply writes it (Python's csv module, minimal quoting, ``\\n`` line ends)."""
    import pyarrow.csv as pcsv

    out = b""
    if header:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(batch.schema.names)
        out = buf.getvalue().encode()
    sink = pa.BufferOutputStream()
    try:
        pcsv.write_csv(batch, sink, pcsv.WriteOptions(include_header=False, batch_size=8192, quoting_style="none"))
        return out + sink.getvalue().to_pybytes()
    except pa.ArrowInvalid:  # a value holds a comma, quote or line end: quote where needed, like csv does
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        cols = [c.to_pylist() for c in batch.columns]
        for row in zip(*cols):
            writer.writerow(["" if v is None else ("true" if v is True else "false" if v is False else v) for v in row])
        return out + buf.getvalue().encode()


def layout_columns(request: Any, kind: str) -> list[str]:
    """The columns an export request writes for ``kind``."""
    from .history_source import kind_columns

    if request.schema == MARKETBUS:
        known = kind_columns(kind)
        return [c for c in request.columns if c in known] if request.columns else known
    if request.schema in TICKSUPPLY_LAYOUTS:
        return list(BUILT_IN_COLUMNS[(category_of(kind), request.schema)])
    return [c.output_column for c in parse_content(request.schema_spec).columns]
