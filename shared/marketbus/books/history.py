"""A book at a point in time, rebuilt from the stored history: the last snapshot at or before
that time, then the deltas after it up to that time (:func:`rebuild`), read over NATS from the
history writer (:func:`book_at`; ``marketbus history book SOURCE.VENUE.SYMBOL --at TIME``).

The stored snapshots and deltas are taken in sequence order (a restart starts a higher sequence
with a snapshot), so the result does not depend on how rows with equal times were ordered.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from marketbus.contracts.market import BookDelta, BookSnapshot

from .builder import BookBuilder

NS = 1_000_000_000
LOOKBACK_NS = 10 * 60 * NS  # the first window searched for a snapshot (doubled until one is found)
MAX_LOOKBACK_NS = 7 * 24 * 3600 * NS


def _order(event: BookSnapshot | BookDelta) -> tuple[int, int, int]:
    # a periodic snapshot follows the delta of the same sequence; events without one keep time order
    return (event.sequence if event.sequence is not None else -1, 1 if isinstance(event, BookSnapshot) else 0,
            event.ts_event)


def rebuild(events: Iterable[Any], at_ns: int) -> BookBuilder:
    """The book of the snapshots and deltas of ONE book with ``ts_event <= at_ns``: a builder
    applied from the last snapshot at or before ``at_ns`` (``synced`` False when there is none, or
    a delta after it is missing)."""
    book = [e for e in events if isinstance(e, BookSnapshot | BookDelta) and e.ts_event <= at_ns]
    book.sort(key=_order)
    start = max((i for i, e in enumerate(book) if isinstance(e, BookSnapshot)), default=None)
    builder = BookBuilder()
    if start is None:
        return builder
    # from the last snapshot whose state is not followed by an already-applied delta
    for event in book[start:]:
        builder.apply(event)
    if builder.synced:
        return builder
    # the last snapshot could not start a book (e.g. an unreadable one): from the first one instead
    builder = BookBuilder()
    for event in book:
        builder.apply(event)
    return builder


async def book_at(history: Any, source: str, venue: str, symbol: str, at_ns: int, *,
                  lookback_ns: int = LOOKBACK_NS, max_lookback_ns: int = MAX_LOOKBACK_NS) -> BookBuilder:
    """The book ``source/venue/symbol`` at ``at_ns`` from a
    :class:`~marketbus.clients.history.HistoryClient`: the snapshots and deltas of a window
    ending at ``at_ns``, widened (doubled) until it holds a snapshot or reaches ``max_lookback_ns``."""
    window = lookback_ns
    while True:
        start = max(0, at_ns - window)
        events = [e async for e in history.events(f"book*.{source}.{venue}.{symbol}", start, at_ns + 1)]
        if any(isinstance(e, BookSnapshot) for e in events) or window >= max_lookback_ns or start == 0:
            return rebuild(events, at_ns)
        window *= 2
