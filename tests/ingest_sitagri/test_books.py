"""The Sitagri ingestor's order books against the sandbox (real NATS): a snapshot, then deltas
with a per-book sequence; the book built from them equals every later (periodic) snapshot."""

from __future__ import annotations

import httpx

from marketbus.books import BookBuilders
from marketbus.contracts.market import BookDelta, BookSnapshot
from services.sandbox.common.base import SandboxRunner
from tests.helpers import per_book, scrape, wait_for

from .conftest import Collector, ingestor, sandbox

EMA = "/market/sources/EURONEX/future/EMA"


async def faults(sb: SandboxRunner, **switches: int) -> None:
    async with httpx.AsyncClient(base_url=sb.url, timeout=10) as http:
        (await http.post("/_sandbox/faults", json=switches)).raise_for_status()


async def test_order_books_are_a_snapshot_then_deltas(nats_url: str, bus: Collector) -> None:
    async with sandbox() as sb:
        ing = ingestor(nats_url, sb, quotes=[EMA], order_book_interval_s=0.2, book_snapshot_interval_s=1.0,
                       max_retries=0)
        async with ing:
            counts = ing.books.deltas.counts
            await wait_for(lambda: counts["periodic"] >= 4 * 2 and counts["delta"] >= 20, timeout=20,
                           what="deltas and periodic snapshots of the EMA books")
            # a failed poll (5xx): every book's next observation is a snapshot
            mark = ing.books.polls
            await faults(sb, error_next=2)
            await wait_for(lambda: counts["resync"] >= 4 and ing.books.polls > mark + 2, timeout=10,
                           what="snapshots after a failed poll")
            # the per-book counts are on /metrics: each book lost sync once and was resent whole
            await wait_for(lambda: all(st.synced for st in ing.books.deltas.books.values()), timeout=10,
                           what="every book in sync again")
            samples = await scrape(ing.http_url)
            resyncs = per_book(samples, "marketbus_book_resyncs_total", source="sitagri")
            assert len(resyncs) >= 4 and set(resyncs) == set(ing.books.deltas.books)
            assert all(v >= 1 for v in resyncs.values()), resyncs
            after = per_book(samples, "marketbus_book_snapshots_total", source="sitagri", reason="resync")
            assert all(after[book] >= 1 for book in resyncs), after
            first = per_book(samples, "marketbus_book_snapshots_total", source="sitagri", reason="first")
            assert set(first.values()) == {1.0}
            deltas = per_book(samples, "marketbus_book_deltas_total", source="sitagri")
            assert sum(deltas.values()) <= counts["delta"] and all(v >= 1 for v in deltas.values())
            assert set(per_book(samples, "marketbus_book_synced", source="sitagri").values()) == {1.0}
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
            assert builder.deltas >= 1 and builder.snapshots >= 2  # the first and the one after the failed poll
            assert any(lv.orders for lv in builder.bids())  # the vendor's order counts travel in the deltas
