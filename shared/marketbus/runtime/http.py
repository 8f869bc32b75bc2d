"""Run an ASGI app (Starlette) in-process with uvicorn, on a given or a free port.

Used by the sandboxes, the export HTTP API and every service's /healthz + /metrics server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on ``port`` now (a listener makes it busy; connections
    of a stopped server lingering in TIME_WAIT do not, as servers bind with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class _Server(uvicorn.Server):
    """An uvicorn server that leaves the process's signals alone: ``Server.serve`` replaces the
    SIGINT/SIGTERM handlers (``signal.signal``) while it runs, so a service's own handlers (its
    graceful stop) were not called until the HTTP server had stopped first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class AsgiServer:
    """An uvicorn server running as a task of the current event loop."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **uvicorn_options: Any) -> None:
        self.app = app
        self.host = host
        self.requested_port = port
        options: dict[str, Any] = {
            "log_level": "warning",
            "lifespan": "on",
            "ws_ping_interval": None,
            "access_log": False,
        }
        options.update(uvicorn_options)
        self._options = options
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def start(self) -> AsgiServer:
        # IPPROTO_TCP explicitly: accepted sockets inherit it, and only then does asyncio set
        # TCP_NODELAY on them (with proto=0 every keep-alive reply waits ~40 ms for Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.requested_port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, host=self.host, port=self.port, **self._options)
        # uvicorn would install signal handlers in serve(); the owner of the process handles them.
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name=f"http:{self.port}")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises the start-up error
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        # A websocket closing at the same moment can make uvicorn's shutdown raise; the server is
        # going away regardless, and a restart on the same port (sandbox reboots) must not fail.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), timeout=5)
        if not self._task.done():
            self._server.force_exit = True
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._server = None

    async def __aenter__(self) -> AsgiServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


@contextlib.asynccontextmanager
async def serve_asgi(app: Any, host: str = "127.0.0.1", port: int = 0, **options: Any) -> AsyncIterator[AsgiServer]:
    server = AsgiServer(app, host, port, **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """What an Idempotency-Key is bound to: method, path and the body (JSON key order ignored).
    A second request with the same key and another fingerprint is a different request (409)."""
    try:
        canonical = msgspec.json.encode(msgspec.json.decode(body), order="sorted") if body.strip() else b""
    except (msgspec.DecodeError, RecursionError):  # not JSON, or nested too deep to decode: the bytes
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()
