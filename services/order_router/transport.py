"""A lean keep-alive HTTP/1.1 transport for httpx (plain ``http://`` only).

Why: the router sends one REST request per order. httpx's default transport (httpcore + anyio)
costs ~0.75 ms of CPU per request at best, and its pool re-checks every connection (one
``poll()`` system call each) on every request, so with 32 connections a request cost >3 ms of
CPU -- the router's ceiling, not the exchange's. This transport keeps the httpx API (the client,
its timeouts and its exception classes) and replaces only the wire part: persistent asyncio
connections, the request written in one ``write()``, the response parsed by httptools (the C
parser uvicorn uses), ~10x less CPU per request.

Semantics kept from httpx, which the order router relies on:

- a timeout raises ``httpx.ConnectTimeout`` / ``httpx.ReadTimeout`` (-> outcome unknown);
- a connection that fails or closes mid-request raises an ``httpx.TransportError`` subclass
  (-> outcome unknown); nothing is ever retried here (a write must never be sent twice);
- at most ``max_connections`` requests are in flight, later ones wait for a free connection
  (FIFO); a connection is reused only after a complete keep-alive response.

``https://`` (TLS) is not handled here: :func:`make_transport` then returns httpx's own pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httptools
import httpx


class _Connection(asyncio.Protocol):
    """One persistent connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes, bool]] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(httpx.ReadError(f"connection closed by the server{f': {exc}' if exc else ''}"))

    # --- httptools callbacks ------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), self._headers, b"".join(self._body),
                               self._parser.should_keep_alive()))

    # --- use ----------------------------------------------------------------------------------
    def send(self, data: bytes) -> asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes, bool]]:
        assert self.transport is not None and not self.closed
        self._headers, self._body = [], []
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class KeepAliveTransport(httpx.AsyncBaseTransport):
    """Persistent ``http://`` connections to one origin, at most ``max_connections`` in use."""

    def __init__(self, max_connections: int = 8) -> None:
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []

    async def _connect(self, request: httpx.Request, timeout: float | None) -> _Connection:
        url = request.url
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(_Connection, url.host, url.port or 80)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {url.host}:{url.port}: timed out", request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {url.host}:{url.port}: {exc}", request=request) from exc
        return conn  # asyncio sets TCP_NODELAY on its TCP connections

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"{request.url.scheme}: only http:// is served by this transport",
                                            request=request)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        body = await request.aread()
        target = request.url.raw_path.decode("ascii")
        head = [f"{request.method} {target} HTTP/1.1\r\n".encode("ascii")]
        head += [b"%s: %s\r\n" % (name, value) for name, value in request.headers.raw]
        data = b"".join(head) + b"\r\n" + body
        async with self._slots:
            conn = None
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.closed:
                    conn = candidate
                    break
            if conn is None:
                conn = await self._connect(request, timeouts.get("connect"))
            try:
                async with asyncio.timeout(timeouts.get("read")):
                    status, headers, content, keep_alive = await conn.send(data)
            except TimeoutError as exc:
                conn.close()  # a late answer must not be read as the next request's
                raise httpx.ReadTimeout(f"{request.method} {target}: no response in time", request=request) from exc
            except httpx.TransportError as exc:
                conn.close()
                exc.request = request
                raise
            except BaseException:  # cancelled mid-request: the connection's state is unknown
                conn.close()
                raise
            if keep_alive and not conn.closed:
                self._idle.append(conn)
            else:
                conn.close()
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


def make_transport(base_url: str, max_connections: int) -> httpx.AsyncBaseTransport:
    """The lean transport for ``http://`` URLs (the sandbox, a local gateway), httpx's own pool
    (TLS capable) otherwise."""
    if httpx.URL(base_url).scheme == "http":
        return KeepAliveTransport(max_connections)
    return httpx.AsyncHTTPTransport(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))
