"""The netbus transports: the websocket ``/api/netbus`` and long polling ``GET /api/netbus``.

Both deliver the same thing to the app: the raw JSON of each pushed object (a price, an order
book or a news article), through ``on_push(raw)``, and both register listeners with
``.../price/register`` and ``/news/sources/{SRC}/article/register`` references.

Websocket: the session token is the subprotocol; requests are ``{"seq":n,"data":ref|[refs]}``,
replies carry the same ``seq``; pushes have ``seq`` -1 and may come before the register reply.
A non-empty text frame (``keep-alive``) is sent when nothing was sent for ``keepalive_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from marketbus.runtime.tasks import cancel_and_wait
from marketbus.vendor.frames import FrameGuard

from . import normalize
from .client import SessionKeeper, SitagriClient

log = logging.getLogger("marketbus.ingest_sitagri.netbus")

OnPush = Callable[[msgspec.Raw], Awaitable[None]]
_PUSH_PREFIX = '{"seq":-1,'


class NetbusClosed(Exception):
    """The transport is gone (closed, refused, reboot): reconnect."""


class NetbusRefused(NetbusClosed):
    """The websocket could not be opened at all."""


def register_refs(quotes: Sequence[str], news_sources: Sequence[str], unregister: bool = False) -> list[str]:
    verb = "unregister" if unregister else "register"
    return [f"{q}/price/{verb}" for q in quotes] + [f"/news/sources/{s}/article/{verb}" for s in news_sources]


def failed_registrations(refs: Sequence[str], replies: Sequence[Any]) -> list[str]:
    """References whose register reply is not a definitive ``success: true``."""
    bad = []
    for ref, reply in zip(refs, replies, strict=False):
        if not (isinstance(reply, dict) and reply.get("success") is True):
            bad.append(ref)
    return bad


class WsNetbus:
    def __init__(self, url: str, keeper: SessionKeeper, on_push: OnPush, frames: FrameGuard, *,
                 keepalive_s: float = 40.0, open_timeout_s: float = 10.0,
                 on_frame: Callable[[], None] | None = None) -> None:
        self.url = url
        self.keeper = keeper
        self.on_push = on_push
        self.guard = frames  # malformed frames: counted, logged, dead-lettered
        self.keepalive_s = keepalive_s
        self.open_timeout_s = open_timeout_s
        self.on_frame = on_frame
        self._ws: Any = None
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._last_sent = time.monotonic()
        self.closed_reason: str | None = None
        self.frames = 0

    @property
    def connected(self) -> bool:
        return self._ws is not None and self.closed_reason is None

    async def connect(self) -> None:
        token = await self.keeper.get()
        try:
            ws = await websockets.connect(
                self.url, subprotocols=[Subprotocol(token)], max_size=None, open_timeout=self.open_timeout_s,
                ping_interval=None, close_timeout=1, compression=None, max_queue=None,
            )
        except InvalidHandshake as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status == 401:
                self.keeper.expired(token)
            raise NetbusRefused(f"websocket refused: {type(exc).__name__}{f' {status}' if status else ''}") from None
        except (OSError, InvalidURI, TimeoutError) as exc:
            raise NetbusRefused(f"websocket connect failed: {type(exc).__name__}") from None
        if ws.subprotocol != token:
            await ws.close()
            raise NetbusRefused("the server did not accept the session token subprotocol")
        self._ws = ws
        self.closed_reason = None
        self._last_sent = time.monotonic()
        self.keeper.touch()
        self._reader = asyncio.create_task(self._read(), name="sitagri-ws-reader")
        self._pinger = asyncio.create_task(self._keepalive(), name="sitagri-ws-keepalive")

    async def close(self) -> None:
        await cancel_and_wait(t for t in (self._pinger, self._reader) if t is not None)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        self._fail_waiting(self.closed_reason or "closed")
        self._ws = None

    async def wait_closed(self) -> str:
        """Until the socket is gone; returns why."""
        if self._reader is not None:
            with contextlib.suppress(BaseException):
                await asyncio.shield(self._reader)
        return self.closed_reason or "closed"

    def _fail_waiting(self, reason: str) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(NetbusClosed(reason))
        self._waiting.clear()

    async def _send(self, text: str) -> None:
        if self._ws is None:
            raise NetbusClosed("not connected")
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise NetbusClosed(f"closed: {exc.rcvd.code if exc.rcvd else 'no close frame'}") from None
        self._last_sent = time.monotonic()
        self.keeper.touch()  # a websocket frame refreshes the session too

    async def request(self, data: str | list[str], timeout_s: float = 15.0) -> Any:
        """Send one request (a reference or an array of them); its reply's ``data``."""
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = fut
        try:
            await self._send(msgspec.json.encode({"seq": seq, "data": data}).decode())
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._waiting.pop(seq, None)

    async def _keepalive(self) -> None:
        while True:
            wait = self._last_sent + self.keepalive_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await self._send("keep-alive")
            except NetbusClosed:
                return

    async def _read(self) -> None:
        ws = self._ws
        on_push, on_frame = self.on_push, self.on_frame
        try:
            async for message in ws:
                self.frames += 1
                if on_frame is not None:
                    on_frame()
                frame = await self.guard.normalize("netbus", message, normalize.decode_frame, message)
                if frame is None:
                    continue
                if frame.seq == -1:
                    await on_push(frame.data)
                    continue
                fut = self._waiting.get(frame.seq)
                if fut is not None and not fut.done():
                    try:
                        fut.set_result(normalize.generic_decoder.decode(frame.data))
                    except msgspec.DecodeError as exc:
                        fut.set_exception(normalize.Malformed(str(exc)))
            self.closed_reason = f"closed by the server ({ws.close_code})"
        except ConnectionClosed as exc:
            self.closed_reason = f"connection lost ({exc.rcvd.code if exc.rcvd else 'no close frame'})"
        except Exception as exc:
            log.exception("netbus reader failed")
            self.closed_reason = f"reader failed: {exc!r}"
        finally:
            if self.closed_reason is None:
                self.closed_reason = "closed"
            self._fail_waiting(self.closed_reason)

    async def register(self, refs: Sequence[str], timeout_s: float = 15.0) -> list[Any]:
        """Register (or unregister) listeners in one request; the replies, in order."""
        if not refs:
            return []
        reply = await self.request(list(refs), timeout_s)
        return reply if isinstance(reply, list) else [reply]


class LongPollNetbus:
    """Listeners registered with a batch ``POST /api``; updates fetched with ``GET /api/netbus``."""

    def __init__(self, client: SitagriClient, on_push: OnPush, frames: FrameGuard, *, poll_timeout_s: float = 90.0,
                 on_frame: Callable[[], None] | None = None) -> None:
        self.client = client
        self.on_push = on_push
        self.guard = frames
        self.poll_timeout_s = poll_timeout_s
        self.on_frame = on_frame
        self.polls = 0
        self.updates = 0

    async def register(self, refs: Sequence[str]) -> list[Any]:
        if not refs:
            return []
        return await self.client.batch(list(refs))

    async def poll_once(self) -> int:
        body = await self.client.long_poll(self.poll_timeout_s)
        self.polls += 1
        items = await self.guard.normalize("longpoll", body, normalize.split_updates, body)
        if items is None:
            return 0
        for raw in items:
            if self.on_frame is not None:
                self.on_frame()
            await self.on_push(raw)
        self.updates += len(items)
        return len(items)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        while stop is None or not stop.is_set():
            await self.poll_once()
