"""Where a session reads its events from: anything with the :class:`EventSource` shape.

- :class:`TableSource` reads the history tables (Apache Iceberg) in-process through
  ``marketbus.history.reader.HistoryReader``: the same catalog and warehouse as the history
  writer and the export orchestrator (``MARKETBUS_LAKEHOUSE_*``, by default the embedded catalog
  under ``<data dir>/history``). The fast path: no request/reply, no JSON crossing the bus twice.
- :class:`HistorySource` reads through the history writer's query protocol over NATS
  (``marketbus.clients.HistoryClient``): what works with every history backend (Iceberg
  and PostgreSQL) and from a host that cannot reach the warehouse.

Both yield each selected event's published JSON in history order ``(ts_event, stream, seq, idx)``,
in chunks; both make the JSON with ``KindSchema.table_to_json`` (the history writer answers a
query with it), so a session sends the same bytes whichever source it reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from marketbus.clients import HistoryClient, RequestError
from marketbus.clients.history import make_query
from marketbus.contracts import errors as codes
from marketbus.contracts.jobs import StreamSelector
from marketbus.history.lakehouse import LakehouseSettings
from marketbus.history.reader import HistoryReader
from marketbus.history.schema import FEED_STATUS, ORDER_COLUMNS, SCHEMAS
from marketbus.history.selector import Selector

log = logging.getLogger("marketbus.replay.source")
DAY_NS = 86_400 * 1_000_000_000


class EventSource(Protocol):
    async def count(self, selector: StreamSelector, start_ns: int, end_ns: int) -> int:
        """Stored events of ``selector`` with ``start_ns <= ts_event < end_ns`` (0: nothing to play)."""
        ...

    def chunks(self, selector: StreamSelector, start_ns: int, end_ns: int) -> AsyncIterator[list[Any]]:
        """The events' published JSON (bytes or a buffer such as ``msgspec.Raw``), oldest first,
        a list at a time."""
        ...


class HistorySource:
    """History over NATS (request/reply to the history writer), paged ``page_rows`` at a time."""

    def __init__(self, nc: Any, *, timeout: float = 30.0, page_rows: int = 200_000, chunk_rows: int = 5_000) -> None:
        self.client = HistoryClient(nc, timeout=timeout)
        self.page_rows = page_rows
        self.chunk_rows = chunk_rows

    async def count(self, selector: StreamSelector, start_ns: int, end_ns: int) -> int:
        reply = await self.client.coverage(selector, start_ns, end_ns)
        return sum(s.rows for s in reply.streams if s.kind != "feed_status")

    async def chunks(self, selector: StreamSelector, start_ns: int, end_ns: int) -> AsyncIterator[list[Any]]:
        query = make_query(selector, start_ns, end_ns, limit=self.page_rows, chunk_rows=self.chunk_rows)
        async for events, _ in self.client.pages(query):
            if events:
                yield events


class TableSource:
    """The history tables, read in-process one UTC day at a time (memory stays bounded by a day of
    the selected streams); the next day is read while the session sends this one.

    Several kinds (a ``*`` kind, or reference data) are merged in the history order per day. A
    table that cannot be read (catalog or warehouse unreachable) raises :class:`RequestError`
    (``unavailable``), as the NATS source does when the history writer does not answer.
    """

    def __init__(self, reader: HistoryReader, *, chunk_rows: int = 5_000) -> None:
        self.reader = reader
        self.chunk_rows = chunk_rows

    @staticmethod
    def _kinds(selector: StreamSelector | Selector) -> tuple[Selector, list[Selector]]:
        sel = Selector.of(selector)
        return sel, [Selector(kind=k, source=sel.source, venue=sel.venue, symbol=sel.symbol)
                     for k in sel.kinds() if k != FEED_STATUS]

    async def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kw)
        except Exception as exc:
            raise RequestError(codes.UNAVAILABLE, f"history tables unreadable: {exc!r}") from None

    async def count(self, selector: StreamSelector, start_ns: int, end_ns: int) -> int:
        _, kinds = self._kinds(selector)
        total = 0
        for ksel in kinds:
            table = await self._run(self.reader.read_kind, ksel.kind, ksel, start_ns, end_ns, columns=["ts_event"])
            total += table.num_rows
        return total

    async def chunks(self, selector: StreamSelector, start_ns: int, end_ns: int) -> AsyncIterator[list[Any]]:
        _, kinds = self._kinds(selector)
        days: set[int] = set()
        for ksel in kinds:
            days.update(await self._run(self.reader.days, ksel.kind, ksel, start_ns, end_ns))
        windows = [(max(start_ns, d), min(end_ns, d + DAY_NS)) for d in sorted(days)]
        windows = [w for w in windows if w[0] < w[1]]
        if not windows:
            return
        pending = asyncio.ensure_future(self._run(self._window_json, kinds, *windows[0]))
        try:
            for i in range(len(windows)):
                events = await pending
                if i + 1 < len(windows):  # read the next day while this one is sent
                    pending = asyncio.ensure_future(self._run(self._window_json, kinds, *windows[i + 1]))
                for at in range(0, len(events), self.chunk_rows):
                    yield events[at:at + self.chunk_rows]
        finally:
            if not pending.done():
                pending.cancel()

    def _window_json(self, kinds: list[Selector], lo: int, hi: int) -> list[bytes]:
        """Every selected event of ``[lo, hi)`` as its published JSON, in the history order."""
        tables: list[tuple[str, pa.Table]] = []
        for ksel in kinds:
            table = self.reader.read_kind(ksel.kind, ksel, lo, hi)
            if table.num_rows:
                tables.append((ksel.kind, table))
        if len(tables) == 1:
            kind, table = tables[0]
            return SCHEMAS[kind].table_to_json(table, canonical_decimals=True)  # read_kind: sorted, canonical
        payloads: list[bytes] = []
        keys = []
        for kind, table in tables:
            payloads += SCHEMAS[kind].table_to_json(table, canonical_decimals=True)
            keys.append(table.select(list(ORDER_COLUMNS)).cast(_ORDER_SCHEMA))
        if not keys:
            return []
        order = pc.sort_indices(pa.concat_tables(keys), [(c, "ascending") for c in ORDER_COLUMNS]).to_pylist()
        return [payloads[i] for i in order]


_ORDER_SCHEMA = pa.schema([("ts_event", pa.int64()), ("_stream", pa.string()), ("_seq", pa.int64()),
                           ("_idx", pa.int32())])


def open_table_source(history_dir: str | None, *, chunk_rows: int = 5_000) -> TableSource:
    """A :class:`TableSource` on the configured catalog (raises when it cannot be opened)."""
    reader = HistoryReader(LakehouseSettings.from_env(history_dir or None))
    _ = reader.tables.catalog  # connect now: an unreachable catalog means the NATS source
    return TableSource(reader, chunk_rows=chunk_rows)
