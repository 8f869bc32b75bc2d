"""A TickSupply ingestor's feed control for the export API tests: marketbus's own ingestor-side
machinery (:class:`marketbus.vendor.feeds.FeedControl`, answering ``feeds.ctl.ticksupply`` and
keeping the ``Feed`` records and collection periods in the real ``feeds`` KV bucket) in an
``Ingestor`` whose collection hooks record what it collects, with a fixed catalog.
"""

from __future__ import annotations

from typing import ClassVar

from marketbus.contracts.feeds import Feed
from marketbus.runtime.ingest import Ingestor
from marketbus.vendor.feeds import FeedControl, Resolved


class FeedIngestor(Ingestor):
    name: ClassVar[str] = "ingest_ticksupply"
    source: ClassVar[str] = "ticksupply"
    catalog: dict[str, Resolved] = {}

    def build(self) -> None:
        self.collecting: list[str] = []
        self.hooks: list[tuple[str, str]] = []
        self.feed_control = FeedControl(self, resolve=self.resolve, subscribe=self.sub, unsubscribe=self.unsub)

    async def resolve(self, instrument: str) -> Resolved | None:
        return self.catalog.get(instrument)

    async def sub(self, feed: Feed) -> None:
        self.collecting.append(feed.instrument)
        self.hooks.append(("subscribe", feed.instrument))

    async def unsub(self, feed: Feed) -> None:
        self.collecting.remove(feed.instrument)
        self.hooks.append(("unsubscribe", feed.instrument))


async def start_feed_ingestor(nats_url: str, catalog: dict[str, tuple[str, str, str]]) -> FeedIngestor:
    """Start it (no seed: the bucket starts empty); ``catalog``: instrument -> (venue, symbol, kind)."""
    ing = FeedIngestor(nats_url=nats_url, heartbeat_interval_s=60, http_port=0)
    ing.catalog = {i: Resolved(venue, symbol, kind) for i, (venue, symbol, kind) in catalog.items()}
    await ing.start()
    await ing.feed_control.start([])
    return ing


__all__ = ["FeedIngestor", "start_feed_ingestor"]
