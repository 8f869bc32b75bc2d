"""Deltas from successive snapshots: :class:`BookDeltas` turns each observed L2 book (a
:class:`~marketbus.contracts.market.BookSnapshot`, e.g. a polled one) into the events an ingestor
publishes for it, with a per-book sequence number:

- the first observation of a book, and the first after :meth:`BookDeltas.resync` (a reconnect, a
  failed poll, a failed publish): a **snapshot** with ``sequence = previous + 1``;
- otherwise a **delta** (``prev_sequence`` -> ``sequence``) listing the changed and removed levels
  (size 0 = removed), or nothing when the book did not change;
- every ``snapshot_interval_s`` also a **periodic snapshot** of the same state, with the same
  sequence as the delta just before it (a consumer in sync can compare its book with it);
- a snapshot instead of a delta when a delta cannot say it exactly: a side not strictly ordered
  best first (or with a price twice) or a level of size 0 (which a delta would read as removed).

Sequences increase across restarts: a book's first sequence in a process is the wall clock in
microseconds, so it is above anything a previous process published (a restart starts with a
snapshot anyway). Event ids are ``event_id(source, "book_delta", venue, symbol, sequence)`` and
``event_id(source, "book", venue, symbol, sequence, ts_recv)``: unique, and the same event re-sent
is the same message (JetStream de-duplication).

This module is the one place deltas are computed; both book ingestors (Digitex, Sitagri) use it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter, gt, lt
from typing import Any

import msgspec.structs
from msgspec.structs import force_setattr

from marketbus.contracts.ids import event_id
from marketbus.contracts.market import BookChange, BookDelta, BookLevel, BookSnapshot, change_of

ZERO = Decimal(0)
PRICE = attrgetter("price")
Key = tuple[str, str]  # (venue, symbol)

REASONS = ("first", "resync", "periodic", "unordered", "zero_size")
"""Why a snapshot was published: a book's first, after a resync, the periodic one, and the two
books a delta cannot express."""


def ordered(prices: list[Decimal], better: Callable[[Any, Any], bool]) -> bool:
    """Strictly ordered best first (so no price twice)."""
    return len(prices) < 2 or all(map(better, prices, prices[1:]))


class Side:
    """One side of a book as last published: its levels, and their prices."""

    __slots__ = ("levels", "prices")

    def __init__(self, levels: list[BookLevel]) -> None:
        self.levels = levels
        self.prices = list(map(PRICE, levels))


# The hot path builds its BookChanges by copying a template and setting the three fields (what
# ``change_of`` does), inlined in the loop: a Python call per level is a third of the per-level
# cost when every level changes. The values are a checked BookLevel's (see ``change_of``).
_COPY: dict[str, Callable[[], BookChange]] = {  # side -> a copier of a template change
    side: BookChange(side, Decimal(1), Decimal(1)).__copy__ for side in ("bid", "ask")}  # type: ignore[attr-defined]


def diff_side(side: str, old: Side, levels: list[BookLevel], better: Callable[[Any, Any], bool],
              out: list[BookChange]) -> Side | None:
    """Append the changes of one side (``side`` is ``bid`` or ``ask``) from ``old`` to ``levels``
    to ``out``; returns the new side, or None when no delta can say it exactly (not strictly
    ordered by ``better``, or a changed level of size 0)."""
    n = len(out)
    was_levels = old.levels
    if len(levels) == len(was_levels):
        # the usual case: the same ladder, some sizes changed. One pass compares the levels
        # (struct equality, in C) and builds a change for each changed one; a changed price means
        # another ladder (the general path below). The prices of a same ladder are the old ones.
        copy, set_ = _COPY[side], force_setattr
        append = out.append
        for lv, was in zip(levels, was_levels):
            if lv != was:
                price = lv.price
                if price != was.price:
                    del out[n:]
                    break
                size = lv.size
                if not size:
                    del out[n:]
                    return None
                change = copy()
                set_(change, "price", price)
                set_(change, "size", size)
                set_(change, "orders", lv.orders)
                append(change)
        else:
            new = Side.__new__(Side)
            new.levels, new.prices = levels, old.prices
            return new
    prices = list(map(PRICE, levels))
    if not ordered(prices, better):
        return None
    get = dict(zip(old.prices, old.levels, strict=True)).get
    out.extend([change_of(side, lv) for lv in levels if get(lv.price) != lv])  # type: ignore[arg-type]
    kept = set(prices)
    out.extend([BookChange(side, p, ZERO) for p in old.prices if p not in kept])  # type: ignore[arg-type]
    if len(out) > n and any(not c.size for c in out[n:] if c.price in kept):
        del out[n:]
        return None
    new = Side.__new__(Side)
    new.levels, new.prices = levels, prices
    return new


@dataclass
class BookState:
    """What :class:`BookDeltas` keeps per book."""

    sequence: int
    bids: Side = field(default_factory=lambda: Side([]))
    asks: Side = field(default_factory=lambda: Side([]))
    snapshot_at: float = 0.0  # monotonic time of the last snapshot
    snapshot_seq: int = -1  # sequence of the last snapshot
    synced: bool = False  # False: the next observation is published as a snapshot, for ``pending``
    pending: str = "first"
    # what :mod:`marketbus.books.metrics` exports per book
    deltas: int = 0
    resyncs: int = 0  # times the book lost sync (a failed poll or publish, a reconnect)
    snapshots: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))


class BookDeltas:
    """Per-book sequences and last states of one ingestor (see the module doc).

    ``update(snapshot)`` returns the events to publish, in order; ``resync(key)`` (or all books)
    makes the next observation a snapshot. ``counts`` counts snapshots per reason and deltas."""

    def __init__(self, source: str, *, snapshot_interval_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 seed: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self.source = source
        self.snapshot_interval_s = snapshot_interval_s
        self.clock = clock
        self.seed = seed
        self.books: dict[Key, BookState] = {}
        self.counts: dict[str, int] = dict.fromkeys((*REASONS, "delta", "unchanged"), 0)

    def resync(self, key: Key | None = None) -> None:
        """The next observation of ``key`` (of every book when None) is published as a snapshot."""
        for k, state in self.books.items():
            if key is None or k == key:
                if state.synced:  # counted once per loss of sync, not per failed attempt after it
                    state.resyncs += 1
                state.synced, state.pending = False, "resync"

    def sequence(self, key: Key) -> int | None:
        state = self.books.get(key)
        return None if state is None else state.sequence

    def update(self, book: BookSnapshot) -> list[BookSnapshot | BookDelta]:
        key = (book.venue, book.symbol)
        state = self.books.get(key)
        if state is None:
            state = self.books[key] = BookState(self.seed() - 1)
        if not state.synced:
            return [self._snapshot(state, book, state.pending)]
        changes: list[BookChange] = []
        bids = diff_side("bid", state.bids, book.bids, gt, changes)
        asks = diff_side("ask", state.asks, book.asks, lt, changes) if bids is not None else None
        if bids is None or asks is None:
            reason = "unordered" if not (ordered([lv.price for lv in book.bids], gt)
                                         and ordered([lv.price for lv in book.asks], lt)) else "zero_size"
            return [self._snapshot(state, book, reason)]
        due = self.clock() - state.snapshot_at >= self.snapshot_interval_s
        if not changes:
            self.counts["unchanged"] += 1
            if due:  # also for a book that does not change: late joiners get a book
                return [self._snapshot(state, book, "periodic", advance=False)]
            return []
        state.bids, state.asks = bids, asks
        prev = state.sequence
        state.sequence = seq = prev + 1
        self.counts["delta"] += 1
        state.deltas += 1
        delta = BookDelta(id=event_id(self.source, "book_delta", book.venue, book.symbol, seq), source=book.source,
                          venue=book.venue, symbol=book.symbol, ts_event=book.ts_event, ts_recv=book.ts_recv,
                          replay=book.replay, changes=changes, sequence=seq, prev_sequence=prev)
        if due:
            return [delta, self._snapshot(state, book, "periodic", advance=False)]
        return [delta]

    def _snapshot(self, state: BookState, book: BookSnapshot, reason: str, advance: bool = True) -> BookSnapshot:
        if advance:
            state.sequence += 1
            state.bids, state.asks = Side(book.bids), Side(book.asks)
            # a side out of order cannot be followed by deltas: the next observation is a snapshot too
            state.synced = ordered(state.bids.prices, gt) and ordered(state.asks.prices, lt)
            state.pending = "unordered"
        state.snapshot_at, state.snapshot_seq = self.clock(), state.sequence
        self.counts[reason] += 1
        state.snapshots[reason] += 1
        return msgspec.structs.replace(
            book, id=event_id(self.source, "book", book.venue, book.symbol, state.sequence, book.ts_recv),
            sequence=state.sequence)

    async def publish(self, book: BookSnapshot, emit: Callable[[Any], Awaitable[Any]]) -> int:
        """``update`` then ``emit`` each event; a failed emit resyncs the book (the next
        observation is a snapshot, as a consumer may have missed the event) and raises.
        Returns the number of events emitted."""
        events = self.update(book)
        try:
            for event in events:
                await emit(event)
        except BaseException:
            self.resync((book.venue, book.symbol))
            raise
        return len(events)

    def health(self) -> dict[str, Any]:
        return {"counts": dict(self.counts),
                "books": {f"{v}/{s}": {"sequence": st.sequence, "synced": st.synced, "resyncs": st.resyncs}
                          for (v, s), st in self.books.items()}}
