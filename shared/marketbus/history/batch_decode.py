"""Batch envelopes of a flat kind -> an Arrow table, by the compiled scanner (``_checks.batch_columns``).

Arrow's JSON reader plus the vectorized invariant checks (``schema._flat_fast``) cost about
1.5 µs an event, more than the Iceberg append of the same rows. The envelopes marketbus
publishes all have one shape (msgspec's output: the contract's key order, no whitespace, no
escapes), so a compiled scan of that shape can write the events straight into Arrow column
buffers (offsets + bytes for text and decimal text, int64 for ints, bitmaps for bools and
nulls), wrapped here without a copy (``pyarrow.Array.from_buffers``).

The scanner checks every field's invariant itself, the rules of ``schema.ARROW_CHECKS``
(charsets and lengths, literals, decimal text, int ranges, required values), and it checks the
envelope against the ``Batch`` contract. It only ever ACCEPTS: a message of any other shape
(other key order, whitespace, escapes, non-ASCII text, a value a check refuses, a null where the
contract has a non-null default) is returned untouched and decoded the usual way. So what it
accepts is what both the fast path and the contract decoder accept, with the same rows, and
everything else meets the very path it met before (tests/history/test_batch_decode.py checks
both on many shapes).

A kind is scanned only when every field of it is known here (``spec_of`` returns None
otherwise: a new rule or a nested field leaves that kind to the general path).
"""

from __future__ import annotations

import re
import typing
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from marketbus.contracts import invariants

try:  # a build without the scanner (older than its source, or no C extension): the general path
    from marketbus.contracts import _checks

    _SCAN: Any = getattr(_checks, "batch_columns", None)
except ImportError:  # pragma: no cover - the extension is built by `make venv`
    _SCAN = None

ENABLED = True
"""Switch for tests and A/B benchmarks: False sends every envelope to the general path."""

# the scanner's column types and rules (_checks.c, "History batch envelopes")
BC_STR, BC_INT, BC_BOOL = 0, 1, 2
BR_NONE, BR_CHARS, BR_LEN, BR_POSITIVE, BR_NONNEG, BR_SIGNED, BR_INT_NONNEG, BR_INT64, BR_LITERAL = range(9)

_DECIMAL_RULES = {invariants.POSITIVE.name: BR_POSITIVE, invariants.NON_NEGATIVE.name: BR_NONNEG,
                  invariants.SIGNED.name: BR_SIGNED}
_CHAR_RULES = {r.name for r in (invariants.TOKEN, invariants.SELECTOR, invariants.ID, invariants.CLIENT_ID)}
_LENGTH_RULES = {r.name for r in (invariants.LABEL, invariants.TEXT)}
_INT_RULES = {r.name for r in (invariants.NANOS, invariants.COUNT, invariants.INT64)}


def _charset(pattern: str) -> bytes:
    """A regex character class -> 256 bytes, 1 for each ASCII character it matches."""
    rx = re.compile(pattern)
    return bytes(1 if i < 128 and rx.fullmatch(chr(i)) else 0 for i in range(256))


ID_CHARS = _charset(invariants.ID_CHARS)
TOKEN_CHARS = _charset(invariants.TOKEN_CHARS)


def _plain_json(text: str) -> bool:
    """Text msgspec writes as is between quotes (no escapes), ASCII."""
    return text.isascii() and msgspec.json.encode(text) == b'"' + text.encode() + b'"'


class ScanSpec(msgspec.Struct, frozen=True):
    kind: bytes
    fields: list[tuple[Any, ...]]  # the scanner's field tuples, in wire order
    ctypes: list[int]


def spec_of(schema: Any) -> ScanSpec | None:
    """The scanner's description of one flat kind (``schema.KindSchema``), or None when a field is
    of a form it does not know (that kind keeps the general path)."""
    event_type = schema.event_type
    if schema.nested or not _plain_json(schema.kind):
        return None
    hints = typing.get_type_hints(event_type, include_extras=True)
    struct_fields = {f.name: f for f in msgspec.structs.fields(event_type)}
    config = event_type.__struct_config__
    if config.omit_defaults or config.tag_field != "type":
        return None
    out: list[tuple[Any, ...]] = []
    ctypes: list[int] = []
    for name, ck, required in schema.fields:
        f = struct_fields[name]
        if f.encode_name != name or not _plain_json(name):
            return None
        rule, optional, many, literal = invariants.rule_of(hints[name])
        if many or ck == "json":
            return None
        # a null is taken only where the contract decodes one to None and the fast path keeps it
        nullable = int(optional and not required and f.default is None)
        charset: bytes | None = None
        literals: tuple[bytes, ...] | None = None
        lo = hi = 0
        if ck == "bool":
            ctype, code = BC_BOOL, BR_NONE
            if rule is not None or literal is not None:
                return None
        elif ck == "int":
            ctype = BC_INT
            if literal is not None:
                return None
            if rule is None:
                code = BR_INT64
            elif rule.name in _INT_RULES and rule.kernel is not None:
                _, lo_v, hi_v = rule.kernel
                if (lo_v, hi_v) == (0, invariants.MAX_INT64):
                    code = BR_INT_NONNEG
                elif (lo_v, hi_v) == (invariants.MIN_INT64, invariants.MAX_INT64):
                    code = BR_INT64
                else:
                    return None
            else:
                return None
        elif ck in ("str", "decimal"):
            ctype = BC_STR
            if literal is not None:
                values = [str(v) for v in literal]
                if not all(_plain_json(v) for v in values):
                    return None
                code, literals = BR_LITERAL, tuple(v.encode() for v in values)
            elif rule is None:
                if ck == "decimal":  # a decimal without a known rule: the contract decides
                    return None
                code = BR_NONE
            elif rule.name in _DECIMAL_RULES:
                code = _DECIMAL_RULES[rule.name]
            elif rule.name in _CHAR_RULES and rule.kernel is not None and ck == "str":
                _, chars, lo, hi = rule.kernel
                code, charset = BR_CHARS, _charset(chars)
            elif rule.name in _LENGTH_RULES and rule.kernel is not None and ck == "str":
                code, hi = BR_LEN, rule.kernel[1]
            else:
                return None
        else:
            return None
        out.append((f',"{name}":'.encode(), ctype, nullable, code, lo, hi, charset, literals))
        ctypes.append(ctype)
    return ScanSpec(kind=schema.kind.encode(), fields=out, ctypes=ctypes)


_SPECS: dict[str, ScanSpec | None] = {}


def _spec(schema: Any) -> ScanSpec | None:
    kind = schema.kind
    if kind not in _SPECS:
        _SPECS[kind] = spec_of(schema)
    return _SPECS[kind]


_ARROW_TYPES = {BC_STR: pa.string(), BC_INT: pa.int64(), BC_BOOL: pa.bool_()}


def scan_envelopes(msgs: list[Any], schema: Any) -> tuple[pa.Table | None, list[Any]]:
    """Batch envelopes of one flat kind -> (the table of the ones scanned, the others), or
    ``(None, msgs)`` when the scanner is not there or does not know this kind."""
    spec = _spec(schema) if (_SCAN is not None and ENABLED) else None
    if spec is None or not msgs:
        return None, msgs
    accepted, rows, msg_of_row, idx, columns = _SCAN([m.data for m in msgs], spec.kind, ID_CHARS, TOKEN_CHARS,
                                                      spec.fields)
    taken = np.frombuffer(accepted, np.bool_)
    rejected = msgs if not taken.any() else [m for m, ok in zip(msgs, taken, strict=True) if not ok]
    if not taken.any():
        return None, msgs
    arrays: list[pa.Array] = []
    for ctype, buffers in zip(spec.ctypes, columns, strict=True):
        valid, *data = buffers
        arrays.append(pa.Array.from_buffers(
            _ARROW_TYPES[ctype], rows,
            [None if valid is None else pa.py_buffer(valid), *(pa.py_buffer(b) for b in data)]))
    seqs = np.fromiter((m.seq for m in msgs), np.int64, len(msgs))
    rows_msg = np.frombuffer(msg_of_row, np.int32)
    arrays.append(pa.repeat(pa.scalar(msgs[0].stream, pa.string()), rows))
    arrays.append(pa.array(seqs[rows_msg], pa.int64()))
    arrays.append(pa.Array.from_buffers(pa.int32(), rows, [None, pa.py_buffer(idx)]))
    return pa.Table.from_arrays(arrays, schema=schema.schema), rejected
