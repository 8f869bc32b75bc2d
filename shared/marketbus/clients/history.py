"""The client half of history over NATS: streamed queries and coverage.

Query protocol (``history.query``, :class:`HistoryQuery` -> :class:`HistoryChunk` replies):

1. The client subscribes to a fresh inbox, then publishes the JSON ``HistoryQuery`` to
   ``history.query`` with ``reply=<inbox>``. Writers answer in a queue group, so exactly one
   writer serves a request.
2. The server publishes one or more ``HistoryChunk`` messages to the inbox, in order; ``events``
   are the events exactly as published (one JSON object each), oldest first, ordered by
   ``(ts_event, stream, seq, idx)`` over every selected kind.
3. The last chunk has ``last=True``. If ``query.limit`` stopped the query before the end of the
   range, the last chunk's ``next_cursor`` is set: the same query with ``cursor=`` that value
   gets the next page (:meth:`HistoryClient.pages` follows cursors for you). A failed query ends
   with an :class:`~marketbus.contracts.errors.ErrorReply` instead of a last chunk (the chunks
   before it are valid); the client raises :class:`RequestError`.
4. If no message arrives for ``timeout`` seconds the client gives up (``timeout``); a "no
   responders" status means no writer is running (``no_responders``).

Coverage (``history.coverage``): ``CoverageQuery`` -> one ``CoverageReply`` or ``ErrorReply``.

Selectors are ``kind.source.venue.symbol`` fnmatch patterns (see :mod:`.selectors`); the time
range is ``start_ns <= ts_event < end_ns``.

    async with await nats.connect(url) as nc:
        history = HistoryClient(nc)
        async for trade in history.events("trade.digitex.*.*", start_ns, end_ns):
            ...
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

import msgspec
import msgspec.structs

from marketbus.contracts import codec, subjects
from marketbus.contracts import errors as codes
from marketbus.contracts.jobs import CoverageQuery, CoverageReply, HistoryChunk, HistoryQuery, StreamSelector

from .errors import RequestError, as_error_reply, decode_reply, request
from .selectors import parse_selector

SERVER = "history writer"


class SelectorParts(Protocol):
    """Anything with the four parts of a selector (StreamSelector, a store's own selector type)."""

    @property
    def kind(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def venue(self) -> str: ...
    @property
    def symbol(self) -> str: ...


Selectorish = str | SelectorParts


def to_selector(selector: Selectorish) -> StreamSelector:
    """A StreamSelector; text is parsed and checked (SelectorError, a ValueError, for a bad one),
    a selector object is taken as it is (a kind matching nothing selects nothing)."""
    if isinstance(selector, str):
        return parse_selector(selector)
    if isinstance(selector, StreamSelector):
        return selector
    return StreamSelector(kind=selector.kind, source=selector.source, venue=selector.venue, symbol=selector.symbol)


def make_query(selector: Selectorish, start_ns: int, end_ns: int, *, limit: int = 10_000, cursor: str | None = None,
               chunk_rows: int = 5_000) -> HistoryQuery:
    """A HistoryQuery; raises ValueError (SelectorError) for a bad selector or an empty range."""
    if end_ns < start_ns:
        raise ValueError(f"the end ({end_ns}) is before the start ({start_ns})")
    return HistoryQuery(selector=to_selector(selector), start_ns=start_ns, end_ns=end_ns, limit=limit, cursor=cursor,
                        chunk_rows=chunk_rows)


class HistoryClient:
    """History queries and coverage over one NATS connection (``nats.aio.client.Client``).

    Every method raises :class:`RequestError` when the writer refuses (``bad_request``,
    ``internal``...) or does not answer (``timeout``, ``no_responders``).
    """

    def __init__(self, nc: Any, *, timeout: float = 10.0) -> None:
        self.nc = nc
        self.timeout = timeout  # seconds without a message before giving up

    async def chunks(self, query: HistoryQuery) -> AsyncIterator[HistoryChunk]:
        """Send one query and yield its chunks until the last one (one page: no cursor following)."""
        nc = self.nc
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, pending_msgs_limit=-1, pending_bytes_limit=-1)
        try:
            await nc.publish(subjects.HISTORY_QUERY, codec.encode(query), reply=inbox, headers=codec.headers_for(query))
            while True:
                try:
                    msg = await sub.next_msg(timeout=self.timeout)
                except TimeoutError:  # nats' TimeoutError derives from it
                    # it answers when it runs: silence is a scan slower than the timeout (a loaded host)
                    raise RequestError(codes.TIMEOUT, f"no reply from the {SERVER} within {self.timeout:g}s (a large "
                                       "range on a busy host takes longer: give it more time, CLI --timeout)") from None
                if not msg.data:
                    if msg.headers and msg.headers.get("Status") == "503":
                        raise RequestError(codes.NO_RESPONDERS,
                                           f"no {SERVER} is running (no responders on {subjects.HISTORY_QUERY})")
                    continue
                chunk = decode_reply(msg.data, HistoryChunk)
                if chunk.error:  # the older in-chunk error form
                    yield msgspec.structs.replace(chunk, error=None, last=True)
                    raise RequestError(codes.BAD_REQUEST if chunk.error.startswith("bad request") else codes.INTERNAL,
                                       chunk.error)
                yield chunk
                if chunk.last:
                    return
        finally:
            # a caller that stopped early may have closed the connection already
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def pages(self, query: HistoryQuery, *, total: int | None = None
                    ) -> AsyncIterator[tuple[list[msgspec.Raw], str | None]]:
        """Follow ``next_cursor`` across requests: (events of a chunk, cursor after the request).
        Stops after ``total`` events (None = the whole range)."""
        n = 0
        while True:
            cursor = None
            async for chunk in self.chunks(query):
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
            query = msgspec.structs.replace(query, cursor=cursor)

    async def raw_events(self, selector: Selectorish, start_ns: int, end_ns: int, *, limit: int | None = None,
                         page_rows: int = 100_000) -> AsyncIterator[bytes]:
        """Every stored event of the selected streams in [start_ns, end_ns) as its published JSON,
        oldest first; at most ``limit`` (None = the whole range, paged ``page_rows`` at a time)."""
        query = make_query(selector, start_ns, end_ns, limit=min(limit or page_rows, page_rows))
        async for events, _ in self.pages(query, total=limit):
            for raw in events:
                yield bytes(raw)

    async def events(self, selector: Selectorish, start_ns: int, end_ns: int, *, limit: int | None = None
                     ) -> AsyncIterator[Any]:
        """Like :meth:`raw_events`, decoded into contract events (``Trade``, ``Tick``, ...)."""
        async for raw in self.raw_events(selector, start_ns, end_ns, limit=limit):
            yield codec.decode(raw)

    async def coverage(self, selector: Selectorish, start_ns: int = 0, end_ns: int = 2**63 - 1) -> CoverageReply:
        """Covered time ranges per stream, and the gaps the feeds reported."""
        query = CoverageQuery(selector=to_selector(selector), start_ns=start_ns, end_ns=end_ns)
        data = await request(self.nc, subjects.HISTORY_COVERAGE, codec.encode(query), timeout=self.timeout,
                             what=SERVER, headers=codec.headers_for(query))
        reply = decode_reply(data, CoverageReply)
        if reply.error:  # the older in-reply error form
            raise RequestError(codes.INTERNAL, reply.error)
        return reply


# --- function forms (nc first), for callers that hold a bare connection ----------------------
async def query_chunks(nc: Any, query: HistoryQuery, timeout: float = 10.0) -> AsyncIterator[HistoryChunk]:
    async for chunk in HistoryClient(nc, timeout=timeout).chunks(query):
        yield chunk


async def query_pages(nc: Any, query: HistoryQuery, *, total: int | None = None,
                      timeout: float = 10.0) -> AsyncIterator[tuple[list[msgspec.Raw], str | None]]:
    async for page in HistoryClient(nc, timeout=timeout).pages(query, total=total):
        yield page


async def query_events(nc: Any, query: HistoryQuery, *, total: int | None = None, timeout: float = 10.0
                       ) -> AsyncIterator[Any]:
    async for events, _ in HistoryClient(nc, timeout=timeout).pages(query, total=total):
        for raw in events:
            yield codec.decode(bytes(raw))


async def request_coverage(nc: Any, selector: Selectorish, start_ns: int, end_ns: int,
                           timeout: float = 10.0) -> CoverageReply:
    return await HistoryClient(nc, timeout=timeout).coverage(selector, start_ns, end_ns)


__all__ = ["HistoryClient", "RequestError", "as_error_reply", "make_query", "query_chunks", "query_events",
           "query_pages", "request_coverage", "to_selector"]
