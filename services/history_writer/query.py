"""History over NATS, server half: the streamed query protocol and the coverage request.

The protocol and its client are documented in ``marketbus.clients.history`` (the client half,
which the CLI, the export orchestrator and users' code use). A failed request is answered with
the contracts' ``ErrorReply`` (``bad_request`` for a bad selector or cursor, ``unavailable``
when the store fails), as the last message of a query.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from marketbus.clients.errors import RequestError
from marketbus.clients.history import (  # noqa: F401 - the client half, re-exported for existing callers
    make_query,
    query_chunks,
    query_events,
    query_pages,
    request_coverage,
)
from marketbus.contracts import errors as codes
from marketbus.contracts.errors import ErrorReply
from marketbus.contracts.jobs import CoverageQuery, CoverageReply, HistoryChunk, HistoryQuery

from .store.base import Cursor, HistoryStore, Selector

HistoryQueryError = RequestError  # the name callers used before the client half moved to marketbus


# --- server side ---------------------------------------------------------------------------
async def serve_query(store: HistoryStore, query: HistoryQuery, *, max_rows: int = 1_000_000,
                      max_chunk_bytes: int = 512 * 1024) -> AsyncIterator[HistoryChunk | ErrorReply]:
    """The chunks answering ``query`` (the last one has ``last=True``), or chunks and then an
    ErrorReply when the query fails."""
    try:
        selector = Selector.of(query.selector)
        after = Cursor.decode(query.cursor)
    except (ValueError, TypeError) as exc:
        yield ErrorReply(code=codes.BAD_REQUEST, message=f"bad request: {exc}")
        return
    limit = max(0, min(query.limit, max_rows))
    chunk_rows = max(1, query.chunk_rows)
    events: list[msgspec.Raw] = []
    size = 0
    n = 0
    last_cursor: Cursor | None = None
    more = False
    try:
        async for cursor, data in store.read_json(selector, query.start_ns, query.end_ns, after=after, limit=limit + 1):
            if n >= limit:
                more = True
                break
            if events and (len(events) >= chunk_rows or size + len(data) + 1 > max_chunk_bytes):
                yield HistoryChunk(events=events, last=False)
                events, size = [], 0
            events.append(msgspec.Raw(data))
            size += len(data) + 1
            n += 1
            last_cursor = cursor
    except Exception as exc:
        if events:
            yield HistoryChunk(events=events, last=False)
        yield ErrorReply(code=codes.UNAVAILABLE, message=f"query failed: {exc!r}")
        return
    yield HistoryChunk(events=events, last=True, next_cursor=last_cursor.encode() if (more and last_cursor) else None)


async def serve_coverage(store: HistoryStore, query: CoverageQuery,
                         max_gap_ns: dict[str, int] | None = None) -> CoverageReply | ErrorReply:
    try:
        streams = await store.coverage(Selector.of(query.selector), query.start_ns, query.end_ns, max_gap_ns)
    except Exception as exc:
        return ErrorReply(code=codes.UNAVAILABLE, message=f"coverage failed: {exc!r}")
    return CoverageReply(streams=streams)
