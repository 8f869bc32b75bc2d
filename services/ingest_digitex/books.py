"""Digitex order books as snapshot + deltas: ``order_book/`` polled per market, each observed
book handed to :class:`marketbus.books.BookDeltas` (the first and every
``book_snapshot_interval_s`` a snapshot, deltas in between, with a per-book sequence). A failed
poll or publish makes the next observation a snapshot (a consumer may have missed something)."""

from __future__ import annotations

from marketbus.books import BookDeltas, register_deltas

from . import normalize
from .parts import DigitexHost, MarketState


class DigitexBooks:
    def __init__(self, ingestor: DigitexHost) -> None:
        self.ing = ingestor
        self.deltas = BookDeltas(ingestor.source, snapshot_interval_s=ingestor.settings.book_snapshot_interval_s)
        register_deltas(ingestor.metrics.registry, self.deltas)  # per-book snapshots, deltas, resyncs

    async def poll(self, state: MarketState) -> None:
        ing = self.ing
        key = (ing.venue, state.symbol)
        try:
            raw = await ing.client.get("order_book", market_id=state.market_id)
        except BaseException:
            self.deltas.resync(key)  # a gap in the observations: the next one is a snapshot
            raise
        book = await ing.frames.normalize("order_book", raw, normalize.order_book, raw, state.symbol, ing.venue,
                                          ing.now_ns())
        if book is not None:
            await self.deltas.publish(book, ing.emit)
