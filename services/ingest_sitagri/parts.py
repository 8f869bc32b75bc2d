"""What the Sitagri ingestor's parts (:mod:`.catalog`, :mod:`.live`, :mod:`.backfill`) may use of
the ingestor that owns them: :class:`SitagriHost`, a narrow view, so no part imports :mod:`.app`
(which imports them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from marketbus.contracts.base import MarketEvent
from marketbus.runtime.ingest import IngestHost
from marketbus.vendor.dedup import RecentIds
from marketbus.vendor.frames import FrameGuard

from .client import SitagriClient
from .crawl import CrawlResult
from .settings import SitagriIngestSettings


class GapBackfill(Protocol):
    """What the live part asks of the backfill part to fill a gap (:class:`~.backfill.SitagriBackfill`)."""

    async def history(self, quote_ref: str, start_ns: int, end_ns: int, resolution: str, *,
                      dedupe: bool, sink: list[MarketEvent] | None = None) -> int: ...
    async def search_news(self, source: str, start_s: int, end_s: int, *, dedupe: bool = True,
                          sink: list[MarketEvent] | None = None) -> int: ...


class SitagriHost(IngestHost, Protocol):
    """The members of :class:`~.app.SitagriIngestor` its parts use."""

    @property
    def settings(self) -> SitagriIngestSettings: ...
    @property
    def client(self) -> SitagriClient: ...
    @property
    def frames(self) -> FrameGuard: ...
    @property
    def recent(self) -> RecentIds: ...
    @property
    def crawl(self) -> CrawlResult | None: ...
    @property
    def backfill(self) -> GapBackfill: ...
    @property
    def js(self) -> Any: ...

    async def ready(self, timeout: float | None = None) -> CrawlResult: ...
    async def emit_new(self, event: MarketEvent) -> bool: ...
    async def emit_group(self, events: Sequence[MarketEvent]) -> Any: ...
    async def emit_batch_new(self, events: Sequence[MarketEvent]) -> int: ...
