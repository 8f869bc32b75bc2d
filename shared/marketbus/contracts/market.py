"""Market data events: subjects ``md.<kind>.<source>.<venue>.<symbol>``."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

import msgspec

from .base import MarketEvent

Side = Literal["buy", "sell", "unknown"]
Quality = Literal["realtime", "delayed", "unknown"]


class Trade(MarketEvent, frozen=True, kw_only=True, tag="trade"):
    """A trade (execution) printed by a venue."""

    price: Decimal
    size: Decimal
    side: Side = "unknown"  # aggressor side
    trade_id: str | None = None  # the venue's trade id, when it has one


class Tick(MarketEvent, frozen=True, kw_only=True, tag="tick"):
    """A price observation without size (e.g. a FinX tick snap or history row)."""

    price: Decimal
    size: Decimal | None = None


class Quote(MarketEvent, frozen=True, kw_only=True, tag="quote"):
    """Top of book / ticker."""

    bid_price: Decimal | None = None
    bid_size: Decimal | None = None
    ask_price: Decimal | None = None
    ask_size: Decimal | None = None
    last_price: Decimal | None = None
    volume_24h: Decimal | None = None


class BookLevel(msgspec.Struct, frozen=True, array_like=True):
    """One price level: ``[price, size, orders]`` on the wire."""

    price: Decimal
    size: Decimal
    orders: int | None = None


class BookSnapshot(MarketEvent, frozen=True, kw_only=True, tag="book"):
    """A full L2 order book: bids best (highest) first, asks best (lowest) first."""

    bids: list[BookLevel]
    asks: list[BookLevel]
    sequence: int | None = None
    quality: Quality = "unknown"


class BookChange(msgspec.Struct, frozen=True, array_like=True):
    """``[side, price, size]``: size 0 deletes the level."""

    side: Literal["bid", "ask"]
    price: Decimal
    size: Decimal


class BookDelta(MarketEvent, frozen=True, kw_only=True, tag="book_delta"):
    """Incremental L2 changes, applied in ``sequence`` order on top of a snapshot."""

    changes: list[BookChange]
    sequence: int | None = None
    prev_sequence: int | None = None


class Bar(MarketEvent, frozen=True, kw_only=True, tag="bar"):
    """An OHLCV bar; ``ts_event`` is the bar's start, ``interval`` e.g. ``1m``, ``1h``, ``1d``."""

    interval: str
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal | None = None
    open_interest: Decimal | None = None


class MarketPrice(MarketEvent, frozen=True, kw_only=True, tag="market_price"):
    """A market price snapshot (Sitagri marketPrice): every field optional, as the vendor omits
    fields that have no data. ``*_ts`` fields are the vendor dates of the values (ns)."""

    quality: Quality = "unknown"
    last: Decimal | None = None
    last_ts: int | None = None
    last_volume: Decimal | None = None
    total_volume: Decimal | None = None
    orders: int | None = None
    first: Decimal | None = None
    previous_last: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    high_1y: Decimal | None = None
    low_1y: Decimal | None = None
    settlement: Decimal | None = None
    settlement_ts: int | None = None
    open_interest: Decimal | None = None
    bid: Decimal | None = None
    bid_size: Decimal | None = None
    ask: Decimal | None = None
    ask_size: Decimal | None = None
    perf: Decimal | None = None
    rel_perf: Decimal | None = None


class CashDelivery(msgspec.Struct, frozen=True, kw_only=True):
    start: int  # ns
    end: int  # ns
    value: Decimal
    prime: Decimal | None = None


class CashPrice(MarketEvent, frozen=True, kw_only=True, tag="cash_price"):
    """A physical (cash) price with its delivery periods."""

    deliveries: list[CashDelivery]
    quality: Quality = "unknown"
    currency: str | None = None


class IndexPrice(MarketEvent, frozen=True, kw_only=True, tag="index_price"):
    value: Decimal
    volume: Decimal | None = None
    std_dev: Decimal | None = None
    quality: Quality = "unknown"


class News(MarketEvent, frozen=True, kw_only=True, tag="news"):
    """A news article. ``venue`` is the news source (e.g. AFP), ``symbol`` the language (EN)."""

    article_id: str
    title: str
    lang: str
    snippet: str | None = None
    content: str | None = None
    copyright: str | None = None
    modified_ts: int | None = None
    words: int | None = None
    day_tendency: int | None = None  # 0 bearish .. 11 bullish
    short_term_tendency: int | None = None


MARKET_TYPES = (Trade, Tick, Quote, BookSnapshot, BookDelta, Bar, MarketPrice, CashPrice, IndexPrice, News)
