"""The FinX TickPlant websocket session: authenticate, then strict request/reply.

The protocol has no request id: each request is answered by exactly one frame, in order. So one
lock serializes calls, and anything that breaks the lock-step (a reply that does not come in
time, a reply that does not answer the request) ends the session: the caller reconnects with
back-off rather than risk handing a frame to the wrong request.

The API key is in the URL path (``/streamer/<key>``) and in every message: the URL is only ever
logged redacted (:attr:`TickPlantClient.safe_url`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from marketbus.runtime.backoff import Backoff
from marketbus.runtime.settings import Secret

from . import normalize

log = logging.getLogger("marketbus.ingest_finx.client")
_encode = msgspec.json.Encoder().encode


class _RedactingLogger(logging.LoggerAdapter[logging.Logger]):
    """The websockets library logs the request line (with the key in the path) at DEBUG."""

    def __init__(self, logger: logging.Logger, secret: str) -> None:
        super().__init__(logger, {})
        self.secret = secret

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        if self.secret:
            text = text.replace(self.secret, "**********")
        kwargs.pop("extra", None)
        self.logger.log(level, "%s", text, **kwargs)


class SessionLost(Exception):
    """The websocket session is gone (closed, timed out, or out of lock-step): reconnect."""


class TickPlantClient:
    def __init__(self, ws_url: str, api_key: Secret, *, timeout_s: float = 10.0,
                 backoff: Backoff | None = None, on_frame: Callable[[str], None] | None = None) -> None:
        self.base_url = ws_url.rstrip("/")
        self._key = api_key
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff(0.2, 10.0)
        self.on_frame = on_frame
        self._ws: Any = None
        self._lock = asyncio.Lock()
        self.connects = 0

    @property
    def safe_url(self) -> str:
        return f"{self.base_url}/streamer/**********"

    @property
    def connected(self) -> bool:
        return self._ws is not None

    async def connect(self) -> None:
        """One attempt: open the socket and authenticate (raises on failure)."""
        await self.close()
        try:
            ws = await websockets.connect(
                f"{self.base_url}/streamer/{self._key.get()}", max_size=None, open_timeout=self.timeout_s,
                ping_interval=20, ping_timeout=20, close_timeout=1, compression=None,
                logger=_RedactingLogger(logging.getLogger("websockets.client"), self._key.get()),
            )
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            # The exception text may hold the URL (and so the key): keep the type only.
            raise SessionLost(f"cannot connect to {self.safe_url}: {type(exc).__name__}") from None
        self._ws = ws
        reply = await self.call("authenticate")
        try:
            obj = normalize.decode(reply)
        except normalize.Malformed as exc:
            await self.close()
            raise SessionLost(f"authentication reply is malformed: {exc}") from None
        except normalize.VendorError:
            await self.close()
            raise
        if not isinstance(obj, dict) or obj.get("authenticated") is False:
            await self.close()
            raise normalize.VendorError("authentication refused", obj)
        self.connects += 1

    async def connect_with_backoff(self, on_failure: Callable[[BaseException], Awaitable[None]] | None = None) -> None:
        """Connect, retrying with exponential back-off until it works."""
        while True:
            try:
                await self.connect()
                self.backoff.reset()
                return
            except (SessionLost, normalize.VendorError) as exc:
                if on_failure is not None:
                    await on_failure(exc)
                delay = await self.backoff.sleep()
                log.info("reconnecting to %s after %.2fs", self.safe_url, delay)

    async def call(self, function_name: str, **fields: Any) -> str:
        """Send one request and return its one reply frame (raw text)."""
        async with self._lock:
            ws = self._ws
            if ws is None:
                raise SessionLost("not connected")
            message = {"APIKey": self._key.get(), "functionName": function_name, **fields}
            try:
                await ws.send(_encode(message).decode())
                frame = await asyncio.wait_for(ws.recv(), self.timeout_s)
            except (ConnectionClosed, OSError) as exc:
                self._ws = None
                rcvd = getattr(exc, "rcvd", None)
                code = f" {rcvd.code}" if rcvd is not None else ""
                raise SessionLost(f"connection closed: {type(exc).__name__}{code}") from None
            except TimeoutError:
                # A late reply would go to the next request: the session cannot be trusted.
                await self._drop()
                raise SessionLost(f"no reply to {function_name} within {self.timeout_s}s") from None
            if isinstance(frame, bytes):
                frame = frame.decode("utf-8", "replace")
            if self.on_frame is not None:
                self.on_frame(function_name)
            return frame

    async def desync(self, reason: str) -> None:
        """A reply did not answer its request: drop the session (the caller reconnects)."""
        log.warning("session out of lock-step (%s): dropping it", reason)
        await self._drop()

    async def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1)

    async def close(self) -> None:
        await self._drop()
