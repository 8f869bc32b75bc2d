"""The history store interface: what the writer writes through and what readers (the NATS query
API, the CLI, the export orchestrator in-process) read through.

Read API (stable, for the export orchestrator)::

    store = open_store(settings)            # or IcebergStore(LakehouseSettings) / PostgresStore(dsn)
    await store.open()
    sel = Selector.of(kind="trade", source="finx", symbol="BTC*")  # fnmatch wildcards per part
    async for kind, batch in store.read_batches(sel, start_ns, end_ns):   # pyarrow.RecordBatch
        ...                                  # columns: see schema.SCHEMAS[kind].schema
    async for event in store.read_events(sel, start_ns, end_ns):          # contract events
        ...
    streams = await store.coverage(sel, start_ns, end_ns)                 # list[StreamCoverage]

Order: ``read_batches`` yields, kind after kind (sorted by name), the rows of that kind ordered
by ``(ts_event, _stream, _seq, _idx)``; ``read_events`` / ``read_json`` merge every kind into
one stream in that same global order. The time range is ``start_ns <= ts_event < end_ns``.
A :class:`Cursor` (``after=``) resumes strictly after a position of that order.
"""

from __future__ import annotations

import abc
import heapq
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import pyarrow as pa

from marketbus.contracts.jobs import StreamCoverage
from marketbus.history.selector import Cursor, Selector

from ..schema import SCHEMAS, Decoded

__all__ = ["Cursor", "HistoryStore", "Selector", "WriteResult"]


class WriteResult(msgspec.Struct):
    rows: int = 0  # rows stored
    duplicates: int = 0  # rows skipped: already stored (redelivery) or duplicate event id
    files: int = 0


class HistoryStore(abc.ABC):
    """A history backend. Writes come from one or more writer processes; reads from anyone."""

    backend: str = "?"

    async def open(self) -> None:  # noqa: B027
        """Connect / create tables / repair partial state left by a crash."""

    async def close(self) -> None:  # noqa: B027
        pass

    # --- exactly-once support -------------------------------------------------------------
    async def prepare_stream(self, stream: str, ack_floor: int) -> None:  # noqa: B027
        """Before consuming ``stream``: load what is needed to recognise redeliveries above the
        consumer's ack floor (everything at or below it was acked, so was stored)."""

    def forget_below(self, stream: str, ack_floor: int) -> None:  # noqa: B027
        """Drop exactly-once bookkeeping at or below the ack floor (never redelivered)."""

    @abc.abstractmethod
    async def stored_seqs(self, stream: str, seqs: Sequence[int]) -> set[int]:
        """Which of these stream sequences are already stored (redeliveries to skip)."""

    @abc.abstractmethod
    async def write(self, stream: str, decoded: Decoded) -> WriteResult:
        """Store the rows of a batch of messages durably (all or nothing per message); rows whose
        event id is already stored are skipped. Returns once the data is durable."""

    # --- maintenance -----------------------------------------------------------------------
    async def compact(self) -> int:
        """Merge small files/chunks; returns how many were merged away."""
        return 0

    @abc.abstractmethod
    async def apply_retention(self, days_by_kind: dict[str, float], now_ns: int) -> int:
        """Delete rows older than the retention of their kind; returns rows/partitions removed."""

    # --- read API --------------------------------------------------------------------------
    @abc.abstractmethod
    def read_batches(
        self, selector: Selector, start_ns: int, end_ns: int, *, after: Cursor | None = None,
        limit: int | None = None, batch_rows: int = 65_536, columns: Sequence[str] | None = None,
    ) -> AsyncIterator[tuple[str, pa.RecordBatch]]:
        """(kind, record batch) in order (see module docstring); ``limit`` counts rows per kind."""

    @abc.abstractmethod
    async def coverage_rows(self, selector: Selector, start_ns: int, end_ns: int,
                            max_gap_ns: dict[str, int]) -> list[tuple[str, str, str, str, int, int, int]]:
        """Covered runs per stream: (kind, source, venue, symbol, first_ts, last_ts, rows): runs of
        events with no two consecutive events further apart than ``max_gap_ns[kind]``."""

    async def coverage(self, selector: Selector, start_ns: int, end_ns: int,
                       max_gap_ns: dict[str, int] | None = None) -> list[StreamCoverage]:
        """Covered time ranges and feed-reported gaps per stream (see coverage.py)."""
        from marketbus.history.coverage import DEFAULT_MAX_GAP_NS, build_coverage

        gaps_sel = Selector(kind="feed_status", source=selector.source)
        statuses = [e async for e in self.read_events(gaps_sel, 0, 2**63 - 1)]
        runs = await self.coverage_rows(selector, start_ns, end_ns, max_gap_ns or DEFAULT_MAX_GAP_NS)
        return build_coverage(runs, statuses, selector, start_ns, end_ns)

    async def read_json(
        self, selector: Selector, start_ns: int, end_ns: int, *, after: Cursor | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[tuple[Cursor, bytes]]:
        """(position, event JSON as published) of every kind merged in the global order."""
        kinds = selector.kinds()

        async def one(kind: str) -> list[tuple[Cursor, bytes]]:
            sel = Selector(kind=kind, source=selector.source, venue=selector.venue, symbol=selector.symbol)
            out: list[tuple[Cursor, bytes]] = []
            schema = SCHEMAS[kind]
            async for _, batch in self.read_batches(sel, start_ns, end_ns, after=after, limit=limit):
                table = pa.Table.from_batches([batch])
                keys = zip(*(table.column(c).to_pylist() for c in ("ts_event", "_stream", "_seq", "_idx")))
                out.extend(zip((Cursor(*k) for k in keys), schema.table_to_json(table)))
            return out

        lists = [await one(k) for k in kinds]
        for n, item in enumerate(heapq.merge(*lists, key=lambda x: x[0]), start=1):
            yield item
            if limit is not None and n >= limit:
                return

    async def read_events(
        self, selector: Selector, start_ns: int, end_ns: int, *, after: Cursor | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[Any]:
        """Contract events (``marketbus.contracts``) in the global order."""
        from marketbus.contracts import codec

        async for _, data in self.read_json(selector, start_ns, end_ns, after=after, limit=limit):
            yield codec.decode(data)

    async def read_table(self, selector: Selector, start_ns: int, end_ns: int, **kw: Any) -> dict[str, pa.Table]:
        """Everything selected as one Arrow table per kind (convenience for small reads)."""
        out: dict[str, list[pa.RecordBatch]] = {}
        async for kind, batch in self.read_batches(selector, start_ns, end_ns, **kw):
            out.setdefault(kind, []).append(batch)
        return {k: pa.Table.from_batches(v) for k, v in out.items()}
