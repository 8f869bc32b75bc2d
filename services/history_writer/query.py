"""History over NATS: the streamed query protocol and the coverage request, server and client.

Query protocol (``history.query``, :class:`HistoryQuery` -> :class:`HistoryChunk` replies):

1. The client subscribes to a fresh inbox, then publishes the JSON ``HistoryQuery`` to
   ``history.query`` with ``reply=<inbox>``. Writers answer in a queue group, so exactly one
   writer serves a request.
2. The server publishes one or more ``HistoryChunk`` messages to the inbox, in order. Each holds
   at most ``query.chunk_rows`` events and at most ``query_max_chunk_bytes`` bytes of JSON (so a
   chunk always fits in one NATS message); ``events`` are the events exactly as published (one
   JSON object each), oldest first: order ``(ts_event, stream, seq, idx)`` over every selected
   kind.
3. The last chunk has ``last=True``. If ``query.limit`` stopped the query before the end of the
   range, the last chunk's ``next_cursor`` is set: send the same query with ``cursor=`` that
   value to get the next page. ``error`` set on a (last) chunk means the query failed (bad
   selector or cursor, store error); the chunks before it are valid.
4. If no chunk arrives for ``timeout`` seconds the client gives up (writer gone). A "no
   responders" status means no writer is running.

Selector parts are fnmatch patterns (``*`` any, ``BTC*``); the time range is
``start_ns <= ts_event < end_ns``.

Coverage (``history.coverage``): ``CoverageQuery`` -> one ``CoverageReply`` (see coverage.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient

from marketbus.contracts import codec, subjects
from marketbus.contracts.jobs import CoverageQuery, CoverageReply, HistoryChunk, HistoryQuery, StreamSelector

from .store.base import Cursor, HistoryStore, Selector


class HistoryQueryError(RuntimeError):
    pass


# --- server side ---------------------------------------------------------------------------
async def serve_query(store: HistoryStore, query: HistoryQuery, *, max_rows: int = 1_000_000,
                      max_chunk_bytes: int = 512 * 1024) -> AsyncIterator[HistoryChunk]:
    """The chunks answering ``query`` (the last one has ``last=True``)."""
    try:
        selector = Selector.of(query.selector)
        after = Cursor.decode(query.cursor)
    except (ValueError, TypeError) as exc:
        yield HistoryChunk(events=[], last=True, error=f"bad request: {exc}")
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
    except Exception as exc:  # noqa: BLE001 - reported to the client in the last chunk
        yield HistoryChunk(events=events, last=True, error=f"query failed: {exc!r}")
        return
    yield HistoryChunk(events=events, last=True, next_cursor=last_cursor.encode() if (more and last_cursor) else None)


async def serve_coverage(store: HistoryStore, query: CoverageQuery, max_gap_ns: dict[str, int] | None = None) -> CoverageReply:
    try:
        streams = await store.coverage(Selector.of(query.selector), query.start_ns, query.end_ns, max_gap_ns)
    except Exception as exc:  # noqa: BLE001
        return CoverageReply(streams=[], error=f"coverage failed: {exc!r}")
    return CoverageReply(streams=streams)


# --- client side ---------------------------------------------------------------------------
def make_query(selector: Selector | StreamSelector | str, start_ns: int, end_ns: int, *, limit: int = 10_000,
               cursor: str | None = None, chunk_rows: int = 5_000) -> HistoryQuery:
    if isinstance(selector, str):
        selector = Selector.parse(selector)
    sel = selector.to_contract() if isinstance(selector, Selector) else selector
    return HistoryQuery(selector=sel, start_ns=start_ns, end_ns=end_ns, limit=limit, cursor=cursor, chunk_rows=chunk_rows)


async def query_chunks(nc: NatsClient, query: HistoryQuery, timeout: float = 10.0) -> AsyncIterator[HistoryChunk]:
    """Send one query and yield its chunks until the last one."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_msgs_limit=-1, pending_bytes_limit=-1)
    try:
        await nc.publish(subjects.HISTORY_QUERY, codec.encode(query), reply=inbox, headers=codec.headers_for(query))
        while True:
            try:
                msg = await sub.next_msg(timeout=timeout)
            except asyncio.TimeoutError:
                raise HistoryQueryError(f"no reply from the history writer within {timeout}s") from None
            if not msg.data:
                if msg.headers and msg.headers.get("Status") == "503":
                    raise HistoryQueryError("no history writer is running (no responders on history.query)")
                continue
            chunk = codec.decode_as(msg.data, HistoryChunk)
            yield chunk
            if chunk.error:
                raise HistoryQueryError(chunk.error)
            if chunk.last:
                return
    finally:
        # a caller that stopped early may have closed the connection already
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def query_pages(nc: NatsClient, query: HistoryQuery, *, total: int | None = None,
                      timeout: float = 10.0) -> AsyncIterator[tuple[list[msgspec.Raw], str | None]]:
    """Follow ``next_cursor`` across requests: (events of a chunk, cursor after the request).
    Stops after ``total`` events (None = the whole range)."""
    import msgspec.structs as ms

    n = 0
    while True:
        cursor = None
        async for chunk in query_chunks(nc, query, timeout):
            events = chunk.events
            if total is not None and n + len(events) > total:
                events = events[: total - n]
            n += len(events)
            cursor = chunk.next_cursor
            yield events, cursor
            if total is not None and n >= total:
                return
        if not cursor:
            return
        query = ms.replace(query, cursor=cursor)


async def query_events(nc: NatsClient, query: HistoryQuery, *, total: int | None = None,
                       timeout: float = 10.0) -> AsyncIterator[Any]:
    """Contract events of a query, following cursors."""
    async for events, _ in query_pages(nc, query, total=total, timeout=timeout):
        for raw in events:
            yield codec.decode(bytes(raw))


async def request_coverage(nc: NatsClient, selector: Selector | StreamSelector | str, start_ns: int, end_ns: int,
                           timeout: float = 10.0) -> CoverageReply:
    if isinstance(selector, str):
        selector = Selector.parse(selector)
    sel = selector.to_contract() if isinstance(selector, Selector) else selector
    query = CoverageQuery(selector=sel, start_ns=start_ns, end_ns=end_ns)
    try:
        msg = await nc.request(subjects.HISTORY_COVERAGE, codec.encode(query), timeout=timeout, headers=codec.headers_for(query))
    except asyncio.TimeoutError:
        raise HistoryQueryError(f"no coverage reply within {timeout}s") from None
    except Exception as exc:  # noqa: BLE001 - NoRespondersError
        raise HistoryQueryError(f"no history writer is running ({exc!r})") from None
    reply = codec.decode_as(msg.data, CoverageReply)
    if reply.error:
        raise HistoryQueryError(reply.error)
    return reply
