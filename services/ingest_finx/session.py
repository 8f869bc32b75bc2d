"""The FinX session loop: connect (with back-off), then, per session, re-send what a publishing
failure left unconfirmed, report the history gap, reference data, and snaps and history pages in
turn until the session ends.

Publishing that fails (no stream leader on a cluster, NATS down: a ``PublishError`` or a NATS
error out of the session) ends the session as ``blocked`` (``finx/session``); once the bus is back,
the next session first re-sends, unchanged, what was published since the last commit (same batch
ids: JetStream drops what it had stored), then back-fills the gap from the cursor."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Literal

from marketbus.contracts.base import NO_VENUE
from marketbus.runtime.ingest import BUS_ERRORS

from . import normalize
from .backfill import FinxBackfill
from .catalog import FinxCatalog
from .client import SessionLost
from .live import FinxLive
from .parts import FinxHost

_SESSION_FEED: dict[str, Any] = {"venue": NO_VENUE, "symbol": NO_VENUE, "feed": "finx/session"}


class FinxSession:
    def __init__(self, ingestor: FinxHost, catalog: FinxCatalog, live: FinxLive, backfill: FinxBackfill) -> None:
        self.ing = ingestor
        self.catalog = catalog
        self.live = live
        self.backfill = backfill
        self.sessions = 0

    async def run(self) -> None:
        ing = self.ing
        client = ing.client
        while True:
            async def failed(exc: BaseException) -> None:
                ing.metrics.reconnects.labels(ing.source).inc()
                ing.log.warning("FinX connect failed: %s", exc)

            ing.log.info("connecting to %s", client.safe_url)
            await client.connect_with_backoff(failed)
            self.sessions += 1
            ing.metrics.feed_state.labels(ing.source, "session").set(1)
            await ing.publish_feed_status(ing.source, "connected", detail=client.safe_url, **_SESSION_FEED)
            await ing.session_flowing(True)
            ended: Literal["disconnected", "blocked"] = "disconnected"
            try:
                await self.session()
            except SessionLost as exc:
                reason = str(exc)
            except normalize.VendorError as exc:
                reason = f"vendor error: {exc}"
                await client.close()
            except BUS_ERRORS as exc:
                ended, reason = "blocked", f"publishing failed: {exc!r}"
                ing.log.warning("FinX session blocked: %s", reason)
                await client.close()
            ing.metrics.feed_state.labels(ing.source, "session").set(0)
            ing.metrics.reconnects.labels(ing.source).inc()
            lost_at = ing.now_ns()
            with contextlib.suppress(*BUS_ERRORS):
                await ing.publish_feed_status(ing.source, ended, detail=reason, **_SESSION_FEED)
            with contextlib.suppress(*BUS_ERRORS):
                await ing.session_flowing(False)
            for state in ing.pairs.values():
                # Whatever happened from the cursor on is missing until the back-fill catches up.
                assert state.tracker is not None
                state.tracker.interrupted(lost_at)
            await client.backoff.sleep()
            if ended == "blocked":
                await self.wait_for_the_bus()

    async def wait_for_the_bus(self) -> None:
        """Until NATS is connected and the publisher is not blocked (checked every 0.5 s)."""
        ing = self.ing
        assert ing.publisher is not None
        while not ing.nats_connected or ing.publisher.blocked:
            await asyncio.sleep(0.5)
        with contextlib.suppress(*BUS_ERRORS):
            await ing.flush()  # forget the failures: the outbox re-sends them

    async def resend_unconfirmed(self) -> None:
        """Re-publish, unchanged, what was published since the last commit and not acked."""
        ing = self.ing
        for events, replay, acks in ing.outbox.sent:
            if all(f.done() and not f.cancelled() and f.exception() is None for f in acks):
                continue
            acks.clear()
            if replay is None:
                acks.extend([await ing.emit(e) for e in events])
            else:
                await ing.emit_batch(events, replay=replay, acks=acks)
        await self.backfill.commit(force=True)

    async def session(self) -> None:
        ing = self.ing
        if ing.outbox:
            await self.resend_unconfirmed()
        for state in ing.pairs.values():
            assert state.tracker is not None
            await state.tracker.report(state.cursor, detail="back-filling from the saved cursor")
        if self.catalog.due:
            await self.catalog.load()
        self.live.next_snap = 0.0
        while True:
            await self.live.maybe_snap()
            for state in ing.pairs.values():
                await self.backfill.catch_up(state)
            await self.backfill.commit(force=True)
            if self.catalog.due:
                await self.catalog.load()
            wait = min(self.live.next_snap - time.monotonic(), ing.settings.history_interval_s)
            await asyncio.sleep(max(0.0, wait))
