"""What the Digitex ingestor's parts (:mod:`.catalog`, :mod:`.live`, :mod:`.backfill`) share: the
per-market state they pass around, the trade cursor, and :class:`DigitexHost`, the narrow view
of the ingestor they are given (so no part imports :mod:`.app`, which imports them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import msgspec

from marketbus.contracts.market import Trade
from marketbus.runtime.ingest import IngestHost
from marketbus.vendor.cursor import CursorStore
from marketbus.vendor.frames import FrameGuard
from marketbus.vendor.limits import LimiterHold

from .client import DigitexClient
from .settings import DigitexIngestSettings


@dataclass
class MarketState:
    market_id: int
    code: str
    symbol: str
    last_trade_id: int | None = None
    last_trade_ts: int | None = None
    bar_cursor: dict[str, int] = field(default_factory=dict)  # resolution -> last published bar start (µs)


class TradeCursor(msgspec.Struct):
    trade_id: int
    ts_ns: int | None = None


class DigitexHost(IngestHost, Protocol):
    """The members of :class:`~.app.DigitexIngestor` its parts use."""

    @property
    def settings(self) -> DigitexIngestSettings: ...
    @property
    def venue(self) -> str: ...
    @property
    def client(self) -> DigitexClient: ...
    @property
    def frames(self) -> FrameGuard: ...
    @property
    def limit(self) -> LimiterHold: ...
    @property
    def trade_cursors(self) -> CursorStore[TradeCursor]: ...
    @property
    def bar_cursors(self) -> CursorStore[dict[str, int]]: ...
    @property
    def by_symbol(self) -> dict[str, MarketState]: ...

    async def emit_trades(self, trades: list[Trade]) -> int: ...
