"""HTTP and WebSocket playback for clients without NATS.

``GET /replay?selector=trade.digitex.*.*&start=<ns or ISO-8601>&end=...&speed=1x&reference=<selector>``
streams NDJSON: one line per event, exactly the JSON a NATS consumer gets, then the
``playback_end`` marker line. ``/replay/ws`` takes the same query parameters and sends one text
frame per event, then the marker; the client may send ``{"type": "playback_control", "action":
"pause"}`` (``resume``, ``cancel``, ``status``: answered with a ``playback_status`` frame).
A refused request is an ``error_reply`` body (HTTP 400/404/409/429/503) or frame (then close).
Both count against the session limit like NATS sessions; a client that goes away cancels its
session. Only the client that opened a session controls it: over its own WebSocket (NDJSON has no
control but going away); the session's NATS control subject wants its control token like any
other session's, and HTTP clients are never given it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from marketbus.clients.selectors import parse_selector
from marketbus.contracts import codec
from marketbus.contracts import errors as codes
from marketbus.contracts.errors import ErrorReply
from marketbus.contracts.replay import PlaybackControl, PlaybackStart

from .refusal import Refused
from .settings import ReplaySettings
from .wire import QueueSink

if TYPE_CHECKING:
    from .session import Session


class SessionOpener(Protocol):
    """What the HTTP and WebSocket endpoints need of the service: its settings, and opening a
    session (which raises :class:`Refused`)."""

    settings: ReplaySettings

    async def open_session(self, request: PlaybackStart, sink_for: Any, via: str) -> Session: ...


_HTTP_STATUS = {codes.BAD_REQUEST: 400, codes.FORBIDDEN: 403, codes.NOT_FOUND: 404, codes.CONFLICT: 409,
                codes.OVERLOADED: 429, codes.UNAVAILABLE: 503}


def parse_time_param(text: str) -> int:
    """Nanoseconds since the epoch, or ISO-8601 (``2025-11-21T04:40:00Z``; UTC when no zone)."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a time: {text!r} (nanoseconds or ISO-8601)") from None
    if dt.tzinfo is None:

        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def request_from_params(params: Any) -> PlaybackStart:
    """The PlaybackStart of a query string (ValueError names the bad parameter)."""
    missing = [p for p in ("selector", "start", "end") if not params.get(p)]
    if missing:
        raise ValueError(f"missing parameter(s): {', '.join(missing)}")
    ref = params.get("reference")
    return PlaybackStart(
        selector=parse_selector(params["selector"]), start_ns=parse_time_param(params["start"]),
        end_ns=parse_time_param(params["end"]), speed=params.get("speed", "1x"),
        reference=parse_selector(ref) if ref else None,
    )


def _error_response(code: str, message: str) -> Response:
    return Response(codec.encode(ErrorReply(code=code, message=message)), status_code=_HTTP_STATUS.get(code, 500),
                    media_type="application/json")


async def _lines(session: Session, sink: QueueSink) -> AsyncIterator[bytes]:
    try:
        while True:
            item = await sink.queue.get()
            if item is None:
                return
            if isinstance(item, list):
                yield b"\n".join(item) + b"\n"
            else:
                yield item + b"\n"
    finally:  # the client went away (or the stream ended): nothing more to send
        sink.close()
        session.cancel("the HTTP client went away")


def routes(service: SessionOpener) -> list[Any]:
    async def replay_http(request: Request) -> Response:
        try:
            start = request_from_params(request.query_params)
        except ValueError as exc:
            return _error_response(codes.BAD_REQUEST, str(exc))
        sink = QueueSink(service.settings.http_queue_chunks)
        try:
            session = await service.open_session(start, lambda _prefix: sink, "http")
        except Refused as exc:
            return _error_response(exc.code, exc.message)
        return StreamingResponse(_lines(session, sink), media_type="application/x-ndjson",
                                 headers={"X-Replay-Session": session.id})

    async def replay_ws(ws: WebSocket) -> None:
        await ws.accept()
        try:
            start = request_from_params(ws.query_params)
        except ValueError as exc:
            await _ws_refuse(ws, codes.BAD_REQUEST, str(exc))
            return
        sink = QueueSink(service.settings.http_queue_chunks)
        try:
            session = await service.open_session(start, lambda _prefix: sink, "websocket")
        except Refused as exc:
            await _ws_refuse(ws, exc.code, exc.message)
            return
        controls = asyncio.create_task(_ws_controls(ws, session))
        try:
            while True:
                item = await sink.queue.get()
                if item is None:
                    break
                for payload in item if isinstance(item, list) else [item]:
                    await ws.send_text(payload.decode())
            await ws.close()
        except (WebSocketDisconnect, RuntimeError):
            pass  # the client went away
        finally:
            controls.cancel()
            sink.close()
            session.cancel("the WebSocket client went away")

    return [Route("/replay", replay_http), WebSocketRoute("/replay/ws", replay_ws)]


async def _ws_refuse(ws: WebSocket, code: str, message: str) -> None:
    await ws.send_text(codec.encode(ErrorReply(code=code, message=message)).decode())
    await ws.close(code=1008)


async def _ws_controls(ws: WebSocket, session: Session) -> None:
    """Control frames from the client, answered with the session's status (or an error_reply)."""
    from .session import SessionError

    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while True:
            text = await ws.receive_text()
            try:
                reply: Any = session.control(codec.decode_as(text, PlaybackControl).action)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                reply = ErrorReply(code=codes.BAD_REQUEST, message=f"not a playback_control: {exc}")
            except SessionError as exc:
                reply = ErrorReply(code=exc.code, message=str(exc))
            await ws.send_text(codec.encode(reply).decode())
