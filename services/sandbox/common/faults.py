"""Injectable faults shared by every sandbox.

Switches are set by config (a JSON schedule), and at run time through the admin API that tests
call (``POST /_sandbox/faults``). HTTP faults are applied by :class:`FaultMiddleware` in front of
the vendor app; websocket handlers pass outgoing frames through :meth:`FaultInjector.ws_frames`
and register their sockets so drops and reboots can close them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec


class FaultSwitches(msgspec.Struct, kw_only=True):
    latency_ms: int = 0  # every reply is delayed this long (slow replies)
    error_next: int = 0  # the next N HTTP requests get a 5xx
    error_rate: float = 0.0  # probability of a 5xx on each HTTP request
    error_status: int = 503
    garbage_errors: bool = False  # 5xx bodies that are not the vendor's error JSON
    rate_limit_next: int = 0  # the next N HTTP requests get a 429 (a 429 storm)
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    malformed_next: int = 0  # the next N replies/frames are not valid JSON
    malformed_rate: float = 0.0
    truncated_next: int = 0  # the next N replies/frames are cut in half
    duplicate_next: int = 0  # the next N websocket pushes are sent twice
    duplicate_rate: float = 0.0
    drop_after_frames: int = 0  # drop every websocket after this many frames (0 = never)


class ScheduledFault(msgspec.Struct, kw_only=True):
    """A fault fired ``at_s`` seconds after start and then every ``every_s`` seconds (0 = once)."""

    action: str  # "drop", "reboot", or "set" (merge ``switches``)
    at_s: float = 0.0
    every_s: float = 0.0
    seconds: float = 5.0  # reboot length
    switches: dict[str, Any] = {}


class FaultInjector:
    def __init__(self, seed: int = 0) -> None:
        self.switches = FaultSwitches()
        self.rng = random.Random(seed)
        self.counts: dict[str, int] = {}
        self._sockets: set[Any] = set()
        self.rebooting_until = 0.0
        self.reboot_handler: Callable[[float], Awaitable[None]] | None = None

    # --- state ----------------------------------------------------------------------------
    def set(self, **changes: Any) -> FaultSwitches:
        merged = msgspec.structs.asdict(self.switches) | changes
        self.switches = msgspec.convert(merged, FaultSwitches)
        return self.switches

    def reset(self) -> None:
        self.switches = FaultSwitches()

    def state(self) -> dict[str, Any]:
        return {
            "switches": msgspec.structs.asdict(self.switches),
            "counts": dict(self.counts),
            "rebooting": self.rebooting,
            "open_websockets": len(self._sockets),
        }

    @property
    def rebooting(self) -> bool:
        return time.monotonic() < self.rebooting_until

    def _count(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1

    def _take(self, next_field: str, rate: float = 0.0) -> bool:
        pending = getattr(self.switches, next_field)
        if pending > 0:
            setattr(self.switches, next_field, pending - 1)
            return True
        return rate > 0 and self.rng.random() < rate

    # --- decisions used by the middleware and websocket handlers ---------------------------
    def take_rate_limit(self) -> bool:
        hit = self._take("rate_limit_next", self.switches.rate_limit_rate)
        if hit:
            self._count("rate_limited")
        return hit

    def take_error(self) -> bool:
        hit = self._take("error_next", self.switches.error_rate)
        if hit:
            self._count("errors")
        return hit

    def corrupt(self, text: str) -> str:
        """Apply the malformed/truncated switches to one outgoing body or frame."""
        if self._take("malformed_next", self.switches.malformed_rate):
            self._count("malformed")
            return "{\"broken\": " + text[: max(1, len(text) // 3)].replace('"', "'") + " <<not json"
        if self._take("truncated_next"):
            self._count("truncated")
            return text[: max(1, len(text) // 2)]
        return text

    def ws_frames(self, text: str, push: bool = False) -> list[str]:
        """The frames to send for one outgoing message (corrupted and/or duplicated)."""
        text = self.corrupt(text)
        if push and self._take("duplicate_next", self.switches.duplicate_rate):
            self._count("duplicated")
            return [text, text]
        return [text]

    async def delay(self) -> None:
        if self.switches.latency_ms > 0:
            await asyncio.sleep(self.switches.latency_ms / 1000)

    # --- websockets -----------------------------------------------------------------------
    def register_socket(self, ws: Any) -> None:
        self._sockets.add(ws)

    def unregister_socket(self, ws: Any) -> None:
        self._sockets.discard(ws)

    async def drop_all(self) -> int:
        """Close every open websocket abruptly (a dropped connection)."""
        sockets = list(self._sockets)
        self._sockets.clear()
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close(code=1012)
        self._count("drops")
        return len(sockets)

    async def reboot(self, seconds: float) -> None:
        """A maintenance reboot: drop everything and refuse connections for ``seconds``."""
        self._count("reboots")
        self.rebooting_until = time.monotonic() + seconds
        if self.reboot_handler is not None:
            await self.reboot_handler(seconds)
        else:
            await self.drop_all()

    async def run_schedule(self, schedule: list[ScheduledFault]) -> None:
        async def one(item: ScheduledFault) -> None:
            await asyncio.sleep(item.at_s)
            while True:
                if item.action == "drop":
                    await self.drop_all()
                elif item.action == "reboot":
                    await self.reboot(item.seconds)
                elif item.action == "set":
                    self.set(**item.switches)
                if item.every_s <= 0:
                    return
                await asyncio.sleep(item.every_s)

        await asyncio.gather(*(one(item) for item in schedule))


ErrorBody = Callable[[int, str, str], tuple[bytes, dict[str, str]]]
"""(status, code, message) -> (body, extra headers): each vendor's own error format."""


class FaultMiddleware:
    """Pure ASGI middleware applying HTTP faults in front of a vendor app.

    Paths under ``/_sandbox`` (the admin API) are never faulted.
    """

    def __init__(self, app: Any, faults: FaultInjector, error_body: ErrorBody) -> None:
        self.app = app
        self.faults = faults
        self.error_body = error_body

    async def _send_error(self, send: Any, status: int, code: str, message: str, headers: dict[str, str]) -> None:
        body, extra = self.error_body(status, code, message)
        if status >= 500 and self.faults.switches.garbage_errors:
            body, extra = b"<html><body>Bad Gateway</body></html>", {"content-type": "text/html"}
        all_headers = {"content-type": "application/json"} | extra | headers
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()],
        })
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        faults = self.faults
        if scope["type"] == "websocket":
            if faults.rebooting:
                await send({"type": "websocket.close", "code": 1013})
                return
            await self.app(scope, receive, send)
            return
        if faults.rebooting:
            await self._send_error(send, 503, "unavailable", "maintenance in progress", {})
            return
        await faults.delay()
        if faults.take_rate_limit():
            retry = str(faults.switches.retry_after_s)
            await self._send_error(send, 429, "rate_limited", "rate limit exceeded", {"retry-after": retry})
            return
        if faults.take_error():
            status = faults.switches.error_status
            await self._send_error(send, status, "unavailable" if status == 503 else "internal", "injected failure", {})
            return
        if faults.switches.malformed_next or faults.switches.truncated_next or faults.switches.malformed_rate:
            await self.app(scope, receive, _CorruptingSend(send, faults))
            return
        await self.app(scope, receive, send)


class _CorruptingSend:
    """Buffers one JSON response body and corrupts it before sending."""

    def __init__(self, send: Any, faults: FaultInjector) -> None:
        self.send = send
        self.faults = faults
        self.start: dict[str, Any] | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        if message["type"] == "http.response.body":
            self.chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(self.chunks)
            assert self.start is not None
            headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
            if body[:1] in (b"{", b"["):
                body = self.faults.corrupt(body.decode("utf-8", "replace")).encode()
            headers.append((b"content-length", str(len(body)).encode()))
            await self.send({**self.start, "headers": headers})
            await self.send({"type": "http.response.body", "body": body})
            return
        await self.send(message)
