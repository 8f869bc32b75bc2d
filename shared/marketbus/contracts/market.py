"""Market data events: subjects ``md.<kind>.<source>.<venue>.<symbol>``.

Signs (see :mod:`.invariants`): what is always a price of a traded thing is a :data:`Price`
(> 0: trades, ticks, quotes, book levels); sizes, volumes and open interest are :data:`Size`
(>= 0); Sitagri's market, cash and index prices and bars are :data:`Amount` (signed), because
Sitagri quotes spreads, basis and premiums, which are negative at times. A market price carries its
decimals as their canonical text (:data:`.invariants.AmountText`, :data:`.invariants.SizeText`; see
:class:`MarketPrice`).
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Literal

from msgspec.structs import force_setattr

from .base import MarketEvent
from .invariants import (
    Amount,
    AmountText,
    Checked,
    Count,
    Int64,
    Label,
    Nanos,
    Price,
    Size,
    SizeText,
    Text,
    decimal_of_text,
    decimal_text_fields,
    decimal_value,
)

Side = Literal["buy", "sell", "unknown"]
Quality = Literal["realtime", "delayed", "unknown"]


class Trade(MarketEvent, frozen=True, kw_only=True, tag="trade"):
    """A trade (execution) printed by a venue."""

    price: Price
    size: Size
    side: Side = "unknown"  # aggressor side
    trade_id: Label | None = None  # the venue's trade id, when it has one


class Tick(MarketEvent, frozen=True, kw_only=True, tag="tick"):
    """A price observation without size (e.g. a FinX tick snap or history row)."""

    price: Price
    size: Size | None = None


class Quote(MarketEvent, frozen=True, kw_only=True, tag="quote"):
    """Top of book / ticker."""

    bid_price: Price | None = None
    bid_size: Size | None = None
    ask_price: Price | None = None
    ask_size: Size | None = None
    last_price: Price | None = None
    volume_24h: Size | None = None


class BookLevel(Checked, frozen=True, array_like=True):
    """One price level: ``[price, size, orders]`` on the wire."""

    price: Price
    size: Size
    orders: Count | None = None


class BookSnapshot(MarketEvent, frozen=True, kw_only=True, tag="book"):
    """A full L2 order book: bids best (highest) first, asks best (lowest) first.

    ``sequence`` (set by the ingestors that publish deltas, see :mod:`marketbus.books`) is the
    per-book sequence of the state this snapshot shows: the deltas that follow it start from it
    (``prev_sequence`` = this ``sequence``), and a periodic snapshot repeats the sequence of the
    delta that led to the same state, so a consumer in sync can check its book against it."""

    bids: list[BookLevel]
    asks: list[BookLevel]
    sequence: Int64 | None = None
    quality: Quality = "unknown"


class BookChange(Checked, frozen=True, array_like=True):
    """``[side, price, size, orders]``: the level's new size and order count (a new or changed
    level); size 0 deletes the level (``orders`` then absent). ``orders`` may be left out on the wire."""

    side: Literal["bid", "ask"]
    price: Price
    size: Size
    orders: Count | None = None


_CHANGE_OF: dict[str, Callable[[], BookChange]] = {}  # side -> a copier of a template change


def change_of(side: Literal["bid", "ask"], level: BookLevel) -> BookChange:
    """``BookChange(side, level.price, level.size, level.orders)`` without checking the values
    again: they are a :class:`BookLevel`'s, checked when it was built or decoded, and a
    BookChange's price, size and orders have the same invariants (``side`` is one of the two
    literals: anything else raises ``KeyError``). The delta computation's hot path
    (:mod:`marketbus.books`), about twice as fast as the checked constructor."""
    change = _CHANGE_OF[side]()
    force_setattr(change, "price", level.price)
    force_setattr(change, "size", level.size)
    force_setattr(change, "orders", level.orders)
    return change


class BookDelta(MarketEvent, frozen=True, kw_only=True, tag="book_delta"):
    """Incremental L2 changes, applied in ``sequence`` order on top of a snapshot.

    ``prev_sequence`` is the sequence of the book state the changes apply to, ``sequence`` the
    state they lead to (``prev_sequence + 1`` from marketbus's ingestors). A delta whose
    ``prev_sequence`` is not the consumer's current sequence means a delta was missed: the
    consumer waits for the next snapshot (:class:`marketbus.books.BookBuilder` does this)."""

    changes: list[BookChange]
    sequence: Int64 | None = None
    prev_sequence: Int64 | None = None


class Bar(MarketEvent, frozen=True, kw_only=True, tag="bar"):
    """An OHLCV bar; ``ts_event`` is the bar's start, ``interval`` e.g. ``1m``, ``1h``, ``1d``."""

    interval: Label
    open: Amount
    high: Amount
    low: Amount
    close: Amount
    volume: Size | None = None
    open_interest: Size | None = None


class MarketPrice(MarketEvent, frozen=True, kw_only=True, tag="market_price"):
    """A market price snapshot (Sitagri marketPrice): every field optional, as the vendor omits
    fields that have no data. ``*_ts`` fields are the vendor dates of the values (ns)."""

    # (The docstring is the JSON Schema's description, which other-language consumers read: what
    # follows is Python's business, so it is a comment.)
    # Its decimals are carried as their canonical text (invariants.AmountText, SizeText): ``last`` is
    # "-3.25", not Decimal("-3.25"). Nothing computes with them on the way from the vendor to the bus,
    # and not building 7 Decimals an event (nor formatting them) is most of what makes the Sitagri
    # path fast (issue #16). The wire is what a Decimal field gives (the same JSON string, the same
    # schema), and so are the invariants (bounds, signs, canonical text). A consumer that computes
    # asks for the value: ``price.decimal("last")`` (a Decimal or None), or ``price.decimals()``.
    # Build one with texts (last="101.25"; a non-canonical text such as "101.250" is carried
    # canonical, "101.25"; invariants.decimal_text(a Decimal) gives the text of a Decimal).

    quality: Quality = "unknown"
    last: AmountText | None = None
    last_ts: Nanos | None = None
    last_volume: SizeText | None = None
    total_volume: SizeText | None = None
    orders: Count | None = None
    first: AmountText | None = None
    previous_last: AmountText | None = None
    high: AmountText | None = None
    low: AmountText | None = None
    high_1y: AmountText | None = None
    low_1y: AmountText | None = None
    settlement: AmountText | None = None
    settlement_ts: Nanos | None = None
    open_interest: SizeText | None = None
    bid: AmountText | None = None
    bid_size: SizeText | None = None
    ask: AmountText | None = None
    ask_size: SizeText | None = None
    perf: AmountText | None = None
    rel_perf: AmountText | None = None

    def decimal(self, field: str) -> Decimal | None:
        """The exact ``Decimal`` of one of the decimal fields (``"last"``, ``"bid_size"``...), ``None``
        when absent. Raises ``KeyError`` for a field that is not one of them."""
        if field not in _MARKET_PRICE_DECIMALS:
            raise KeyError(f"MarketPrice has no decimal field {field!r} (it has {', '.join(_MARKET_PRICE_DECIMALS)})")
        return decimal_value(getattr(self, field))

    def decimals(self) -> dict[str, Decimal]:
        """Every decimal field present, as exact ``Decimal``s: ``{"last": Decimal("-3.25"), ...}``."""
        return {name: decimal_of_text(text) for name in _MARKET_PRICE_DECIMALS
                if (text := getattr(self, name)) is not None}


_MARKET_PRICE_DECIMALS = decimal_text_fields(MarketPrice)


class CashDelivery(Checked, frozen=True, kw_only=True):
    start: Nanos
    end: Nanos
    value: Amount  # a basis or a premium may be negative
    prime: Amount | None = None


class CashPrice(MarketEvent, frozen=True, kw_only=True, tag="cash_price"):
    """A physical (cash) price with its delivery periods."""

    deliveries: list[CashDelivery]
    quality: Quality = "unknown"
    currency: Label | None = None


class IndexPrice(MarketEvent, frozen=True, kw_only=True, tag="index_price"):
    value: Amount
    volume: Size | None = None
    std_dev: Size | None = None
    quality: Quality = "unknown"


class News(MarketEvent, frozen=True, kw_only=True, tag="news"):
    """A news article. ``venue`` is the news source (e.g. AFP), ``symbol`` the language (EN)."""

    article_id: Label
    title: Text
    lang: Label
    snippet: Text | None = None
    content: Text | None = None
    copyright: Text | None = None
    modified_ts: Nanos | None = None
    words: Count | None = None
    day_tendency: Int64 | None = None  # 0 bearish .. 11 bullish
    short_term_tendency: Int64 | None = None


_CHANGE_OF.update({side: BookChange(side, Decimal(1), Decimal(1)).__copy__  # type: ignore[attr-defined]
                   for side in ("bid", "ask")})

MARKET_TYPES = (Trade, Tick, Quote, BookSnapshot, BookDelta, Bar, MarketPrice, CashPrice, IndexPrice, News)
