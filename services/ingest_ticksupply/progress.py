"""Ingest progress per datastream, in the JetStream KV bucket ``ingest_state`` (streams.INGEST_STATE).

Key ``ticksupply.<namespace>.ds.<datastream_id>``, value (JSON)::

    {"datastream_id": 101,
     "last_end_ns": 1700000000000000000,      # every row before this is published and acked
     "inflight": {"start_ns", "end_ns",       # the window being exported
                  "idempotency_key",          # persisted BEFORE the create: a restart re-POSTs
                                              # with it and gets the same export back
                  "export_id",                # once created
                  "done_artifacts": [...],    # artifact ids published and acked
                  "events": 0, "attempts": 0},
     "events_total": 0, "failed_windows": 0}

Key ``...ds.<id>.holes``: the end (ns) of the last subscription hole reported as a ``gap``.

A restart resumes the in-flight export (same export id, done artifacts skipped); an artifact
that was half-published is published again with the same message ids (JetStream duplicates).
"""

from __future__ import annotations

import time

import msgspec
from nats.js.kv import KeyValue

from marketbus.vendor.cursor import CursorStore


class Inflight(msgspec.Struct, kw_only=True):
    start_ns: int
    end_ns: int
    idempotency_key: str
    export_id: str | None = None
    done_artifacts: list[str] = []
    events: int = 0
    attempts: int = 0
    resumed: bool = False  # picked up from the store by a new instance


class DatastreamProgress(msgspec.Struct, kw_only=True):
    datastream_id: int
    last_end_ns: int | None = None
    inflight: Inflight | None = None
    events_total: int = 0
    failed_windows: int = 0  # windows that failed and are not re-ingested yet (a gap is open)
    updated_ts: int = 0


class ProgressStore:
    """The progress cursors (:class:`~marketbus.vendor.cursor.CursorStore`) and the marks next
    to them."""

    def __init__(self, kv: KeyValue, namespace: str = "default") -> None:
        self.kv = kv
        self.namespace = namespace
        self.cursors = CursorStore(kv, "ticksupply", "ds", DatastreamProgress, namespace=namespace)
        self.marks = CursorStore(kv, "ticksupply", "ds", int, namespace=namespace)

    def key(self, datastream_id: int) -> str:
        return self.cursors.key(str(datastream_id))

    async def get(self, datastream_id: int) -> DatastreamProgress:
        saved = await self.cursors.get(str(datastream_id))
        return saved if saved is not None else DatastreamProgress(datastream_id=datastream_id)

    async def get_mark(self, datastream_id: int, name: str) -> int:
        """A small per-datastream integer kept next to the progress (e.g. holes reported up to)."""
        return await self.marks.get((str(datastream_id), name)) or 0

    async def put_mark(self, datastream_id: int, name: str, value: int) -> None:
        await self.marks.put((str(datastream_id), name), value)

    async def put(self, progress: DatastreamProgress) -> None:
        progress.updated_ts = time.time_ns()
        await self.cursors.put(str(progress.datastream_id), progress)
