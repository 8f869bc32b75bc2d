"""TickSupply replays (``replay.ticksupply``): export the requested range in windows of at most
``max_window_s`` and publish it as ``replay=True`` batches (ids salted with the request)."""

from __future__ import annotations

import uuid

from marketbus.contracts import subjects
from marketbus.contracts.jobs import ReplayRequest
from marketbus.runtime.ingest import ReplayUnsupported

from . import normalize
from .live import ExportFailed
from .normalize import DatastreamRef, MalformedPayload
from .parts import TickSupplyHost

KIND_OF_STREAM = {"trade": "trade", "depth": "quote"}


class TickSupplyBackfill:
    def __init__(self, ingestor: TickSupplyHost) -> None:
        self.ing = ingestor

    async def replay(self, request: ReplayRequest) -> int:
        """Returns the number of events, once all are acked."""
        ing = self.ing
        ds = await self.datastream_for(request)
        step = int(ing.settings.max_window_s * 1e9)
        count = 0
        for lo in range(request.start_ns, request.end_ns, step):
            hi = min(request.end_ns, lo + step)
            job = await ing.api.create_export(ds.datastream_id, lo, hi, str(uuid.uuid4()))
            ing.exports.exports_created += 1
            try:
                await ing.exports.wait_export(job["id"])
            except ExportFailed as exc:
                if "no data" in str(exc.export.get("reason") or "").lower():
                    continue
                raise
            count += await ing.exports.download_and_publish(ds, job["id"], replay=True, skip=set(),
                                                            batch_salt=f"{request.request_id or job['id']}:{lo}")
        ing.log.info("replay %s: %d %s events of %s/%s", request.request_id, count, request.kind, ds.venue, ds.symbol)
        return count

    async def datastream_for(self, request: ReplayRequest) -> DatastreamRef:
        ing = self.ing
        stream_type = next((t for t, k in KIND_OF_STREAM.items() if k == request.kind), None)
        if stream_type is None:
            raise ReplayUnsupported(f"ticksupply replays trade and quote, not {request.kind}")
        candidates = [ds for ds in ing.datastreams.values()
                      if ds.venue == request.venue and ds.symbol == request.symbol and ds.stream_type == stream_type]
        if not candidates:
            instrument = subjects.denormalize_symbol(request.symbol)
            async for page in ing.api.datastream_pages(exchange=request.venue, instrument=instrument,
                                                       stream_type=stream_type):
                for item in page:
                    try:
                        candidates.append(normalize.datastream_ref(item))
                    except MalformedPayload:  # not ours to dead-letter: the catalog sync does
                        continue
        candidates.sort(key=lambda d: (d.wire_format != "json", d.datastream_id))
        if not candidates:
            raise ReplayUnsupported(f"no TickSupply {stream_type} datastream for {request.venue}/{request.symbol}")
        subscribed = {int(s.get("datastream_id", 0)) for s in await ing.api.subscriptions()
                      if s.get("status") != "deleted"}
        for ds in candidates:
            if ds.datastream_id in subscribed:
                return ds
        raise ReplayUnsupported(f"no TickSupply subscription to {request.venue}/{request.symbol} {stream_type}: "
                                "only subscribed datastreams can be exported")
