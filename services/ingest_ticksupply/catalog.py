"""The TickSupply catalog: exchanges -> ``Venue``, instruments -> ``Instrument`` (datastream ids in
attributes), datastreams -> ``InstrumentClass(class_type="datastream")`` on ``ref.*``; and the
configured datastreams resolved against it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import msgspec

from marketbus.runtime.backoff import Backoff

from . import normalize
from .client import MalformedReply
from .normalize import DatastreamRef
from .parts import TickSupplyHost

SUPPORTED_STREAM_TYPES = ("trade", "depth")


class TickSupplyCatalog:
    def __init__(self, ingestor: TickSupplyHost) -> None:
        self.ing = ingestor
        self.datastreams: dict[int, DatastreamRef] = {}  # the ones collected (feed control's active feeds)
        self.refs: dict[int, DatastreamRef] = {}  # every datastream looked up, by id

    async def loop(self) -> None:
        ing = self.ing
        backoff = Backoff(1.0, 60.0)
        while True:
            if await ing.guarded("catalog sync", self.sync, backoff):
                if ing.settings.catalog_interval_s <= 0:
                    return
                await asyncio.sleep(ing.settings.catalog_interval_s)

    async def _datastream(self, item: Any) -> DatastreamRef | None:
        return await self.ing.frames.normalize("datastreams", lambda: msgspec.json.encode(item),
                                               normalize.datastream_ref, item)

    async def lookup(self, ds_id: int) -> DatastreamRef | None:
        """A datastream of the vendor's catalog (feed control's validation), None when not listed."""
        if ds_id in self.refs:
            return self.refs[ds_id]
        ing = self.ing
        async for page in ing.api.datastream_pages():
            ing.metrics.frames_in.labels(ing.source, "datastreams").inc()
            for item in page:
                if isinstance(item, dict) and item.get("datastream_id") == ds_id:
                    ds = await self._datastream(item)
                    if ds is not None:
                        self.refs[ds_id] = ds
                    return ds
        return None

    async def resolve_datastreams(self) -> dict[int, DatastreamRef]:
        """The configured DATASTREAMS (the feed seed) found in the catalog and readable, one of
        each set of twins."""
        ing = self.ing
        chosen: dict[int, DatastreamRef] = {}
        wanted = set(ing.settings.datastreams)
        found: dict[int, DatastreamRef] = {}
        async for page in ing.api.datastream_pages():
            ing.metrics.frames_in.labels(ing.source, "datastreams").inc()
            for item in page:
                if isinstance(item, dict) and item.get("datastream_id") in wanted:
                    ds = await self._datastream(item)
                    if ds is not None:
                        found[item["datastream_id"]] = ds
        covered: dict[tuple[str, str, str], DatastreamRef] = {}  # (exchange, instrument, stream type) -> it
        for ds_id in sorted(wanted, key=lambda i: (i not in found or found[i].wire_format != "json", i)):
            ds = found.get(ds_id)
            if ds is None:
                ing.log.error("datastream %s is not in the TickSupply catalog: skipped", ds_id)
            elif ds.stream_type not in SUPPORTED_STREAM_TYPES:
                ing.log.error("datastream %s is a %s stream, which this ingestor does not read: skipped",
                              ds_id, ds.stream_type)
            elif (twin := covered.get((ds.exchange, ds.instrument, ds.stream_type))) is not None:
                # the same data in another wire format: ingesting both would publish every event twice
                ing.log.error("datastreams %s (%s) and %s (%s) carry the same %s %s %s: ingesting %s only; "
                              "list one of them in DATASTREAMS", twin.datastream_id, twin.wire_format, ds_id,
                              ds.wire_format, ds.exchange, ds.instrument, ds.stream_type, twin.datastream_id)
            else:
                covered[(ds.exchange, ds.instrument, ds.stream_type)] = ds
                chosen[ds_id] = self.refs[ds_id] = ds
        return chosen

    async def sync(self) -> int:
        """Publish the catalog as reference events; returns how many were published."""
        ing = self.ing
        ts = ing.now_ns()
        futures: list[Awaitable[Any]] = []
        exchanges = await ing.api.exchanges()
        if not isinstance(exchanges, list):
            raise MalformedReply(f"{ing.api.base_url}/exchanges", msgspec.json.encode(exchanges), "not a list")
        ing.metrics.frames_in.labels(ing.source, "exchanges").inc()
        wanted = {e.lower() for e in ing.settings.catalog_exchanges}
        codes = []
        for exchange in exchanges:
            venue = await ing.frames.normalize("exchanges", lambda: msgspec.json.encode(exchange),  # noqa: B023 (called within this iteration)
                                               normalize.venue_event, exchange, ts)
            if venue is None or (wanted and venue.venue not in wanted):
                continue
            codes.append(exchange["code"])
            futures.append(await ing.emit(venue))
        for code in codes:
            by_instrument: dict[str, list[DatastreamRef]] = {}
            async for page in ing.api.datastream_pages(exchange=code):
                ing.metrics.frames_in.labels(ing.source, "datastreams").inc()
                for item in page:
                    ds = await self._datastream(item)
                    if ds is None:
                        continue
                    by_instrument.setdefault(ds.instrument, []).append(ds)
                    futures.append(await ing.emit(normalize.datastream_event(ds, ts)))
            async for page in ing.api.instrument_pages(code):
                ing.metrics.frames_in.labels(ing.source, "instruments").inc()
                for item in page:
                    symbol = item.get("symbol") if isinstance(item, dict) else None
                    inst = await ing.frames.normalize(
                        "instruments", lambda: msgspec.json.encode(item), normalize.instrument_event, code, item,  # noqa: B023 (called within this iteration)
                        by_instrument.get(symbol, []) if isinstance(symbol, str) else [], ts)
                    if inst is not None:
                        futures.append(await ing.emit(inst))
        await ing.acked(futures)
        ing.log.info("catalog synced: %d reference events", len(futures))
        return len(futures)
