"""CSV/Parquet column layouts of an export: marketbus's own, TickSupply's built-in ``raw`` and
``normalized``, or a TickSupply custom schema (column specs).

- ``marketbus``: the event's own fields (``id, source, venue, symbol, ts_event, ...``), what the NATS
  export API and the CLI write;
- ``raw`` (the default of the TickSupply-compatible HTTP API) and ``normalized``: exactly the
  TickSupply built-in trade layouts, and for quotes (TickSupply's depth streams) the built-in
  ``book_update`` layouts, a ``bid`` row then an ``ask`` row per quote, and for book deltas the
  same layouts, one row per changed level (``update_id`` = the delta's sequence) (:mod:`marketbus.runtime.tsapi_schemas`): ns integers,
  ISO 8601 with nine fraction digits, exact decimal text, ``buy``/``sell`` (an ``unknown`` aggressor
  side is written empty), and CSV quoted only where a value needs it, as TickSupply writes it;
- ``custom``: a TickSupply column spec over marketbus's events (an event's fields are the
  "message"; nested values such as book levels, kept as JSON text, are read as JSON): ``meta``
  columns are the collection time (``ts_recv``) in the asked unit, ``data`` columns read the dot
  path ``json.path`` of the column's extractor for the datastream's exchange (the venue; ``*``
  matches any), converted to its ``type``; a path that names nothing is written empty. As the
  vendor's docs specify: ``derive`` (``tagged_concat``) synthesises a field before extraction,
  ``unfold`` expands the array at its path (a derived field too) into one row per element, and a
  column's ``transform`` (an SQL expression over ``{v}``, DuckDB's SQL, sandboxed: no file,
  network or extension access) maps the extracted values.

A layout is a function from a history batch (all event fields) to the batch that is written.
"""  # noqa: E501

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marketbus.contracts.subjects import denormalize_symbol
from marketbus.runtime.tsapi_schemas import BUILT_IN_COLUMNS, Content, dot_path, parse_content, scalar_text
from marketbus.runtime.tsapi_schemas import unfolded as shared_unfolded

MARKETBUS = "marketbus"
TICKSUPPLY_LAYOUTS = ("raw", "normalized")
LAYOUTS = (MARKETBUS, *TICKSUPPLY_LAYOUTS, "custom")
# marketbus kinds -> TickSupply stream categories
# (a quote is top of book: TickSupply's depth stream, category book_update)
CATEGORY = {
    "trade": "trade",
    "book": "orderbook",
    "book_delta": "book_update",
    "quote": "book_update",
    "bar": "kline",
    "tick": "ticker",
    "market_price": "ticker",
    "index_price": "ticker",
    "cash_price": "ticker",
    "news": "ticker",
}
# kinds that have the built-in TickSupply layouts
BUILT_IN_KINDS = ("trade", "quote", "book_delta")

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


def _with_columns(rows: pa.RecordBatch, extra: dict[str, pa.Array]) -> pa.RecordBatch:
    """``rows`` plus ``extra`` (an event field of the same name is replaced)."""
    kept = [n for n in rows.schema.names if n not in extra]
    return pa.RecordBatch.from_arrays([*(rows.column(n) for n in kept), *extra.values()], names=[*kept, *extra])


_HEX = np.full(256, -1, np.int8)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def update_ids(ids: pa.Array) -> pa.Array:
    """A quote's ``update_id``: an i64 from its event id (the first 15 hex digits, 60 bits),
    stable across exports and the same on its bid and ask rows (marketbus quotes keep the vendor's
    update id only inside their event id)."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if (
        ids.type == pa.string()
        and len(ids)
        and ids.null_count == 0
        and pc.all(pc.equal(pc.binary_length(ids), 24)).as_py()
    ):
        # vectorised: the ids' UTF-8 bytes as an (n, 24) matrix, 15 hex digits -> one int64
        offsets = np.frombuffer(ids.buffers()[1], np.int32)[ids.offset:ids.offset + len(ids) + 1]
        data = np.frombuffer(ids.buffers()[2], np.uint8)[offsets[0]:offsets[-1]].reshape(len(ids), 24)[:, :15]
        digits = _HEX[data].astype(np.int64)
        if (digits >= 0).all():
            return pa.array(digits @ (16 ** np.arange(14, -1, -1, dtype=np.int64)), pa.int64())
    return pa.array([int(i[:15], 16) for i in ids.to_pylist()], pa.int64())


def quote_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Top-of-book quotes as TickSupply's depth (``book_update``) rows: per quote a ``bid`` row
    (bid price and size) then an ``ask`` row (ask price and size); a side without a price has no
    row. Columns: the quote's own plus ``update_id``, ``side``, ``price``, ``quantity``."""
    n = batch.num_rows
    rows = batch.take(pa.array(np.repeat(np.arange(n, dtype=np.int64), 2)))
    is_bid = pa.array(np.tile(np.array([True, False]), n))
    price = pc.if_else(is_bid, rows.column("bid_price"), rows.column("ask_price"))
    quantity = pc.if_else(is_bid, rows.column("bid_size"), rows.column("ask_size"))
    side = pc.if_else(is_bid, pa.scalar("bid"), pa.scalar("ask"))
    out = _with_columns(rows, {"update_id": update_ids(rows.column("id")), "side": side, "price": price,
                               "quantity": quantity})
    return out.filter(pc.is_valid(price))


def delta_rows(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Book deltas as TickSupply's ``book_update`` rows: one row per changed level, in the
    delta's order (``side`` bid/ask, the level's ``price`` and new ``quantity``, 0 = removed);
    ``update_id`` is the delta's ``sequence`` (the event-id number when it has none)."""
    index: list[int] = []
    sides: list[str] = []
    prices: list[str] = []
    sizes: list[str] = []
    for i, changes in enumerate(batch.column("changes").to_pylist()):
        if isinstance(changes, str):
            changes = json.loads(changes)
        for change in changes or []:
            side, price, size = ((change["side"], change["price"], change["size"]) if isinstance(change, dict)
                                 else change[:3])
            index.append(i)
            sides.append(side)
            prices.append(format(Decimal(str(price)), "f"))
            sizes.append(format(Decimal(str(size)), "f"))
    rows = batch.take(pa.array(index, pa.int64()))
    sequence = pc.cast(rows.column("sequence"), pa.int64())
    update = pc.if_else(pc.is_valid(sequence), sequence, update_ids(rows.column("id")))
    return _with_columns(rows, {"update_id": update, "side": pa.array(sides, pa.string()),
                                "price": pa.array(prices, pa.string()), "quantity": pa.array(sizes, pa.string())})


_BOOK_COLUMNS: dict[str, Callable[[pa.RecordBatch], pa.Array]] = {
    **_TRADE_COLUMNS,
    "update_id": lambda b: b.column("update_id"),
    "side": lambda b: b.column("side"),
    "quantity": lambda b: b.column("quantity"),
}

# kind -> (rows of TickSupply's stream, the built-in columns): quotes are TickSupply's depth rows
_ROWS: dict[str, Callable[[pa.RecordBatch], pa.RecordBatch]] = {"quote": quote_rows, "book_delta": delta_rows}
_COLUMNS = {"trade": _TRADE_COLUMNS, "quote": _BOOK_COLUMNS, "book_delta": _BOOK_COLUMNS}


def built_in(name: str, kind: str) -> Layout:
    if kind not in BUILT_IN_KINDS:
        raise ValueError(
            f"the {name} schema is defined for trade, quote (depth) and book_delta datastreams; use schema "
            f"{MARKETBUS!r} for {kind}"
        )
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


def _per_exchange(rules: dict[str, Any] | None, venue: str) -> Any:
    """A schema's rule for the datastream's exchange (the venue; ``*`` matches any)."""
    if not rules:
        return None
    return rules.get(venue) if venue in rules else rules.get("*")


def _get(obj: Any, path: str) -> Any:
    """A dot path into a message; nested values marketbus history keeps as JSON text (book levels,
    dicts) are read as the JSON they hold."""
    return dot_path(obj, path, json_text=True)


def derived(message: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """``derive``: each rule's synthetic ``field`` added to the message. ``tagged_concat``: the
    arrays at ``arrays[].path`` concatenated in order, each element wrapped as
    ``{tag_field: tag, value_field: element}`` (how TickSupply merges ``bids`` and ``asks``)."""
    for rule in rules:
        out: list[dict[str, Any]] = []
        for source in rule["arrays"]:
            values = _get(message, source["path"])
            if isinstance(values, list):
                out.extend({rule["tag_field"]: source["tag"], rule["value_field"]: v} for v in values)
        message[rule["field"]] = out
    return message


def unfolded(message: dict[str, Any], path: str | None) -> list[dict[str, Any]]:
    """``unfold`` on a history message (nested values may be JSON text)."""
    return shared_unfolded(message, path, json_text=True)


def _value_text(value: Any, kind: str) -> str | None:
    """An extracted value as its CSV text for the column's ``type`` (None = empty)."""
    if value is None:
        return None
    try:
        text = scalar_text(value, kind)
    except (ValueError, ArithmeticError):
        return None
    if text is not None:
        return text
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


_SQL_TYPES = {"i64": "BIGINT", "f64": "DOUBLE", "bool": "BOOLEAN", "string": "VARCHAR"}


def _sql_type(kind: str) -> str:
    return (
        f"DECIMAL(38, {min(int(kind[8:-1]), 38)})" if kind.startswith("decimal(") else _SQL_TYPES.get(kind, "VARCHAR")
    )


def _sql(transform: str, kind: str) -> str:
    """The query of a ``transform`` over table ``t`` (``i`` row order, ``v`` the value as text):
    ``{v}`` is the extracted value typed as the column's ``type``."""
    if ";" in transform:
        raise ValueError("a transform is one SQL expression (no ';')")
    v = f"CAST(NULLIF(v, '') AS {_sql_type(kind)})"
    return f"SELECT CAST(({transform.replace('{v}', v)}) AS VARCHAR) AS out FROM t ORDER BY i"


def _duckdb() -> Any:
    """An in-memory DuckDB that reaches no file, network or extension: a transform is user input."""
    import duckdb

    return duckdb.connect(config={"enable_external_access": False, "autoinstall_known_extensions": False,
                                  "autoload_known_extensions": False, "lock_configuration": True})


def transformed(values: pa.Array, transform: str, kind: str, con: Any = None) -> pa.Array:
    """``transform``: the SQL expression applied to every value (DuckDB's SQL)."""
    con = con or _duckdb()
    table = pa.table({"i": pa.array(range(len(values)), pa.int64()), "v": pc.cast(values, pa.string())})
    con.register("t", table)
    try:
        out = con.sql(_sql(transform, kind)).to_arrow_table().column("out")
    finally:
        con.unregister("t")
    return out.combine_chunks()


def check_transforms(content: Content) -> None:
    """Compile every ``transform`` once (ValueError with DuckDB's reason when one is not valid SQL)."""
    con = None
    for col in content.columns:
        for exchange, ex in (col.data or {}).items():
            if ex.transform is None or ex.json is None:
                continue
            con = con or _duckdb()
            try:
                transformed(pa.array([None], pa.string()), ex.transform, ex.json.type, con)
            except Exception as exc:  # duckdb's errors have no common base besides Exception
                raise ValueError(f"column {col.output_column!r}: data.{exchange}.transform: {exc}") from None


def custom(content: Content, kind: str, venue: str) -> Layout:
    """A TickSupply column spec over marketbus's events (the event's fields are the message).

    Without ``unfold``/``derive`` and with top-level paths the columns are read column-wise;
    otherwise message by message: ``derive`` adds its fields, ``unfold`` makes one row per element,
    then each column reads its dot path. A ``transform`` then maps each column's values (SQL)."""
    unfold = _per_exchange(content.unfold, venue)
    unfold_path = unfold.path if unfold is not None else None
    rules = _per_exchange(content.derive, venue) or []
    extractors = [None if col.meta is not None else _per_exchange(col.data, venue) for col in content.columns]
    nested = bool(unfold_path or rules) or any(
        ex is not None and ex.json is not None and "." in ex.json.path for ex in extractors)

    def columnwise(batch: pa.RecordBatch) -> tuple[list[pa.Array], pa.Array]:
        arrays = []
        for col, ex in zip(content.columns, extractors):
            path = ex.json.path if ex is not None and ex.json is not None else None
            if col.meta is not None:
                arrays.append(batch.column("ts_recv"))
            elif path is None or path not in batch.schema.names:
                arrays.append(pa.nulls(batch.num_rows, pa.string()))
            else:
                assert ex is not None and ex.json is not None
                try:
                    arrays.append(_convert(batch.column(path), ex.json.type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    arrays.append(_text(batch.column(path)))
        return arrays, batch.column("ts_recv")

    def messagewise(batch: pa.RecordBatch) -> tuple[list[pa.Array], pa.Array]:
        recv: list[int] = []
        cells: list[list[str | None]] = [[] for _ in content.columns]
        for row in batch.to_pylist():
            for message in unfolded(derived(row, rules) if rules else row, unfold_path):
                recv.append(row["ts_recv"])
                for cell, col, ex in zip(cells, content.columns, extractors):
                    if col.meta is not None or ex is None or ex.json is None:
                        cell.append(None)
                    else:
                        cell.append(_value_text(_get(message, ex.json.path), ex.json.type))
        recv_array = pa.array(recv, pa.int64())
        arrays = [recv_array if col.meta is not None else pa.array(cell, pa.string())
                  for cell, col in zip(cells, content.columns)]
        return arrays, recv_array

    def layout(batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays, recv = (messagewise if nested else columnwise)(batch)
        con = None
        out = []
        for array, col, ex in zip(arrays, content.columns, extractors):
            if col.meta is not None:
                fmt = col.meta.format
                out.append(_iso(recv) if fmt == "iso8601" else pc.divide(recv, _DIV[fmt]))
            elif ex is not None and ex.transform is not None and ex.json is not None:
                con = con or _duckdb()
                out.append(transformed(array, ex.transform, ex.json.type, con))
            else:
                out.append(array)
        return pa.RecordBatch.from_arrays(out, names=[c.output_column for c in content.columns])

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
