"""The Sitagri catalog: the reference tree crawled with batch requests (:mod:`.crawl`) at start-up
and then every ``ref_refresh_s`` -> ``ref.<kind>.sitagri.<SOURCE>.<CODE>``; what the crawl could
not read is dead-lettered. ``ready()`` waits for the first crawl (the live side needs its quote
index)."""

from __future__ import annotations

import asyncio

import msgspec

from marketbus.runtime.backoff import Backoff
from marketbus.runtime.ingest import BUS_ERRORS

from . import normalize
from .client import Unavailable, VendorError
from .crawl import CrawlResult, crawl
from .netbus import NetbusClosed
from .parts import SitagriHost


class SitagriCatalog:
    def __init__(self, ingestor: SitagriHost) -> None:
        self.ing = ingestor
        self.result: CrawlResult | None = None
        self.crawls = 0
        self._ready = asyncio.Event()

    async def ready(self, timeout: float | None = None) -> CrawlResult:
        await asyncio.wait_for(self._ready.wait(), timeout)
        assert self.result is not None
        return self.result

    async def refresh(self) -> CrawlResult:
        ing = self.ing
        result = await crawl(ing.client.batch, ing.now_ns())
        for event in result.events:
            await ing.emit_new(event)
        for ref, payload, reason in result.problems:
            if payload is not None:
                await ing.frames.reject("reference", msgspec.json.encode(payload), f"{ref}: {reason}")
            else:
                ing.log.warning("reference %s: %s", ref, reason)
        await ing.flush()
        self.result = result
        self.crawls += 1
        self._ready.set()
        ing.log.info("reference tree: %d events, %d quotes, %d requests (%d references)",
                     len(result.events), len(result.quotes), result.requests, result.references)
        return result

    async def loop(self) -> None:
        ing, s = self.ing, self.ing.settings
        backoff = Backoff(s.reconnect_initial_s, s.reconnect_max_s)
        first = True
        while True:
            if first and not s.ref_on_start:
                first = False
            try:
                if first:
                    await ing.client.start()
                await self.refresh()
                first = False
                backoff.reset()
                await asyncio.sleep(s.ref_refresh_s)
            except (Unavailable, VendorError, NetbusClosed, normalize.Malformed) as exc:
                ing.metrics.vendor_errors.labels(ing.source, "reference").inc()
                ing.log.warning("reference crawl failed: %r", exc)
                await backoff.sleep()
            except BUS_ERRORS as exc:  # the bus, not the vendor: retried (the health says "publishing")
                ing.log.warning("reference crawl could not publish: %r", exc)
                await backoff.sleep()
