"""Where a session reads its events from: anything with the :class:`EventSource` shape.

:class:`HistorySource` reads through the history writer's query protocol over NATS
(``marketbus.clients.HistoryClient``). A reader of the history tables in-process can replace it
without touching the sessions: it only has to yield each selected event's published JSON in
history order ``(ts_event, stream, seq, idx)``, in chunks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from marketbus.clients import HistoryClient
from marketbus.clients.history import make_query
from marketbus.contracts.jobs import StreamSelector


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
