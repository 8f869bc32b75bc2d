"""Sitagri order books as snapshot + deltas: the ``{quote}/orderBook`` of every listened quote
whose source has order books, polled in one batch every ``order_book_interval_s``; each observed
book is handed to :class:`marketbus.books.BookDeltas` (a snapshot first and every
``book_snapshot_interval_s``, deltas with a per-book sequence in between). A failed poll or
publish makes the next observation of the books a snapshot.

**Why polled, not pushed.** Sitagri pushes nothing for depth: its netbus (the ``/api/netbus``
WebSocket and its long-polling twin) has listeners for prices (``{quoteRef}/price/register``,
pushing marketPrice/cashPrice/indexPrice objects) and for news
(``/news/sources/{SRC}/article/register``) only; an order book exists solely as the request
``{quoteRef}/orderBook`` (Sitagri API documentation: "Websocket /api/netbus" and the reference
grammar table; the sandbox in ``services/sandbox/sitagri/api.py`` serves exactly these, and
answers ``.../orderBook/register`` as an unknown reference). So the books are observed by
polling, and the deltas are computed from successive polls (:class:`marketbus.books.BookDeltas`).
(A pushed price whose bid/ask moved hints that the top of the book moved, but the depth rows
still have to be requested: the periodic batch poll does that for every listened quote at once.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec

from marketbus.books import BookDeltas, register_deltas
from marketbus.contracts.market import BookSnapshot
from marketbus.runtime.ingest import BUS_ERRORS

from . import normalize
from .client import Unavailable, VendorError
from .parts import SitagriHost

CHANNEL = "orderbook"
POLL_ERRORS: tuple[type[BaseException], ...] = (Unavailable, VendorError, *BUS_ERRORS)


def decode_book(raw: msgspec.Raw, ts_recv: int) -> BookSnapshot:
    """One orderBook reply -> BookSnapshot (anything else in its place is Malformed)."""
    obj = normalize.decode_push(raw)
    if type(obj) is not normalize.VOrderBook:
        raise normalize.Malformed(f"expected an orderBook, got {type(obj).__name__}")
    return normalize.order_book(obj, ts_recv, bytes(raw))


class SitagriBooks:
    def __init__(self, ingestor: SitagriHost, quotes: Callable[[], list[str]]) -> None:
        self.ing = ingestor
        self.quotes = quotes  # the listened quotes (refs)
        self.deltas = BookDeltas(ingestor.source, snapshot_interval_s=ingestor.settings.book_snapshot_interval_s)
        register_deltas(ingestor.metrics.registry, self.deltas)  # per-book snapshots, deltas, resyncs
        self.polls = 0

    async def loop(self) -> None:
        ing = self.ing
        result = await ing.ready()
        while True:
            await asyncio.sleep(ing.settings.order_book_interval_s)
            quotes = [q for q in self.quotes() if (m := result.quotes.get(q)) and m.order_book]
            if quotes:
                await self.poll(quotes)

    async def poll(self, quotes: list[str]) -> None:
        ing = self.ing
        try:
            raws = await ing.client.batch_raw([f"{q}/orderBook" for q in quotes], channel=CHANNEL)
        except POLL_ERRORS as exc:
            ing.log.warning("order book poll failed: %r", exc)
            self.deltas.resync()  # observations missed: the next ones are snapshots
            return
        self.polls += 1
        for raw in raws:
            book = await ing.frames.normalize(CHANNEL, raw, decode_book, raw, time.time_ns())
            if book is None:
                continue
            try:
                await self.deltas.publish(book, ing.emit)
            except BUS_ERRORS as exc:  # resynced by publish: the next observation is a snapshot
                ing.log.warning("order book publish failed: %r", exc)
