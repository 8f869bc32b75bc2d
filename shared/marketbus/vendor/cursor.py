"""Typed cursors in the ``ingest_state`` KV bucket.

An ingestor may write only keys ``<source>.>`` there (see :mod:`marketbus.security.identities`),
and a KV key must match ``[-/_=.a-zA-Z0-9]+``. :func:`kv_key` builds ``<source>.<part>.<part>``
and escapes each part so that any symbol (``BTC~USD``, ``ES 2026``, ``é``) is a valid key of one
token: a character outside ``[-_a-zA-Z0-9]`` becomes ``=XX`` (its UTF-8 bytes in hex), so keys of
plain symbols stay readable and the encoding is reversible (:func:`kv_token_decode`).

Save a cursor only once the events before it are acked (``await ingestor.flush()`` first): a
restart then resumes without duplicates or holes.
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError

T = TypeVar("T")

_PLAIN = re.compile(r"[-_a-zA-Z0-9]")


def kv_token(text: str) -> str:
    """One KV key token for any text: ``[-_a-zA-Z0-9]`` kept, anything else ``=XX`` per byte."""
    if not text:
        return "="  # an empty part would make an empty token (``a..b``), which is not a key
    return "".join(ch if _PLAIN.fullmatch(ch) else "".join(f"={b:02X}" for b in ch.encode()) for ch in text)


def kv_token_decode(token: str) -> str:
    if token == "=":
        return ""
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "=":
            out.append(int(token[i + 1:i + 3], 16))
            i += 3
        else:
            out.extend(token[i].encode())
            i += 1
    return out.decode()


def kv_key(source: str, *parts: str) -> str:
    """``<source>.<part>...`` with every part a safe token (the source is a plain name)."""
    return ".".join([source, *(kv_token(p) for p in parts)])


class CursorStore(Generic[T]):
    """Cursors of one type (a msgspec Struct, a dict, an int...) under ``<source>.<kind>.<name>``
    (``<source>.<namespace>.<kind>.<name>`` with a namespace).

    >>> trades = CursorStore(kv, "digitex", "trades", TradeCursor)
    >>> await trades.put("BTCUSD-PERP", TradeCursor(trade_id=7, ts_ns=...))
    >>> await trades.get("BTCUSD-PERP")   # -> TradeCursor(...) or None

    A stored value that no longer decodes as ``value_type`` (an older layout) reads as ``None``: the
    ingestor starts that cursor afresh rather than crash. ``kv`` may be set later (``store.kv =``),
    once the bucket is bound.
    """

    def __init__(self, kv: Any, source: str, kind: str, value_type: type[T], namespace: str = "") -> None:
        self.kv = kv
        self.source = source
        self.kind = kind
        self.namespace = namespace  # e.g. one per test or per deployment: <source>.<namespace>.<kind>...
        self.value_type = value_type
        self._decoder = msgspec.json.Decoder(value_type)

    def key(self, name: str | tuple[str, ...]) -> str:
        """The KV key of cursor ``name`` (a tuple names a cursor below another: ``("101", "holes")``)."""
        names = name if isinstance(name, tuple) else (name,)
        if self.namespace:
            return kv_key(self.source, self.namespace, self.kind, *names)
        return kv_key(self.source, self.kind, *names)

    async def get(self, name: str | tuple[str, ...]) -> T | None:
        try:
            entry = await self.kv.get(self.key(name))
        except KeyNotFoundError:
            return None
        if entry is None or not entry.value:
            return None
        try:
            return self._decoder.decode(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

    async def put(self, name: str | tuple[str, ...], value: T) -> None:
        await self.kv.put(self.key(name), msgspec.json.encode(value))
