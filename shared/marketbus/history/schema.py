"""Storage schema of the history: one table (Arrow schema) per event kind, derived from the contracts.

Every stored row has the event's own fields plus three storage columns:

- ``_stream`` (JetStream stream the message came from: MD, REF, STATUS), ``_seq`` (its stream
  sequence) and ``_idx`` (position of the event in a batch envelope, 0 for a single event).
  ``(ts_event, _stream, _seq, _idx)`` is the total order of the history (queries, cursors).

Column types: ``Decimal`` (and a decimal carried as text, ``invariants.AmountText``...) -> string (the
exact decimal text as published, canonical; cast in DuckDB/SQL as needed, PostgreSQL stores
``numeric``), ``int`` -> int64, ``bool`` -> bool, ``str``/``Literal`` -> string, nested values (book
levels, deliveries, dicts, lists) -> JSON text.

Feed status events (kind ``feed_status``) are stored with ``ts_event`` = their ``ts`` and
``feed_kind`` = their ``kind`` (``kind`` is the partition/table name).

Decoding (the hot path): messages are grouped by kind using the ``Marketbus-Type`` header (no
decoding needed), then

- flat kinds (trade, tick, quote, bar, ...) are parsed by Arrow's C++ JSON reader, many
  messages per call (newline-joined), batch envelopes flattened with ``ListArray.flatten``:
  no per-event Python work;
- kinds with nested fields (books, deltas, cash prices, reference data) are decoded by msgspec
  into "row structs" (Decimal as str, nested values as raw JSON), then turned into columns.

Anything the fast path rejects goes through the contract decoder one message at a time, so a
bad message is isolated (and dead-lettered) without losing its neighbours.
"""

from __future__ import annotations

import io
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any, Union

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from marketbus.contracts import codec, invariants
from marketbus.contracts.base import Event, MarketEvent
from marketbus.contracts.market import MARKET_TYPES
from marketbus.contracts.reference import REFERENCE_TYPES
from marketbus.contracts.status import FeedStatus

FEED_STATUS = "feed_status"
STORAGE_COLUMNS = ("_stream", "_seq", "_idx")
ORDER_COLUMNS = ("ts_event", "_stream", "_seq", "_idx")


def _is_optional(tp: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _raw_factory(factory: Any) -> Callable[[], msgspec.Raw]:
    """A default factory of a nested value, made into its JSON (a row struct holds nested values raw)."""
    return lambda: msgspec.Raw(msgspec.json.encode(factory()))


def _column_kind(tp: Any) -> str:
    """'int' | 'bool' | 'str' | 'decimal' | 'json' for a contract field type."""
    _, inner = _is_optional(tp)
    if invariants.is_decimal_text(inner):  # a decimal carried as its text (MarketPrice): a decimal column
        return "decimal"
    if typing.get_origin(inner) is typing.Annotated:  # an invariant's type, e.g. Price: its Python type
        inner = inner.__origin__
    if inner is int:
        return "int"
    if inner is bool:
        return "bool"
    if inner is str or typing.get_origin(inner) is typing.Literal:
        return "str"
    if inner is Decimal:
        return "decimal"
    return "json"


_ARROW = {"int": pa.int64(), "bool": pa.bool_(), "str": pa.string(), "decimal": pa.string(), "json": pa.string()}
_ROW_TYPES = {"int": int, "bool": bool, "str": str, "decimal": str, "json": msgspec.Raw}


ArrowCheck = Callable[[Any], Any]
"""A vectorized invariant: an Arrow column -> a boolean column, true where a value breaks it
(null where the value is null: nulls are checked against ``required`` apart)."""


def _not_matching(pattern: str) -> ArrowCheck:
    return lambda col: pc.invert(pc.match_substring_regex(col, pattern))


def _longer_than(limit: int) -> ArrowCheck:
    return lambda col: pc.greater(pc.utf8_length(col), limit)


def _negative(col: Any) -> Any:
    return pc.less(col, 0)


# Decimal text the fast path accepts, a subset of what the contracts accept (anything else: NaN,
# "1E+30", 40 digits... goes to the strict path, where the contract decides):
# - plain: at most 18 integer digits (|x| < 1e18) and 20 decimal places (at most 38 digits, no
#   non-zero |x| < 1e-30);
# - Python's scientific form of small values (str(Decimal("0.00000001")) is "1E-8"): one digit 1-9
#   (a 0 there let "0.01E-29", 1e-31, through), at most 20 decimal places, an exponent of -1..-29
#   (so |x| >= 1e-29).
_PLAIN_DECIMAL = r"([0-9]{1,18}(\.[0-9]{1,20})?|[1-9](\.[0-9]{1,20})?E-([1-9]|[12][0-9]))"
_SOME_NON_ZERO_DIGIT = "^[0-9.]*[1-9]"  # in the digits before any exponent


def _not_positive(col: Any) -> Any:
    return pc.or_(_not_matching(f"^{_PLAIN_DECIMAL}$")(col), _not_matching(_SOME_NON_ZERO_DIGIT)(col))


ARROW_CHECKS: dict[str, ArrowCheck | None] = {
    invariants.POSITIVE.name: _not_positive,  # > 0: unsigned, some non-zero digit
    invariants.NON_NEGATIVE.name: _not_matching(f"^{_PLAIN_DECIMAL}$"),  # >= 0: unsigned ("-0" refused)
    invariants.SIGNED.name: _not_matching(f"^-?{_PLAIN_DECIMAL}$"),
    invariants.NANOS.name: _negative,  # the int64 column holds the upper bound
    invariants.COUNT.name: _negative,
    invariants.INT64.name: None,  # the int64 column is the rule
    invariants.TOKEN.name: _not_matching(f"^{invariants.TOKEN_CHARS}{{1,{invariants.MAX_TOKEN}}}$"),
    invariants.SELECTOR.name: _not_matching(f"^{invariants.SELECTOR_CHARS}{{1,{invariants.MAX_TOKEN}}}$"),
    invariants.ID.name: _not_matching(f"^{invariants.ID_CHARS}{{1,{invariants.MAX_ID}}}$"),
    invariants.CLIENT_ID.name: _not_matching(f"^{invariants.ID_CHARS}{{1,{invariants.MAX_CLIENT_ID}}}$"),
    invariants.LABEL.name: _longer_than(invariants.MAX_LABEL),
    invariants.TEXT.name: _longer_than(invariants.MAX_TEXT),
}
"""Every contract :class:`~marketbus.contracts.invariants.Rule`, as an Arrow check (a new rule
must be added here: building the schemas fails on a rule it does not know)."""


class KindSchema:
    """How one event kind is stored."""

    def __init__(self, event_type: type[Event]) -> None:
        self.event_type = event_type
        self.kind: str = str(event_type.__struct_config__.tag)
        self.stream = "STATUS" if event_type is FeedStatus else ("MD" if event_type in MARKET_TYPES else "REF")
        self.fields: list[tuple[str, str, bool]] = []  # (event field, column kind, required)
        row_fields: list[Any] = []
        for f in msgspec.structs.fields(event_type):
            ck = _column_kind(f.type)
            optional, _ = _is_optional(f.type)
            self.fields.append((f.name, ck, f.required))
            rt: Any = _ROW_TYPES[ck]
            if optional:
                rt = rt | None
            if f.required:
                row_fields.append((f.name, rt))
            else:
                default = (
                    f.default
                    if f.default is not msgspec.NODEFAULT
                    else msgspec.field(default_factory=f.default_factory)
                )
                if ck == "decimal" and isinstance(default, Decimal):
                    default = str(default)
                if ck == "json" and default is not None and not isinstance(default, msgspec.Raw):
                    default = msgspec.field(default_factory=_raw_factory(f.default_factory))
                row_fields.append((f.name, rt, default))
        # the row struct mirrors the contract: same tag, same field order, so encoding it gives
        # the same JSON as the contract event (Decimal text kept, nested values kept verbatim)
        self.row_type = msgspec.defstruct(
            f"{event_type.__name__}Row", row_fields, kw_only=True, tag_field="type", tag=self.kind,
        )
        self.nested = event_type is FeedStatus or any(ck == "json" for _, ck, _ in self.fields)
        self.column_of = {
            name: ("feed_kind" if (event_type is FeedStatus and name == "kind") else name) for name, _, _ in self.fields
        }
        cols = [pa.field(self.column_of[name], _ARROW[ck], nullable=not required or ck == "json")
                for name, ck, required in self.fields]
        if event_type is FeedStatus:
            cols.append(pa.field("ts_event", pa.int64()))
        cols += [pa.field("_stream", pa.string()), pa.field("_seq", pa.int64()), pa.field("_idx", pa.int32())]
        self.schema = pa.schema(cols)
        self.required = [self.column_of[name] for name, ck, req in self.fields if req]
        # Arrow JSON reader schema of one event (flat kinds only)
        self.json_schema = pa.schema([pa.field("type", pa.string())] + [
            pa.field(name, _ARROW[ck]) for name, ck, _ in self.fields
        ])
        self.batch_json_schema = pa.schema([
            pa.field("type", pa.string()), pa.field("kind", pa.string()),
            pa.field("events", pa.list_(pa.struct(list(self.json_schema)))),
        ])
        self._defaults = {name: (f.default if f.default is not msgspec.NODEFAULT else None)
                          for f in msgspec.structs.fields(event_type) for name in [f.name]}
        self._nested_decoders: dict[str, msgspec.json.Decoder[Any]] = {}
        # what the fast path checks itself (Arrow reads any string, any int64): the contract's
        # invariants of each flat field, as vectorized checks, and the literal values
        self.decimals = [name for name, ck, _ in self.fields if ck == "decimal"]
        # string fields whose invariant leaves nothing JSON must escape (a charset, a literal)
        self._safe_text: set[str] = set()
        self.literals: dict[str, pa.Array] = {}
        self.checks: list[tuple[str, ArrowCheck]] = []
        hints = typing.get_type_hints(event_type, include_extras=True)
        for name, ck, _ in self.fields:
            rule, _, many, literal = invariants.rule_of(hints[name])
            if literal is not None:
                self.literals[name] = pa.array([str(v) for v in literal], pa.string())
                if all(msgspec.json.encode(str(v)) == b'"' + str(v).encode() + b'"' for v in literal):
                    self._safe_text.add(name)
            elif rule is not None and not many and ck != "json":
                if rule.name in _CHARSET_RULES:
                    self._safe_text.add(name)
                check = ARROW_CHECKS[rule.name]
                if check is not None:
                    self.checks.append((name, check))

    # --- events <-> rows --------------------------------------------------------------------
    def rows_to_table(self, rows: Sequence[Any], stream: str, seqs: Sequence[int], idxs: Sequence[int]) -> pa.Table:
        """Row structs (or contract events) -> an Arrow table of this kind."""
        arrays = []
        for name, ck, _ in self.fields:
            values = [getattr(r, name) for r in rows]
            if ck == "json":
                values = [
                    None
                    if v is None
                    else (bytes(v).decode() if isinstance(v, msgspec.Raw) else msgspec.json.encode(v).decode())
                    for v in values
                ]
            elif ck == "decimal":
                values = [None if v is None else str(v) for v in values]
            arrays.append(pa.array(values, _ARROW[ck]))
        if self.event_type is FeedStatus:
            arrays.append(arrays[[n for n, _, _ in self.fields].index("ts")])
        n = len(rows)
        arrays.append(pa.array([stream] * n, pa.string()) if n else pa.array([], pa.string()))
        arrays.append(pa.array(seqs, pa.int64()))
        arrays.append(pa.array(idxs, pa.int32()))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def table_to_json(self, table: pa.Table, *, canonical_decimals: bool = False) -> list[bytes]:
        """Arrow rows of this kind -> the events' JSON, byte for byte as marketbus published them.

        Column-wise (no Python object per row but the resulting ``bytes``): each field's JSON text
        is made for the whole column (integers and booleans cast, strings quoted, decimals in the
        canonical text of the contracts, nested values verbatim) and the columns are joined. A
        value Arrow cannot render as msgspec does (a string needing escapes, a nested value that
        PostgreSQL's ``jsonb`` reformatted) is rendered by msgspec, for those rows only.
        ``canonical_decimals``: the decimal columns hold canonical text already (what
        ``HistoryReader`` returns), so they are quoted as they are.
        """
        n = table.num_rows
        if n == 0:
            return []
        parts: list[Any] = []
        text = '{"type":' + msgspec.json.encode(self.kind).decode()
        names = set(table.column_names)
        for name, ck, _ in self.fields:
            text += f',"{name}":'
            column = self.column_of[name]
            if column not in names:  # a column the table does not have yet: the contract's default
                text += self._default_json(name, ck)
                continue
            parts.append(text)
            text = ""
            parts.append(self._json_column(name, ck, _combined(table.column(column)), canonical_decimals))
        parts.append(text + "}")
        joined = pc.binary_join_element_wise(*parts, "")
        return joined.cast(pa.binary()).to_pylist()  # type: ignore[no-any-return]

    def _default_json(self, name: str, ck: str) -> str:
        default = self._defaults.get(name)
        if ck == "decimal" and isinstance(default, Decimal):
            return '"' + str(invariants.canonical_decimal(default)) + '"'
        if ck == "json" and default is None:
            factory = next(f.default_factory for f in msgspec.structs.fields(self.event_type) if f.name == name)
            default = None if factory is msgspec.NODEFAULT else factory()
        return codec.encode_value(default).decode()

    def _json_column(self, name: str, ck: str, col: pa.Array, canonical_decimals: bool = False) -> pa.Array:
        """One field's JSON text for every row (``null`` for a null)."""
        if ck == "int":
            out = pc.cast(col, pa.string())
        elif ck == "bool":
            out = pc.if_else(col, "true", "false")
        elif ck == "decimal":
            out = _quote(col if canonical_decimals and pa.types.is_string(col.type) else canonical_decimal_column(col))
        elif ck == "str":
            out = _quote(col)
            escape = (
                None if name in self._safe_text else pc.fill_null(pc.match_substring_regex(col, _NEEDS_ESCAPE), False)
            )
            if escape is not None and pc.any(escape).as_py():
                fixed = [msgspec.json.encode(v).decode() for v in col.filter(escape).to_pylist()]
                out = pc.replace_with_mask(out, escape, pa.array(fixed, pa.string()))
        else:
            out = self._nested_json(name, col)
        return pc.fill_null(out, "null") if out.null_count else out

    def _nested_json(self, name: str, col: pa.Array) -> pa.Array:
        """Nested values are stored as the JSON text that was published (Iceberg, Parquet); a
        ``jsonb`` column (PostgreSQL) gives them back reformatted (spaces, keys reordered): those
        are decoded as the contract's type and encoded again, which is the published text."""
        col = col if pa.types.is_string(col.type) else pc.cast(col, pa.string())
        spaced = pc.fill_null(pc.match_substring_regex(col, r"[,:] "), False)
        if not pc.any(spaced).as_py():
            return col
        dec = self._nested_decoder(name)
        fixed = [codec.encode_value(dec.decode(v)).decode() for v in col.filter(spaced).to_pylist()]
        return pc.replace_with_mask(col, spaced, pa.array(fixed, pa.string()))

    def _nested_decoder(self, name: str) -> msgspec.json.Decoder[Any]:
        dec = self._nested_decoders.get(name)
        if dec is None:
            tp = next(f.type for f in msgspec.structs.fields(self.event_type) if f.name == name)
            dec = self._nested_decoders[name] = msgspec.json.Decoder(tp)
        return dec

    def table_to_events(self, table: pa.Table) -> list[Any]:
        """Arrow rows of this kind -> contract events."""
        dec = codec.decoder_for(self.event_type)
        return [dec.decode(b) for b in self.table_to_json(table)]


_CHARSET_RULES = {invariants.TOKEN.name, invariants.SELECTOR.name, invariants.ID.name, invariants.CLIENT_ID.name}
_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'  # what msgspec escapes in a string (anything else goes out as is)
# the canonical decimal text (invariants.canonical_decimal): plain for |x| >= 1e-6 without trailing
# zeros, "0" for zero; the reduced scientific form below 1e-6
_CANONICAL_DECIMAL = (r"^(0|-?[1-9][0-9]*(\.[0-9]*[1-9])?|-?0\.0{0,5}[1-9]([0-9]*[1-9])?"
                      r"|-?[1-9](\.[0-9]*[1-9])?E-([7-9]|[1-9][0-9]+))$")
_ZERO_TEXT = r"^[-+]?0+(\.0*)?([eE][-+]?[0-9]+)?$"


def _combined(col: Any) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _quote(col: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise('"', col, '"', "")


def canonical_decimal_column(col: Any) -> pa.Array:
    """Exact decimal texts (a string column: what was published, ``numeric::text``, Arrow's
    rendering of a ``decimal(38, 18)``) -> their canonical text
    (:func:`marketbus.contracts.invariants.canonical_decimal`), column-wise: trailing zeros after a
    point trimmed, zeros made ``"0"``; the few texts still not canonical (scientific forms, values
    below 1e-6) are converted one by one."""
    text = _combined(col)
    if pa.types.is_decimal(text.type):
        return _decimal_type_text(text)
    if text.type != pa.string():
        text = pc.cast(text, pa.string())
    if len(text) == 0:
        return text
    pointed = pc.and_(pc.match_substring(text, "."), pc.invert(pc.match_substring(text, "E")))
    if pc.any(pointed).as_py():
        trimmed = pc.utf8_rtrim(pc.utf8_rtrim(text, characters="0"), characters=".")
        text = pc.if_else(pointed, trimmed, text)
    zero = pc.match_substring_regex(text, _ZERO_TEXT)
    if pc.any(zero).as_py():
        text = pc.if_else(zero, "0", text)
    odd = pc.fill_null(pc.invert(pc.match_substring_regex(text, _CANONICAL_DECIMAL)), False)
    if pc.any(odd).as_py():
        fixed = [invariants.canonical_decimal_text(v) for v in text.filter(odd).to_pylist()]
        text = pc.replace_with_mask(text, odd, pa.array(fixed, pa.string()))
    return text


def _decimal_type_text(col: pa.Array) -> pa.Array:
    """A decimal column (e.g. ``decimal(38, 18)``) -> canonical text. Arrow renders it with every
    decimal place (``100.500000000000000000``), or in scientific form below 1e-6 and for zero
    (``1.00000000000E-7``, ``0E-18``): the first are trimmed column-wise, zeros made ``"0"``, the
    few others converted one by one."""
    raw = pc.cast(col, pa.string())
    if len(raw) == 0:
        return raw
    sci = pc.fill_null(pc.match_substring(raw, "E"), False)
    any_sci = pc.any(sci).as_py()
    text = raw
    if col.type.scale > 0:
        text = pc.utf8_rtrim(pc.utf8_rtrim(raw, characters="0"), characters=".")
        if any_sci:
            text = pc.if_else(sci, raw, text)
    zero = pc.fill_null(pc.equal(col, pa.scalar(0, col.type)), False)
    if pc.any(zero).as_py():
        text = pc.if_else(zero, "0", text)
        sci = pc.and_(sci, pc.invert(zero))
        any_sci = pc.any(sci).as_py()
    if any_sci:
        fixed = [invariants.canonical_decimal_text(v) for v in raw.filter(sci).to_pylist()]
        text = pc.replace_with_mask(text, sci, pa.array(fixed, pa.string()))
    return text


SCHEMAS: dict[str, KindSchema] = {
    s.kind: s for s in (KindSchema(t) for t in MARKET_TYPES + REFERENCE_TYPES + (FeedStatus,))
}
KINDS = tuple(SCHEMAS)

# one decoder for any row (single event), and for a batch envelope of rows
_RowUnion: Any = Union[tuple(s.row_type for s in SCHEMAS.values())]  # noqa: UP007 (built at run time)


class BatchRow(msgspec.Struct, kw_only=True, tag_field="type", tag="batch"):
    id: str
    kind: str
    source: str
    venue: str
    symbol: str
    replay: bool = False
    events: list[_RowUnion]


_row_decoder = msgspec.json.Decoder(Union[_RowUnion, BatchRow])  # noqa: UP007 (run-time union)


class Message(msgspec.Struct, gc=False):
    """One JetStream message to store."""

    stream: str
    seq: int
    subject: str
    data: bytes
    type: str | None  # Marketbus-Type header, when present


class Decoded(msgspec.Struct):
    tables: dict[str, list[pa.Table]]
    bad: list[tuple[Message, str]]  # (message, reason)
    events: int = 0


def _validate(table: pa.Table, schema: KindSchema, batch: bool) -> str | None:
    if table.num_rows == 0:
        return None
    types_col = table.column("type")
    if batch:
        if (
            pc.any(pc.not_equal(types_col, "batch")).as_py()
            or pc.any(pc.not_equal(table.column("kind"), schema.kind)).as_py()
        ):
            return "batch of another kind"
    elif pc.any(pc.not_equal(types_col, schema.kind)).as_py() or types_col.null_count:
        return "type tag mismatch"
    return None


def _row_faults(cols: dict[str, Any], schema: KindSchema) -> np.ndarray:
    """Which rows break a contract invariant (a missing required value, a literal out of its
    set, a value out of its rule): those messages go to the strict, per-message path."""
    faults: Any = None
    checks: list[Any] = [pc.is_null(cols[name]) for name, _, required in schema.fields if required]
    checks += [pc.and_(pc.is_valid(cols[name]), pc.invert(pc.is_in(cols[name], value_set=allowed)))
               for name, allowed in schema.literals.items()]
    checks += [check(cols[name]) for name, check in schema.checks]
    for bad in checks:
        bad = pc.fill_null(bad, False)
        faults = bad if faults is None else pc.or_(faults, bad)
    if faults is None:
        return np.zeros(len(next(iter(cols.values()))), bool)
    return np.asarray(pc.fill_null(faults, False).to_numpy(zero_copy_only=False), bool)


def _flat_fast(msgs: list[Message], schema: KindSchema, batch: bool) -> tuple[pa.Table | None, list[Message]]:
    """Parse many messages of one flat kind with Arrow's JSON reader.

    Returns the table of the messages whose every event holds the contract's invariants, and the
    messages to decode one at a time (all of them when the group cannot be parsed at all).
    """
    if any(b"\n" in m.data for m in msgs):
        return None, msgs  # pretty-printed JSON: not one message per line
    buf = b"\n".join(m.data for m in msgs)
    try:
        parsed = pj.read_json(
            io.BytesIO(buf),
            # blocks of ~4 MB (at least two of the longest line) are parsed in parallel
            read_options=pj.ReadOptions(
                block_size=max(4 << 20, 2 * max(len(m.data) for m in msgs) + 2), use_threads=True
            ),
            parse_options=pj.ParseOptions(
                explicit_schema=schema.batch_json_schema if batch else schema.json_schema,
                unexpected_field_behavior="ignore",
                newlines_in_values=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None, msgs
    if parsed.num_rows != len(msgs) or _validate(parsed, schema, batch):
        return None, msgs
    if batch:
        events_col = parsed.column("events")
        if events_col.null_count:
            return None, msgs
        lengths = pc.list_value_length(events_col).to_numpy(zero_copy_only=False)
        flat = (
            pa.concat_arrays([c.flatten() for c in events_col.chunks])
            if events_col.num_chunks
            else pa.array([], events_col.type.value_type)
        )
        cols = {name: flat.field(name) for name in schema.json_schema.names}
        seqs = np.repeat(np.fromiter((m.seq for m in msgs), np.int64, len(msgs)), lengths)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        idxs = (np.arange(int(lengths.sum()), dtype=np.int64) - starts).astype(np.int32)
        msg_of_row = np.repeat(np.arange(len(msgs)), lengths)
        if pc.any(pc.not_equal(cols["type"], schema.kind)).as_py():
            return None, msgs
    else:
        cols = {name: parsed.column(name) for name in schema.json_schema.names}
        seqs = np.fromiter((m.seq for m in msgs), np.int64, len(msgs))
        idxs = np.zeros(len(msgs), np.int32)
        msg_of_row = np.arange(len(msgs))
    faults = _row_faults(cols, schema)
    rejected: list[Message] = []
    if faults.any():
        # a message with one bad event goes to the strict path whole (it dead-letters it)
        bad_msgs = np.unique(msg_of_row[faults])
        rejected = [msgs[i] for i in bad_msgs]
        keep = ~np.isin(msg_of_row, bad_msgs)
        if not keep.any():
            return None, rejected
        mask = pa.array(keep)
        cols = {name: col.filter(mask) for name, col in cols.items()}
        seqs, idxs = seqs[keep], idxs[keep]
    n = len(seqs)
    arrays = []
    for name, ck, required in schema.fields:
        col = cols[name]
        if not required and col.null_count:
            default = schema._defaults.get(name)
            if default is not None:
                if isinstance(default, Decimal):
                    default = str(default)
                col = pc.fill_null(col, pa.scalar(default, _ARROW[ck]))
        arrays.append(col)
    arrays.append(pa.repeat(pa.scalar(msgs[0].stream, pa.string()), n))
    arrays.append(pa.array(seqs, pa.int64()))
    arrays.append(pa.array(idxs, pa.int32()))
    # columns keep the JSON reader's chunks (one per parsed block): no copy
    table = pa.Table.from_arrays([a if isinstance(a, pa.ChunkedArray) else pa.chunked_array([a]) for a in arrays],
                                 schema=schema.schema)
    return table, rejected


def _envelopes(group: list[Message], schema: KindSchema) -> tuple[pa.Table | None, list[Message]]:
    """Batch envelopes of one flat kind: the compiled scan (``batch_decode``) takes those of the
    shape marketbus publishes; the others go through ``_flat_fast`` as before. The rows keep the
    order ``_flat_fast`` gives them (messages in arrival order), which decides which row stays
    when an event id repeats within a flush (``writer._first_per_id``)."""
    from .batch_decode import scan_envelopes  # (it imports this module's rules)

    scanned, others = scan_envelopes(group, schema)
    if scanned is None:
        return _flat_fast(group, schema, True)
    if not others:
        return scanned, []
    table, rejected = _flat_fast(others, schema, True)
    if table is None and rejected is others:
        # the JSON reader refused the group as a whole (a line break, JSON it cannot parse, a
        # type or kind it does not expect): with every message, as before, all go to the contract
        # decoder (their rows then come in sequence order, after the other groups')
        return None, group
    if table is None or table.num_rows == 0:
        return scanned, rejected
    seqs = pa.array([m.seq for m in group], pa.int64())
    if pc.count_distinct(seqs).as_py() != len(group):  # a sequence twice in one flush: as before, all at once
        return _flat_fast(group, schema, True)
    both = pa.concat_tables([scanned, table])
    position = pc.index_in(both["_seq"], value_set=seqs)
    order = pc.sort_indices(pa.table({"m": position, "i": both["_idx"]}), [("m", "ascending"), ("i", "ascending")])
    return both.take(order), rejected


def _strict(msgs: list[Message], out: dict[str, list[tuple[Any, int, int]]], bad: list[tuple[Message, str]]) -> None:
    """Decode one message at a time (exact contract validation), collecting rows per kind."""
    for m in msgs:
        try:
            codec.decode(m.data)  # full contract validation (decimals, literals, nested levels)
            obj = _row_decoder.decode(m.data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            bad.append((m, f"undecodable: {exc}"))
            continue
        if isinstance(obj, BatchRow):
            kind_ok = all(type(e).__struct_config__.tag == obj.kind for e in obj.events)
            if not kind_ok:
                bad.append((m, "undecodable: batch holds events of another kind"))
                continue
            for i, e in enumerate(obj.events):
                out.setdefault(obj.kind, []).append((e, m.seq, i))
        else:
            kind = type(obj).__struct_config__.tag
            out.setdefault(kind, []).append((obj, m.seq, 0))


def _subject_tokens(subject: str) -> dict[str, str]:
    """The columns a subject vouches for: ``md|ref.<kind>.<source>...`` the source (an identity
    may publish ``md.*.<its source>.>``, so any depth), ``status.<service>...`` the service, and
    ``status.<service>.feed.<source>...`` also the source. A feed status on any other status
    subject vouches for no source (``""``, which no event's source equals): it is refused."""
    parts = subject.split(".")
    if parts[0] in ("md", "ref") and len(parts) >= 3:
        return {"source": parts[2]}
    if parts[0] == "status" and len(parts) >= 2:
        return {"service": parts[1], "source": parts[3] if len(parts) >= 4 and parts[2] == "feed" else ""}
    return {}


def _forged(msgs: list[Message], tables: dict[str, list[pa.Table]]) -> dict[int, str]:
    """Sequence -> reason, for the messages holding an event whose source (or service) is not the
    one of the subject it was published on. Publish rights are per subject (``md.*.finx.>`` for the
    FinX ingestor): without this, an identity could store events of another source."""
    by_column: dict[str, tuple[pa.Array, pa.Array]] = {}
    for column in ("source", "service"):
        pairs = [(m.seq, t[column]) for m in msgs if column in (t := _subject_tokens(m.subject))]
        if pairs:
            by_column[column] = (pa.array([p[0] for p in pairs], pa.int64()),
                                 pa.array([p[1] for p in pairs], pa.string()))
    out: dict[int, str] = {}
    for kind_tables in tables.values():
        for table in kind_tables:
            for column, (seqs, tokens) in by_column.items():
                if column not in table.column_names or table.num_rows == 0:
                    continue
                expected = pc.take(tokens, pc.index_in(table["_seq"], value_set=seqs))
                differs = pc.fill_null(pc.not_equal(table[column].cast(pa.string()), expected), False)
                if not pc.any(differs).as_py():
                    continue
                wrong = table.filter(differs)
                for seq, value, want in zip(wrong["_seq"].to_pylist(), wrong[column].to_pylist(),
                                            pc.take(tokens, pc.index_in(wrong["_seq"], value_set=seqs)).to_pylist(),
                                            strict=True):
                    out.setdefault(seq, f"forged: {column} {value!r} of an event is not the subject's {want!r}")
    return out


def decode_messages(msgs: Iterable[Message], stream: str) -> Decoded:
    """Messages of one stream -> Arrow tables per kind (+ the messages that could not be decoded,
    or whose events name another source than their subject)."""
    msgs = list(msgs)
    groups: dict[tuple[str, bool], list[Message]] = {}
    unknown: list[Message] = []
    for m in msgs:
        t = m.type
        if t == "batch":
            # the kind of a batch is the subject's kind token (md.<kind>....)
            parts = m.subject.split(".", 2)
            kind = parts[1] if len(parts) > 2 else ""
            if kind in SCHEMAS:
                groups.setdefault((kind, True), []).append(m)
                continue
        elif t in SCHEMAS:
            groups.setdefault((t, False), []).append(m)
            continue
        unknown.append(m)
    tables: dict[str, list[pa.Table]] = {}
    bad: list[tuple[Message, str]] = []
    rows: dict[str, list[tuple[Any, int, int]]] = {}
    for (kind, batch), group in groups.items():
        schema = SCHEMAS[kind]
        if schema.nested:
            table, rejected = None, group
        elif batch:
            table, rejected = _envelopes(group, schema)
        else:
            table, rejected = _flat_fast(group, schema, batch)
        unknown.extend(rejected)
        if table is not None:
            tables.setdefault(kind, []).append(table)
    if unknown:
        unknown.sort(key=lambda m: (m.stream, m.seq))
        _strict(unknown, rows, bad)
    for kind, items in rows.items():
        schema = SCHEMAS[kind]
        tables.setdefault(kind, []).append(
            schema.rows_to_table([r for r, _, _ in items], stream, [s for _, s, _ in items], [i for _, _, i in items]))
    forged = _forged(msgs, tables)
    if forged:
        seqs = pa.array(sorted(forged), pa.int64())
        tables = {kind: [t.filter(pc.invert(pc.is_in(t["_seq"], value_set=seqs))) for t in ts]
                  for kind, ts in tables.items()}
        bad += [(m, forged[m.seq]) for m in msgs if m.seq in forged]
    events = sum(t.num_rows for ts in tables.values() for t in ts)
    return Decoded(tables=tables, bad=bad, events=events)


def warm_up() -> None:
    """Run the decode path once on sample messages (call at start-up, in a thread).

    pyarrow initialises its compute function registry on the first ``pyarrow.compute`` call
    (~1.5 s on a 2-core machine); without this the first flush after start-up pays it, with
    the JetStream messages of that flush waiting (and their ack_wait running).
    """
    from marketbus.contracts.market import Trade

    trades: list[MarketEvent] = [Trade(id=f"warmup{i}", source="warmup", venue="X", symbol="W", ts_event=i, ts_recv=i,
                    price=Decimal("1"), size=Decimal("1"), side="buy", trade_id=str(i)) for i in range(2)]
    msgs = [Message("MD", 1, "md.trade.warmup.X.W", codec.encode(trades[0]), "trade"),
            Message("MD", 2, "md.trade.warmup.X.W", codec.encode(codec.make_batch(trades)), "batch")]
    decoded = decode_messages(msgs, "MD")
    table = pa.concat_tables(decoded.tables["trade"])
    pc.count_distinct(table.column("id"))
    pc.min_max(table.column("_seq"))
    pc.sort_indices(table.column("id"))
