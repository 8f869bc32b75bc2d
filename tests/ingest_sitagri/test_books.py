"""The Sitagri ingestor's order books against the sandbox (real NATS): a snapshot, then deltas
with a per-book sequence; the book built from them equals every later (periodic) snapshot."""

from __future__ import annotations

from marketbus.books import BookBuilders
from marketbus.contracts.market import BookDelta, BookSnapshot
from tests.helpers import wait_for

from .conftest import Collector, ingestor, sandbox

EMA = "/market/sources/EURONEX/future/EMA"


async def test_order_books_are_a_snapshot_then_deltas(nats_url: str, bus: Collector) -> None:
    async with sandbox() as sb:
        ing = ingestor(nats_url, sb, quotes=[EMA], order_book_interval_s=0.2, book_snapshot_interval_s=1.0)
        async with ing:
            counts = ing.books.deltas.counts
            await wait_for(lambda: counts["periodic"] >= 4 * 2 and counts["delta"] >= 20, timeout=20,
                           what="deltas and periodic snapshots of the EMA books")
            ing.books.deltas.resync()  # as after a failed poll: every book's next observation is a snapshot
            await wait_for(lambda: counts["resync"] >= 4, timeout=10, what="snapshots after a resync")
            await ing.flush()
        events = [e for e in bus.events if isinstance(e, BookSnapshot | BookDelta)]
        books = {(e.venue, e.symbol) for e in events}
        assert len(books) >= 4 and all(v == "EURONEX" for v, _ in books)
        builders = BookBuilders()
        checked = 0
        for event in events:
            builder = builders.get(event.source, event.venue, event.symbol)
            if isinstance(event, BookSnapshot) and builder is not None and event.sequence == builder.sequence:
                assert builder.bids() == event.bids and builder.asks() == event.asks
                checked += 1
            assert builders.apply(event) in ("snapshot", "delta", "checked")
        assert checked >= 8
        for builder in builders.books.values():
            assert builder.synced and builder.gaps == builder.bad == builder.mismatches == 0
            assert builder.deltas >= 1 and builder.snapshots >= 2  # the first and the one after the resync
            assert any(lv.orders for lv in builder.bids())  # the vendor's order counts travel in the deltas
