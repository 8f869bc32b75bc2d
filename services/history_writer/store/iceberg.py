"""The history as Apache Iceberg tables (the default backend): the store interface over
``marketbus.history`` (writer: exactly-once appends; reader: reads through the catalog;
maintenance). Catalog and warehouse come from ``MARKETBUS_LAKEHOUSE_*`` (see
``marketbus.history.lakehouse``); by default a SQLite catalog and a warehouse under the
writer's data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute

from marketbus.history import maintenance
from marketbus.history.lakehouse import STREAM_KINDS, LakehouseSettings
from marketbus.history.reader import HistoryReader
from marketbus.history.writer import HistoryTableWriter

from ..schema import KINDS, Decoded
from .base import Cursor, HistoryStore, Selector, WriteResult

# pyiceberg's catalog, table and metadata objects are not thread-safe (a commit running next to a
# lookup of the same table raised "dictionary changed size during iteration"): every table
# operation of this process runs on one thread, in order.
_ICEBERG_THREAD = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iceberg")


async def _on_iceberg_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_ICEBERG_THREAD, functools.partial(fn, *args, **kwargs))

log = logging.getLogger("marketbus.history_writer.iceberg")


class AckFloors:
    """The ack floors of the writers' durable consumers, from JetStream (consumer info), at most
    every ``interval_s`` per stream. A snapshot whose messages are all at or below the floor is
    acked for good (never redelivered), so it can be expired right away: that keeps the table
    metadata, and with it the cost of every commit, small."""

    def __init__(self, connect_options: dict[str, Any], durables: dict[str, str], interval_s: float = 1.0) -> None:
        self.connect_options = connect_options
        self.durables = durables  # stream -> durable consumer
        self.interval_s = interval_s
        self.nc: Any = None
        self._asked: dict[str, float] = {}

    async def start(self) -> None:
        import nats

        with contextlib.suppress(Exception):  # no NATS: floors come from the writer's maintenance loop
            self.nc = await nats.connect(**self.connect_options)

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def floor(self, stream: str) -> int | None:
        durable = self.durables.get(stream)
        now = time.monotonic()
        if self.nc is None or durable is None or now - self._asked.get(stream, 0.0) < self.interval_s:
            return None
        self._asked[stream] = now
        try:
            info = await self.nc.jetstream().consumer_info(stream, durable)
        except Exception as exc:
            log.debug("consumer info %s/%s: %r", stream, durable, exc)
            return None
        return info.ack_floor.stream_seq if info.ack_floor else 0


class IcebergStore(HistoryStore):
    backend = "iceberg"

    def __init__(self, settings: LakehouseSettings, *, writer_id: str | None = None, compact_min_files: int = 8,
                 snapshot_min_age_s: float = 60.0, orphan_age_s: float = 3600.0,
                 ack_floors: AckFloors | None = None) -> None:
        self.settings = settings
        self.ack_floors = ack_floors
        self.writer = HistoryTableWriter(settings, writer_id or uuid.uuid4().hex[:12])
        self.reader = HistoryReader(settings, self.writer.tables, run_sync=_on_iceberg_thread)
        self.compact_min_files = compact_min_files
        self.snapshot_min_age_s = snapshot_min_age_s
        self.orphan_age_s = orphan_age_s
        self.last_maintenance = maintenance.MaintenanceReport()
        # redelivered sequences asked about by the intake, not found stored: checked again at commit
        self._redelivered: dict[str, set[int]] = {}
        self._redelivered_at: dict[str, list[tuple[float, int]]] = {}

    async def open(self) -> None:
        await _on_iceberg_thread(lambda: self.writer.tables.catalog)
        if self.ack_floors is not None:
            await self.ack_floors.start()

    async def close(self) -> None:
        if self.ack_floors is not None:
            await self.ack_floors.close()

    # --- exactly once ------------------------------------------------------------------------
    async def prepare_stream(self, stream: str, ack_floor: int) -> None:
        self.writer.forget_below(stream, ack_floor)

    def forget_below(self, stream: str, ack_floor: int) -> None:
        self.writer.forget_below(stream, ack_floor)
        # a redelivered message never written (e.g. dead-lettered) is forgotten once acked and
        # long past any flush that could still hold it
        pending, ages = self._redelivered.get(stream), self._redelivered_at.get(stream)
        if pending and ages:
            old = time.monotonic() - 300.0
            while ages and ages[0][0] < old:
                _, seq = ages.pop(0)
                if seq <= ack_floor:
                    pending.discard(seq)

    async def stored_seqs(self, stream: str, seqs: Sequence[int]) -> set[int]:
        stored = await _on_iceberg_thread(self.writer.stored, stream, STREAM_KINDS.get(stream, ()), seqs)
        fresh = [s for s in seqs if s not in stored]
        self._redelivered.setdefault(stream, set()).update(fresh)
        now = time.monotonic()
        self._redelivered_at.setdefault(stream, []).extend((now, s) for s in fresh)
        return stored

    async def write(self, stream: str, decoded: Decoded) -> WriteResult:
        if self.ack_floors is not None:
            floor = await self.ack_floors.floor(stream)
            if floor is not None:
                self.forget_below(stream, floor)

        batches = {kind: pa.concat_tables(parts) if len(parts) > 1 else parts[0]
                   for kind, parts in decoded.tables.items()}
        batches = {kind: rows for kind, rows in batches.items() if rows.num_rows}
        if not batches:
            return WriteResult()
        writer = self.writer
        # 1. the tables, on the catalog's thread; 2. the data files, on a worker thread (Arrow and
        # Parquet, the GIL released most of the time): they are written while the previous flush
        # commits; 3. the exactly-once check and the commit, on the catalog's thread again
        tables = await _on_iceberg_thread(lambda: {kind: writer.tables.get(kind, create=True) for kind in batches})
        prepared = await asyncio.to_thread(
            lambda: [writer.prepare(tables[kind], kind, stream, rows) for kind, rows in batches.items()])

        def commit() -> WriteResult:
            result = WriteResult()
            for ready in prepared:
                redelivered = self._redelivered.get(stream)
                recheck = None
                if redelivered:
                    seqs = set(pa.compute.unique(batches[ready.kind].column("_seq")).to_pylist())
                    recheck = seqs & redelivered
                stored, skipped = writer.commit(ready, recheck)
                if recheck and redelivered:
                    redelivered.difference_update(recheck)
                result.rows += stored
                result.duplicates += skipped
                result.files += 1 if stored else 0
            return result

        return await _on_iceberg_thread(commit)

    # --- maintenance -------------------------------------------------------------------------
    async def compact(self) -> int:
        report = await _on_iceberg_thread(
            maintenance.maintain, self.writer.tables, KINDS, dict(self.writer.floors),
            min_files=self.compact_min_files, snapshot_min_age_s=self.snapshot_min_age_s,
            orphan_age_s=self.orphan_age_s)
        self.last_maintenance = report
        return report.files_merged

    async def apply_retention(self, days_by_kind: dict[str, float], now_ns: int) -> int:
        def run() -> int:
            removed = 0
            for kind, table in self.writer.tables.existing(list(KINDS)).items():
                days = days_by_kind.get(kind, days_by_kind.get("default"))
                if days is not None:
                    removed += maintenance.apply_retention(table, days, now_ns)
            return removed

        return await _on_iceberg_thread(run)

    # --- reads -------------------------------------------------------------------------------
    async def read_batches(
        self, selector: Selector, start_ns: int, end_ns: int, *, after: Cursor | None = None,
        limit: int | None = None, batch_rows: int = 65_536, columns: Sequence[str] | None = None,
    ) -> AsyncIterator[tuple[str, pa.RecordBatch]]:
        async for item in self.reader.read_batches(selector, start_ns, end_ns, after=after, limit=limit,
                                                   batch_rows=batch_rows, columns=columns):
            yield item

    async def coverage_rows(self, selector: Selector, start_ns: int, end_ns: int,
                            max_gap_ns: dict[str, int]) -> list[tuple[str, str, str, str, int, int, int]]:
        return await _on_iceberg_thread(self.reader.coverage_rows, selector, start_ns, end_ns, max_gap_ns)

    def health(self) -> dict[str, Any]:
        return {"commits": self.writer.commits, "commit_retries": self.writer.retries}
