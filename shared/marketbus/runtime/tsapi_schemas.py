"""TickSupply export schemas on the wire, shared by the two servers that speak the TickSupply API
(the TickSupply sandbox and the export orchestrator's TickSupply-compatible API).

* the built-in schemas and their CSV column layouts (``raw`` is the default of an export):

  - trade ``raw``: ``exchange_ts_ns, collection_ts_ns, trade_id, price, quantity, side``;
  - trade ``normalized``: ``exchange, instrument, exchange_time, collection_time, trade_id, price,
    quantity, side``;
  - book_update ``raw``: ``exchange_ts_ns, collection_ts_ns, update_id, side, price, quantity``;
  - book_update ``normalized``: ``exchange, instrument, exchange_time, collection_time, update_id,
    side, price, quantity``;

* :data:`CSV_TYPES`, how each built-in column is written: ns integers, ISO 8601 UTC with nine
  fraction digits and ``Z``, exact decimal text, ``buy``/``sell`` (trades) or ``bid``/``ask``;
* the column spec structs of custom schemas (``columns``/``unfold``/``derive``) and their validation;
* the built-in schemas' column specs as ``GET /export-schemas/{id}`` shows them;
* :func:`scalar_text`, how a custom column's ``type`` (``bool``, ``i64``, ``f64``, ``decimal(<scale>)``)
  writes an extracted value;
* :func:`dot_path` and :func:`unfolded`, how a custom column's ``json.path`` and an ``unfold``
  read a native message.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from decimal import Decimal
from typing import Any, Literal

import msgspec

from .tsapi import iso

CATEGORIES = ("trade", "orderbook", "book_update", "quote", "kline", "ticker", "liquidation")
BUILT_IN_NAMES = ("raw", "normalized")
ORIGIN_NS = 1_704_067_200_000_000_000  # 2024-01-01: creation time shown for the built-in schemas

BUILT_IN_COLUMNS: dict[tuple[str, str], list[str]] = {
    ("trade", "raw"): ["exchange_ts_ns", "collection_ts_ns", "trade_id", "price", "quantity", "side"],
    ("trade", "normalized"): ["exchange", "instrument", "exchange_time", "collection_time", "trade_id", "price",
                              "quantity", "side"],
    ("book_update", "raw"): ["exchange_ts_ns", "collection_ts_ns", "update_id", "side", "price", "quantity"],
    ("book_update", "normalized"): ["exchange", "instrument", "exchange_time", "collection_time", "update_id",
                                    "side", "price", "quantity"],
}

# What each built-in CSV column holds: "i64" (integer), "iso8601" (UTC, nine fraction digits, Z),
# "decimal" (exact decimal text, no exponent), "side" (buy/sell or bid/ask), "string".
CSV_TYPES: dict[str, str] = {
    "exchange_ts_ns": "i64", "collection_ts_ns": "i64", "exchange_time": "iso8601", "collection_time": "iso8601",
    "trade_id": "i64", "update_id": "i64", "price": "decimal", "quantity": "decimal", "side": "side",
    "exchange": "string", "instrument": "string",
}


def built_in_id(category: str, name: str) -> str:
    """A built-in schema's id: the same in every process (``sch_`` + 32 hex)."""
    return "sch_" + hashlib.sha256(f"built-in/{category}/{name}".encode()).hexdigest()[:32]


# --- wire structs (validation of user input) ---------------------------------------------------
class Meta(msgspec.Struct, forbid_unknown_fields=True):
    value: Literal["collection_timestamp_ns"]
    format: Literal["ns", "us", "ms", "s", "iso8601"] = "ns"


class JsonPath(msgspec.Struct):
    path: str
    type: str


class Extractor(msgspec.Struct, omit_defaults=True):
    json: JsonPath | None = None
    transform: str | None = None


class Column(msgspec.Struct, omit_defaults=True):
    output_column: str
    meta: Meta | None = None
    data: dict[str, Extractor] | None = None


class Unfold(msgspec.Struct):
    path: str


class Content(msgspec.Struct, omit_defaults=True):
    columns: list[Column]
    unfold: dict[str, Unfold] | None = None
    derive: dict[str, list[dict[str, Any]]] | None = None


DATA_TYPES = ("f64", "i64", "string", "bool")


def parse_content(body: Any) -> Content:
    """Validate schema content (columns/unfold/derive; or its JSON text); raises ValueError with a
    readable reason."""
    try:
        if isinstance(body, (str, bytes)):
            body = msgspec.json.decode(body)
        content = msgspec.convert(body, Content)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:  # Recursion: nested too deep
        raise ValueError(str(exc)) from None
    if not content.columns:
        raise ValueError("columns must not be empty")
    for col in content.columns:
        if (col.meta is None) == (col.data is None):
            raise ValueError(f"column {col.output_column!r}: set exactly one of meta or data")
        for exchange, ex in (col.data or {}).items():
            if ex.json is None:
                raise ValueError(f"column {col.output_column!r}: data.{exchange}.json is required")
            kind = ex.json.type
            if kind not in DATA_TYPES and not (
                kind.startswith("decimal(") and kind.endswith(")") and kind[8:-1].isdigit()
            ):
                raise ValueError(f"column {col.output_column!r}: unknown type {kind!r}")
    for exchange, rules in (content.derive or {}).items():
        for rule in rules:
            where = f"derive.{exchange}"
            if rule.get("op") != "tagged_concat":
                raise ValueError(f"{where}: op must be 'tagged_concat'")
            for name in ("field", "tag_field", "value_field"):
                if not isinstance(rule.get(name), str) or not rule[name]:
                    raise ValueError(f"{where}: {name} (a name) is required")
            arrays = rule.get("arrays")
            if not isinstance(arrays, list) or not arrays or not all(
                    isinstance(a, dict) and isinstance(a.get("path"), str) and isinstance(a.get("tag"), str)
                    for a in arrays):
                raise ValueError(f"{where}: arrays must be a non-empty list of {{path, tag}}")
    return content


# How the built-in columns map onto the exchanges' native messages, as GET /export-schemas/{id} shows.
NATIVE_PATHS: dict[str, dict[str, tuple[str, str]]] = {
    "trade_id": {"binance": ("data.t", "i64"), "coinbase": ("trade_id", "i64"), "kraken": ("data.trade_id", "i64")},
    "price": {"binance": ("data.p", "decimal(18)"), "coinbase": ("price", "decimal(18)"),
              "kraken": ("data.price", "decimal(18)")},
    "quantity": {"binance": ("data.q", "decimal(18)"), "coinbase": ("size", "decimal(18)"),
                 "kraken": ("data.qty", "decimal(18)")},
    "side": {"binance": ("data.m", "bool"), "coinbase": ("side", "string"), "kraken": ("data.side", "string")},
    "exchange_ts_ns": {"binance": ("data.T", "i64"), "coinbase": ("time", "string"),
                       "kraken": ("data.timestamp", "string")},
}


def built_in_spec(category: str, name: str) -> dict[str, Any]:
    """Column specs of a built-in schema, in the API's Column shape."""
    columns: list[dict[str, Any]] = []
    for out in BUILT_IN_COLUMNS[(category, name)]:
        if out.startswith("collection_"):
            fmt = "ns" if out.endswith("_ns") else "iso8601"
            columns.append({"output_column": out, "meta": {"value": "collection_timestamp_ns", "format": fmt}})
            continue
        paths = NATIVE_PATHS.get(out.replace("update_id", "trade_id").replace("exchange_time", "exchange_ts_ns"),
                                 {"binance": (out, "string"), "coinbase": (out, "string"), "kraken": (out, "string")})
        columns.append({"output_column": out,
                        "data": {ex: {"json": {"path": p, "type": t}} for ex, (p, t) in paths.items()}})
    spec: dict[str, Any] = {"columns": columns}
    if category == "trade":
        spec["unfold"] = {"kraken": {"path": "data"}}
    return spec


class SchemaRecord(msgspec.Struct, kw_only=True):
    """An export schema of an account (or a built-in one): its published versions and its draft."""

    id: str
    name: str
    category: str
    is_built_in: bool
    created_ns: int
    versions: list[Any] = []  # Content of custom schemas; built-ins hold their spec dict
    draft: Content | None = None

    def _base(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "stream_category": self.category, "is_built_in": self.is_built_in,
                "created_at": iso(self.created_ns), "version": len(self.versions), "has_draft": self.draft is not None}

    def list_item(self) -> dict[str, Any]:
        return self._base()

    def wire(self, content: Any = None) -> dict[str, Any]:
        content = content if content is not None else (self.versions[-1] if self.versions else None)
        body = msgspec.to_builtins(content) if content is not None else {"columns": []}
        return self._base() | body


def built_in_records(ids: Any = built_in_id) -> list[SchemaRecord]:
    """The built-in schemas, one per (category, name); ``ids(category, name)`` names them."""
    return [SchemaRecord(id=ids(category, name), name=name, category=category, is_built_in=True, created_ns=ORIGIN_NS,
                         versions=[built_in_spec(category, name)]) for category, name in BUILT_IN_COLUMNS]


def scalar_text(value: Any, kind: str) -> str | None:
    """The CSV text of a value extracted for a custom column of type ``kind``: ``bool`` as
    ``true``/``false``, ``i64`` as an integer, ``f64`` as Python's shortest float text, ``decimal(s)``
    as exact plain text rounded to at most ``s`` places; None for any other type (the caller writes
    it as it is). Raises ``ValueError``/``ArithmeticError`` for a value the type cannot hold."""
    if kind == "bool":
        return "true" if value is True or value == "true" else "false"
    if kind == "i64":
        return str(int(value))
    if kind == "f64":
        return repr(float(value))
    if kind.startswith("decimal("):
        scale = int(kind[8:-1])
        number = Decimal(str(value))
        exponent = number.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > scale:
            number = number.quantize(Decimal(1).scaleb(-scale))
        return format(number, "f")  # no exponent notation (Decimal('1E-5') prints as 1E-5)
    return None


def _json_text(obj: Any) -> Any:
    """``obj`` decoded if it is JSON text of an array or object, else ``obj`` (None if undecodable)."""
    if isinstance(obj, str) and obj[:1] in ("[", "{"):
        try:
            return json.loads(obj)
        except ValueError:
            return None
    return obj


def dot_path(obj: Any, path: str, *, json_text: bool = False) -> Any:
    """The value at a dot path into a native message (list elements by index), None where the
    path leads nowhere. ``json_text``: nested values kept as JSON text (marketbus history keeps
    book levels and dicts so) are read as the JSON they hold."""
    for part in path.split("."):
        if json_text:
            obj = _json_text(obj)
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.isdigit() and int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
        if obj is None:
            return None
    if json_text and isinstance(obj, str) and obj[:1] in ("[", "{"):
        with contextlib.suppress(ValueError):
            return json.loads(obj)
    return obj


def unfolded(message: dict[str, Any], path: str | None, *, json_text: bool = False) -> list[dict[str, Any]]:
    """``unfold``: one message per element of the array at ``path``, the element in the array's
    place (a message without that array stays one row, as TickSupply does)."""
    array = dot_path(message, path, json_text=json_text) if path else None
    if not path or not isinstance(array, list):
        return [message]
    head, _, last = path.rpartition(".")
    out = []
    for element in array:
        copy = json.loads(json.dumps(message, default=str))  # deep copy; messages are small
        parent = dot_path(copy, head, json_text=json_text) if head else copy
        if isinstance(parent, dict):
            parent[last] = element
        out.append(copy)
    return out
