"""The TickPlant websocket: ``/ws/``, ``/streamer/{api_key}`` and the pair streamer.

The real client is strictly lock-step (send, then exactly one ``recv()``, no request id), so
every inbound frame gets exactly one reply frame, in order, and nothing is ever pushed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from starlette.websockets import WebSocket, WebSocketDisconnect

from .context import FinxContext, RequestError
from .data import parse_date_time
from .deribit import list_contracts

Message = dict[str, Any]
Handler = Callable[[FinxContext, Message], Any]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
INVALID_KEY = {"authenticated": False, "error": "invalid API key"}


def _start_ns(msg: Message, required: bool) -> int | None:
    date = msg.get("date")
    if not date:
        if required:
            raise RequestError('missing "date" parameter')
        return None
    try:
        return parse_date_time(str(date), str(msg.get("time") or "00:00"))
    except ValueError:
        raise RequestError(f"invalid date/time: {date} {msg.get('time')}") from None


def _authenticate(ctx: FinxContext, msg: Message) -> Any:
    return {"authenticated": True}


def _reference_data(ctx: FinxContext, msg: Message) -> Any:
    return ctx.secdb(msg.get("securityId"))


def _tick_snap(ctx: FinxContext, msg: Message) -> Any:
    # Both forms: the client's connect probe {"pair"} (latest) and the seed's pair/date/time.
    pair = ctx.pair(msg.get("pair"))
    tick = ctx.market.snap(pair, ctx.now_ns(), _start_ns(msg, required=False))
    return tick.row() if tick else {}


def _tick_history(ctx: FinxContext, msg: Message) -> Any:
    pair = ctx.pair(msg.get("pair"))
    start = _start_ns(msg, required=True)
    assert start is not None
    rows = ctx.market.history(pair, start, ctx.now_ns())
    return {str(i): tick.row() for i, tick in enumerate(rows)}


def _list_deribit_contracts(ctx: FinxContext, msg: Message) -> Any:
    return list_contracts(ctx.market, ctx.now_ns())


HANDLERS: dict[str, Handler] = {
    "authenticate": _authenticate,
    "referenceData": _reference_data,
    "tickSnap": _tick_snap,
    "tickHistory": _tick_history,
    "listDeribitContracts": _list_deribit_contracts,
}


def _stream_poll(ctx: FinxContext, msg: Message, stream_pair: str) -> Any:
    """Pair streamer: any non-function message (``{"message": ...}``) polls the latest tick."""
    inner = msg.get("message")
    requested = inner.get("pair") if isinstance(inner, dict) else None
    tick = ctx.market.latest(ctx.pair(requested or stream_pair), ctx.now_ns())
    return tick.row() if tick else {}


def reply_to(ctx: FinxContext, text: str, path_key: str | None, stream_pair: str | None) -> tuple[bytes, bool]:
    """(the one reply frame, whether to close the socket afterwards) for one inbound frame."""
    try:
        msg = _decode(text)
    except msgspec.DecodeError:
        return _encode({"error": "malformed JSON message"}), False
    if not isinstance(msg, dict):
        return _encode({"error": "expected a JSON object"}), False
    # The key travels in the URL path; /ws/ has none, so the APIKey field of each message counts.
    if not ctx.key_ok(path_key or msg.get("APIKey")):
        return _encode(INVALID_KEY), True
    name = msg.get("functionName")
    try:
        if name is None and stream_pair is not None:
            return _encode(_stream_poll(ctx, msg, stream_pair)), False
        handler = HANDLERS.get(name) if isinstance(name, str) else None
        if handler is None:
            return _encode({"error": f"unknown functionName: {name}", "functionName": name}), False
        return _encode(handler(ctx, msg)), False
    except RequestError as exc:
        return _encode({"error": str(exc), "functionName": name}), False


async def serve_socket(ctx: FinxContext, ws: WebSocket, path_key: str | None, stream_pair: str | None) -> None:
    faults = ctx.faults
    await ws.accept()
    faults.register_socket(ws)
    sent = 0
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                text = (message.get("bytes") or b"").decode("utf-8", "replace")
            reply, reject = reply_to(ctx, text, path_key, stream_pair)
            await faults.delay()
            # push=True lets the duplicate_* switches inject an out-of-step extra frame (off by default).
            for frame in faults.ws_frames(reply.decode(), push=True):
                await ws.send_text(frame)
                sent += 1
                limit = faults.switches.drop_after_frames
                if limit and sent >= limit:
                    await ws.close(1012)  # a drop mid-session, as the injector's drops do
                    return
            if reject:
                await ws.close(1008, "invalid API key")
                return
    except (WebSocketDisconnect, RuntimeError, OSError):
        return  # the client left, or the injector closed the socket under us (drop, reboot)
    finally:
        faults.unregister_socket(ws)


def endpoints(ctx: FinxContext) -> dict[str, Callable[[WebSocket], Any]]:
    async def plain(ws: WebSocket) -> None:
        await serve_socket(ctx, ws, None, None)

    async def streamer(ws: WebSocket) -> None:
        await serve_socket(ctx, ws, ws.path_params["api_key"], None)

    async def pair_streamer(ws: WebSocket) -> None:
        await serve_socket(ctx, ws, ws.path_params["api_key"], ws.path_params["pair"])

    return {
        "/ws": plain,
        "/ws/": plain,
        "/streamer/{api_key}": streamer,
        "/streamer/{api_key}/": streamer,
        "/streamer/{api_key}/{pair}": pair_streamer,
    }
