"""Which history a read selects: :class:`Selector` (kind, source, venue, symbol patterns) and
:class:`Cursor` (a position in the history order, reads resume strictly after it)."""

from __future__ import annotations

import base64
import fnmatch
from typing import NamedTuple

import msgspec

from marketbus.contracts.jobs import StreamSelector

from .schema import KINDS


class Selector(msgspec.Struct, frozen=True):
    """Stream selector; each part is an fnmatch pattern (``*`` = any)."""

    kind: str = "*"
    source: str = "*"
    venue: str = "*"
    symbol: str = "*"

    @classmethod
    def of(cls, selector: StreamSelector | Selector | None = None, **parts: str) -> Selector:
        if selector is not None:
            parts = {"kind": selector.kind, "source": selector.source, "venue": selector.venue,
                     "symbol": selector.symbol, **parts}
        return cls(**{k: (v or "*") for k, v in parts.items()})

    @classmethod
    def parse(cls, text: str) -> Selector:
        """``kind.source.venue.symbol`` (missing trailing parts = ``*``), e.g. ``trade.finx.*.BTC-USD``."""
        parts = (text.split(".") + ["*"] * 4)[:4] if text else ["*"] * 4
        return cls(*[p or "*" for p in parts])

    def kinds(self) -> list[str]:
        return sorted(k for k in KINDS if fnmatch.fnmatchcase(k, self.kind))

    def match(self, source: str, venue: str, symbol: str) -> bool:
        return (fnmatch.fnmatchcase(source, self.source) and fnmatch.fnmatchcase(venue, self.venue)
                and fnmatch.fnmatchcase(symbol, self.symbol))

    def to_contract(self) -> StreamSelector:
        return StreamSelector(kind=self.kind, source=self.source, venue=self.venue, symbol=self.symbol)


class Cursor(NamedTuple):
    """A position in the history order; reads resume strictly after it."""

    ts_event: int
    stream: str
    seq: int
    idx: int

    def encode(self) -> str:
        return base64.urlsafe_b64encode(msgspec.json.encode(tuple(self))).decode()

    @classmethod
    def decode(cls, text: str | None) -> Cursor | None:
        if not text:
            return None
        try:
            ts, stream, seq, idx = msgspec.json.decode(base64.urlsafe_b64decode(text.encode()))
            return cls(int(ts), str(stream), int(seq), int(idx))
        except Exception as exc:
            raise ValueError(f"invalid cursor {text!r}") from exc
