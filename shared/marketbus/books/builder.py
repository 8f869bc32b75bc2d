"""The consumer side: :class:`BookBuilder` keeps one L2 book up to date from its snapshots and
deltas (``md.book.*`` and ``md.book_delta.*``), and :class:`BookBuilders` one per book.

States: ``waiting`` (no snapshot yet, or out of sync: deltas are ignored until the next
snapshot) and ``synced``. A delta whose ``prev_sequence`` is not the builder's ``sequence`` is a
**gap** (a missed delta): counted, and the builder waits for the next snapshot. A delta or
snapshot older than the book (a duplicate, a late message) is ignored. A snapshot carrying the
book's own sequence is compared with it: a difference is counted (``mismatches``) and the snapshot
replaces the book. A delta that cannot apply (it removes a level the book does not have, or has no
sequence) is counted as ``bad`` and the builder waits for a snapshot: it never raises on content.

    builder = BookBuilder()
    for event in events:             # decoded BookSnapshot / BookDelta of one book, in order
        builder.apply(event)
    if builder.synced:
        bids, asks = builder.bids(), builder.asks()   # best first
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Literal

from msgspec.structs import force_setattr

from marketbus.contracts.market import BookDelta, BookLevel, BookSnapshot

State = Literal["waiting", "synced"]
_NEW_LEVEL: Callable[[], BookLevel] = BookLevel(Decimal(1), Decimal(1)).__copy__  # type: ignore[attr-defined]
Outcome = Literal["snapshot", "delta", "checked", "mismatch", "stale", "gap", "bad", "waiting"]


class BookBuilder:
    """One book from its snapshots and deltas (see the module doc)."""

    def __init__(self) -> None:
        self.state: State = "waiting"
        self.sequence: int | None = None
        self.ts_event: int | None = None
        self._bids: dict[Decimal, BookLevel] = {}
        self._asks: dict[Decimal, BookLevel] = {}
        self.gaps = 0
        self.bad = 0
        self.mismatches = 0
        self.checked = 0
        self.snapshots = 0
        self.deltas = 0
        self.stale = 0  # duplicates and late messages, ignored
        self.ignored = 0  # deltas ignored while waiting for a snapshot
        self.resyncs = 0  # snapshots that brought the book back in sync after a gap or a bad delta

    @property
    def synced(self) -> bool:
        return self.state == "synced"

    def bids(self) -> list[BookLevel]:
        """Bid levels, best (highest) first."""
        return [self._bids[p] for p in sorted(self._bids, reverse=True)]

    def asks(self) -> list[BookLevel]:
        """Ask levels, best (lowest) first."""
        return [self._asks[p] for p in sorted(self._asks)]

    def best_bid(self) -> BookLevel | None:
        """The highest bid (None when the side is empty), without sorting the side."""
        return self._bids[max(self._bids)] if self._bids else None

    def best_ask(self) -> BookLevel | None:
        """The lowest ask (None when the side is empty), without sorting the side."""
        return self._asks[min(self._asks)] if self._asks else None

    def matches(self, snapshot: BookSnapshot) -> bool:
        """The book has exactly the snapshot's levels (prices, sizes, orders)."""
        return self.bids() == list(snapshot.bids) and self.asks() == list(snapshot.asks)

    def apply(self, event: BookSnapshot | BookDelta) -> Outcome:
        if isinstance(event, BookSnapshot):
            return self._snapshot(event)
        return self._delta(event)

    def _snapshot(self, book: BookSnapshot) -> Outcome:
        seq = book.sequence
        if self.synced and seq is not None and self.sequence is not None:
            if seq < self.sequence:
                self.stale += 1
                return "stale"
            if seq == self.sequence:
                self.checked += 1
                if self.matches(book):
                    self.ts_event = max(self.ts_event or 0, book.ts_event)
                    return "checked"
                self.mismatches += 1
                self._reset(book)
                return "mismatch"
        if self.state == "waiting" and self.snapshots:
            self.resyncs += 1
        self._reset(book)
        return "snapshot"

    def _reset(self, book: BookSnapshot) -> None:
        self._bids = {lv.price: lv for lv in book.bids}
        self._asks = {lv.price: lv for lv in book.asks}
        self.sequence, self.ts_event, self.state = book.sequence, book.ts_event, "synced"
        self.snapshots += 1

    def _delta(self, delta: BookDelta) -> Outcome:
        if not self.synced:
            self.ignored += 1
            return "waiting"
        if delta.sequence is None or delta.prev_sequence is None or self.sequence is None:
            return self._bad()
        if delta.sequence <= self.sequence:
            self.stale += 1
            return "stale"
        if delta.prev_sequence != self.sequence:
            self.gaps += 1
            self.state = "waiting"
            return "gap"
        # applied in place, whole or not at all: what each change replaced is kept to undo the
        # delta when a later change cannot apply (cheaper than copying both sides per delta)
        bids, asks = self._bids, self._asks
        undo: list[tuple[dict[Decimal, BookLevel], Decimal, BookLevel | None]] = []
        copy, set_ = _NEW_LEVEL, force_setattr
        for change in delta.changes:
            side = bids if change.side == "bid" else asks
            price = change.price
            if change.size:
                # an unchecked copy: the values are a checked BookChange's (the same invariants)
                level = copy()
                set_(level, "price", price)
                set_(level, "size", change.size)
                set_(level, "orders", change.orders)
                undo.append((side, price, side.get(price)))
                side[price] = level
            else:
                was = side.pop(price, None)
                if was is None:
                    for changed, at, before in reversed(undo):
                        if before is None:
                            del changed[at]
                        else:
                            changed[at] = before
                    return self._bad()
                undo.append((side, price, was))
        self.sequence, self.ts_event = delta.sequence, delta.ts_event
        self.deltas += 1
        return "delta"

    def _bad(self) -> Outcome:
        self.bad += 1
        self.state = "waiting"
        return "bad"

    def snapshot(self, template: BookSnapshot | BookDelta) -> BookSnapshot:
        """The current book as a BookSnapshot, with ``template``'s identity fields."""
        return BookSnapshot(id=template.id, source=template.source, venue=template.venue, symbol=template.symbol,
                            ts_event=self.ts_event or template.ts_event, ts_recv=template.ts_recv,
                            bids=self.bids(), asks=self.asks(), sequence=self.sequence)


BookKey = tuple[str, str, str]  # (source, venue, symbol)


class BookBuilders:
    """A :class:`BookBuilder` per book, fed any mix of market events (others are ignored)."""

    def __init__(self) -> None:
        self.books: dict[BookKey, BookBuilder] = {}

    def apply(self, event: object) -> Outcome | None:
        if not isinstance(event, BookSnapshot | BookDelta):
            return None
        key = (event.source, event.venue, event.symbol)
        builder = self.books.get(key)
        if builder is None:
            builder = self.books[key] = BookBuilder()
        return builder.apply(event)

    def get(self, source: str, venue: str, symbol: str) -> BookBuilder | None:
        return self.books.get((source, venue, symbol))
