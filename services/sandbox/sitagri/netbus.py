"""The netbus: price/news listeners, the push pump, the websocket and long polling.

One pump walks every registered quote's tape tick by tick and encodes each price once; the bytes
are shared by all subscribers (websocket clients and long-polling sessions). Websocket frames go
out through ``faults.ws_frames`` from one writer task per socket, so replies and pushes keep
their order and the fault switches apply to every frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from typing import Any

import msgspec
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..common.faults import FaultInjector
from .api import Api, ApiError, Context, Subscriber
from .news import NewsBook
from .prices import ENCODER, Market
from .session import Session, SessionStore
from .settings import SitagriSettings

MAX_TICKS_PER_PASS = 2_000  # per quote and pump pass, so an overloaded pump lags but stays fair
SLICE_S = 0.01  # the pump yields to the event loop (socket writers, requests) this often


class Hub:
    def __init__(self, settings: SitagriSettings, market: Market, news: NewsBook, sessions: SessionStore,
                 faults: FaultInjector) -> None:
        self.settings = settings
        self.market = market
        self.news = news
        self.sessions = sessions
        self.faults = faults
        self.prices: dict[str, set[Subscriber]] = {}
        self.news_subs: dict[str, set[Subscriber]] = {}
        self.clients: set[WsClient] = set()
        self.rng = random.Random(settings.seed ^ 0xAC4)
        self.ws_refuse = settings.ws_refuse
        self.pushed = 0
        self._news_after = int(time.time())
        sessions.on_expire.append(self._session_gone)

    # --- listeners (the resolver calls these) ---------------------------------------------
    def pumping(self, ref: str) -> bool:
        return bool(self.prices.get(ref))

    def before_ack(self) -> bool:
        return self.rng.random() < self.settings.push_before_ack

    def register_price(self, sub: Subscriber, ref: str) -> bytes:
        state = self.market.state(ref)
        if not self.pumping(ref):
            state.catch_up()  # the pump continues from here, tick by tick
        self.prices.setdefault(ref, set()).add(sub)
        return ENCODER.encode(state.price())

    def unregister_price(self, sub: Subscriber, ref: str) -> bool:
        subs = self.prices.get(ref)
        if not subs or sub not in subs:
            return False
        subs.discard(sub)
        return True

    def register_news(self, sub: Subscriber, source: str) -> None:
        self.news_subs.setdefault(source, set()).add(sub)

    def unregister_news(self, sub: Subscriber, source: str) -> bool:
        subs = self.news_subs.get(source)
        if not subs or sub not in subs:
            return False
        subs.discard(sub)
        return True

    def forget(self, sub: Subscriber) -> None:
        for subs in (*self.prices.values(), *self.news_subs.values()):
            subs.discard(sub)

    def forget_all(self) -> None:
        """A maintenance reboot: nobody's listeners survive."""
        self.prices.clear()
        self.news_subs.clear()
        for session in self.sessions.sessions.values():
            session.drain()  # pending updates die with the server
            session.wakeup.set()  # and a blocked long poll returns

    def push_news(self, source: str, article: dict[str, Any]) -> None:
        item = ENCODER.encode(article)
        for sub in list(self.news_subs.get(source, ())):
            sub.deliver(item)

    def listener_count(self) -> dict[str, int]:
        return {"prices": sum(len(s) for s in self.prices.values()),
                "news": sum(len(s) for s in self.news_subs.values()), "websockets": len(self.clients)}

    def _session_gone(self, session: Session) -> None:
        self.forget(session)
        for client in list(self.clients):
            if client.session is session:
                client.close_soon(4001, "session expired")

    # --- the pump -------------------------------------------------------------------------
    async def pump_once(self) -> None:
        now = time.time_ns()
        market = self.market
        slice_start = time.perf_counter()
        for ref, subs in list(self.prices.items()):
            if time.perf_counter() - slice_start > SLICE_S:
                await asyncio.sleep(0)
                slice_start = time.perf_counter()
            if not subs:
                del self.prices[ref]
                continue
            state = market.state(ref)
            target = market.last_index(state.info, now)
            if state.index < -(1 << 61):  # nothing traded when registered (not listed yet)
                state.catch_up(now)
                continue
            for k in range(state.index + 1, min(target, state.index + MAX_TICKS_PER_PASS) + 1):
                if state.apply(k) is None:
                    continue
                item = ENCODER.encode(state.price())
                for sub in subs:
                    sub.deliver(item)
                self.pushed += len(subs)
        now_s = now // 1_000_000_000
        if now_s > self._news_after:
            for source, subs in self.news_subs.items():
                if subs:
                    for art in self.news.due(source, self._news_after, now_s):
                        self.push_news(source, art)
            self._news_after = now_s

    async def run(self) -> None:
        was_rebooting = False
        last_sweep = 0.0
        while True:
            rebooting = self.faults.rebooting
            if rebooting and not was_rebooting:
                self.forget_all()
            was_rebooting = rebooting
            await self.pump_once()
            if time.monotonic() - last_sweep > 0.25:
                self.sessions.sweep()
                last_sweep = time.monotonic()
            await asyncio.sleep(self.settings.push_interval)

    async def scheduled_reboots(self) -> None:
        """Maintenance reboots from the settings (the real service reboots regularly)."""
        if self.settings.reboot_every_s <= 0:
            return
        while True:
            await asyncio.sleep(self.settings.reboot_every_s)
            await self.faults.reboot(self.settings.reboot_seconds)


class WsClient:
    """One websocket: an ordered outgoing queue drained by a writer task."""

    def __init__(self, ws: WebSocket, session: Session, faults: FaultInjector, backlog: int) -> None:
        self.ws = ws
        self.session = session
        self.faults = faults
        self.backlog = backlog
        self.queue: deque[str] = deque()
        self.ready = asyncio.Event()
        self.sent = 0
        self.closing: tuple[int, str] | None = None

    def deliver(self, item: bytes) -> None:
        self._enqueue('{"seq":-1,"data":' + item.decode() + "}", push=True)

    def reply(self, seq: int, data: Any) -> None:
        self._enqueue(ENCODER.encode({"seq": seq, "data": data}).decode(), push=False)

    def _enqueue(self, text: str, push: bool) -> None:
        if self.closing:
            return
        if len(self.queue) >= self.backlog:
            self.close_soon(1008, "slow consumer")
            return
        self.queue.extend(self.faults.ws_frames(text, push=push))
        self.ready.set()

    def close_soon(self, code: int, reason: str) -> None:
        self.closing = (code, reason)
        self.queue.clear()
        self.ready.set()

    async def writer(self) -> None:
        ws, queue = self.ws, self.queue
        while True:
            await self.ready.wait()
            self.ready.clear()
            while queue:
                await ws.send_text(queue.popleft())
                self.sent += 1
                limit = self.faults.switches.drop_after_frames
                if limit and self.sent >= limit:
                    self.closing = (1012, "dropped")
                    break
            if self.closing:
                await ws.close(code=self.closing[0], reason=self.closing[1])
                return


class WsRequest(msgspec.Struct):
    seq: int
    data: str | list[str]


_decode_request = msgspec.json.Decoder(WsRequest).decode


async def netbus_ws(websocket: WebSocket, api: Api, hub: Hub, sessions: SessionStore,
                    settings: SitagriSettings, faults: FaultInjector) -> None:
    # The session token is the subprotocol; without a live one the upgrade is refused (HTTP 403).
    session = None
    for proto in websocket.scope.get("subprotocols", []):
        session = sessions.get(proto)
        if session is not None:
            break
    if hub.ws_refuse or session is None:
        await websocket.close(code=1008)
        return
    await websocket.accept(subprotocol=session.token)
    faults.register_socket(websocket)
    client = WsClient(websocket, session, faults, settings.ws_backlog)
    hub.clients.add(client)
    writer = asyncio.create_task(client.writer())
    last_activity = time.monotonic()
    try:
        while not writer.done():
            remaining = sessions.timeout - (time.monotonic() - last_activity)
            if remaining <= 0:
                client.close_soon(1000, "session timeout")  # idle: no frame within `timeout`
                break
            receive = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait({receive, writer}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                continue
            message = receive.result()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
            if not text.strip():
                continue  # an empty frame is not a keep-alive
            last_activity = time.monotonic()
            if sessions.get(session.token) is None:
                client.close_soon(4001, "session expired")
                break
            _handle_frame(text, client, api)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(asyncio.shield(writer), timeout=1.0)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        writer.cancel()
        with contextlib.suppress(BaseException):
            await writer
        hub.forget(client)  # listeners do not survive their socket
        hub.clients.discard(client)
        faults.unregister_socket(websocket)


def _handle_frame(text: str, client: WsClient, api: Api) -> None:
    try:
        request = _decode_request(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return  # anything else non-empty is a keep-alive
    ctx = Context(client.session, client, over_ws=True)
    refs = request.data if isinstance(request.data, list) else [request.data]
    if len(refs) > api.settings.batch_cap:  # the batch cap applies to websocket arrays too
        error = ApiError(400, "tooManyReferences", f"at most {api.settings.batch_cap} references per batch")
        client.reply(request.seq, error.body())
        return
    results = [_resolve(api, ref, ctx) for ref in refs]
    client.reply(request.seq, results if isinstance(request.data, list) else results[0])
    for callback in ctx.after:
        callback()


def _resolve(api: Api, ref: str, ctx: Context) -> Any:
    try:
        return api.resolve(ref, ctx)
    except ApiError as exc:
        return exc.body()


async def long_poll(session: Session, sessions: SessionStore, settings: SitagriSettings) -> Response:
    """GET /api/netbus: blocks until something changed, then every pending update, once."""
    if not session.mailbox:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(session.wakeup.wait(), timeout=settings.longpoll_timeout)
    if sessions.sessions.get(session.token) is not session:  # expired while the poll was waiting
        error = ApiError(401, "invalidSession", "unknown or expired session token")
        return Response(ENCODER.encode(error.body()), status_code=401, media_type="application/json")
    items = session.drain()
    return Response(b"[" + b",".join(items) + b"]", media_type="application/json")


__all__ = ["Hub", "WsClient", "long_poll", "netbus_ws"]
