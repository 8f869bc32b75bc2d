"""The FinX ingestor, built from the vendor machinery's parts (:mod:`marketbus.vendor`):

- session: :class:`~.client.TickPlantClient` (the TickPlant websocket in strict request/reply
  lock-step) and :class:`~.session.FinxSession` (connect with back-off, re-send after a publishing
  failure, the session loop);
- catalog: :class:`~.catalog.FinxCatalog` (``referenceData`` of the configured tickers ->
  ``ref.currency.finx._.<TICKER>``, the configured pairs -> ``ref.instrument.finx._.<BASE-QUOTE>``);
- live: :class:`~.live.FinxLive` (``tickSnap`` polled per pair -> ``md.tick.finx.<EXCHANGE>.<BASE-QUOTE>``;
  an unchanged snap is not a new event);
- backfill: :class:`~.backfill.FinxBackfill` (``tickHistory`` pages from a cursor as batch envelopes,
  ``replay=True``; the cursor saved once acked; ``replay.finx``).

Cursors live in the ``ingest_state`` KV bucket (:class:`~marketbus.vendor.cursor.CursorStore`):
a restart or a lost session resumes where it stopped, with no duplicate and no hole.
"""

from __future__ import annotations

from typing import Any, ClassVar

from marketbus.contracts.jobs import ReplayRequest
from marketbus.contracts.reference import Currency
from marketbus.contracts.streams import INGEST_STATE, ensure_bucket
from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import Ingestor
from marketbus.vendor.cursor import CursorStore
from marketbus.vendor.frames import FrameGuard

from . import normalize
from .backfill import FinxBackfill
from .catalog import FinxCatalog
from .client import TickPlantClient
from .live import FinxLive
from .parts import Cursor, Outbox, PairState
from .session import FinxSession
from .settings import FinxIngestSettings


class FinxIngestor(Ingestor):
    source: ClassVar[str] = "finx"
    resends_failed_publishes = True  # the outbox is re-sent after a publishing failure
    settings_cls = FinxIngestSettings
    settings: FinxIngestSettings

    def build(self) -> None:
        s = self.settings
        self.client = TickPlantClient(
            s.ws_url, s.api_key, timeout_s=s.request_timeout_s,
            backoff=Backoff(s.reconnect_initial_s, s.reconnect_max_s), on_frame=self._count_frame,
        )
        self.pairs: dict[str, PairState] = {}
        self.cursors: CursorStore[Cursor] = CursorStore(None, self.source, "history", Cursor, s.state_namespace)
        self.frames = FrameGuard(self, normalize.Malformed)
        self.outbox = Outbox()
        self.catalog = FinxCatalog(self)
        self.live = FinxLive(self)
        self.backfill = FinxBackfill(self, between_pages=self.live.maybe_snap)
        self.session = FinxSession(self, self.catalog, self.live, self.backfill)

    @property
    def sessions(self) -> int:
        return self.session.sessions

    @property
    def currencies(self) -> dict[str, Currency]:
        return self.catalog.currencies

    def vendor_refused(self, channel: str, exc: normalize.VendorError, what: str) -> None:
        """FinX answered a request with an error: an auth error ends the session (raised again),
        anything else is counted and logged and the caller skips the request."""
        if exc.auth:
            raise exc
        self.metrics.vendor_errors.labels(self.source, channel).inc()
        self.log.warning("%s: %s", what, exc)

    def _count_frame(self, channel: str) -> None:
        self.metrics.frames_in.labels(self.source, channel).inc()

    def health(self) -> dict[str, Any]:
        return {
            "vendor_url": self.client.safe_url, "vendor_connected": self.client.connected,
            "cursors": {p.pair: p.cursor for p in self.pairs.values()},
        }

    # --- start / stop ---------------------------------------------------------------------------
    async def on_start(self) -> None:
        self.cursors.kv = await ensure_bucket(self.js, INGEST_STATE, self.settings.stream_replicas)
        await self.backfill.load()
        self.spawn(self.session.run(), "session")

    async def on_stop(self) -> None:
        await self.client.close()

    async def replay(self, request: ReplayRequest) -> int:
        return await self.backfill.replay(request)
