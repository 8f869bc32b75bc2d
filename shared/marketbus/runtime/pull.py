"""Continuous delivery from a durable JetStream pull consumer.

``PullSubscription.fetch(n, timeout)`` (nats-py) returns once ``n`` messages arrived or the
timeout passed, so a message that arrives alone waits for the batch. Newer NATS clients have
``consume()``: pull requests are kept outstanding on one inbox and each message is handed over
as it arrives. :class:`PullRequests` is that bookkeeping (what each outstanding request may still
deliver, when it expires); :class:`PullConsumer` puts it together with an inbox subscription and
a bound on the messages held (requested + being handled), for services that handle messages one
by one (the order router). The history writer uses :class:`PullRequests` with its raw inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

from .tasks import cancel_and_wait

JS_API_PREFIX = "$JS.API"


def pull_subject(stream: str, durable: str, api_prefix: str = JS_API_PREFIX) -> str:
    """The JetStream API subject a pull request for ``durable`` of ``stream`` is published to."""
    return f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"


# Statuses that end a pull request: 408 expired, 409 max bytes/waiting exceeded, leadership change,
# consumer deleted; 404 is "no messages" (only for no_wait requests, never sent here).
ENDING_STATUSES = frozenset({"404", "408", "409"})


class PullRequests:
    """The outstanding pull requests of one inbox, oldest first (the server serves them in order)."""

    def __init__(self, subject: str, inbox: str, expires_s: float) -> None:
        self.subject = subject
        self.inbox = inbox
        self.expires_s = expires_s
        # [messages left, sent at (monotonic)]; a request ended by its byte limit gets a 409 status
        self._open: deque[list[float]] = deque()
        self.messages = 0  # still to be delivered by all of them

    def __len__(self) -> int:
        return len(self._open)

    def body(self, batch: int, max_bytes: int = 0) -> bytes:
        req: dict[str, int] = {"batch": batch, "expires": int(self.expires_s * 1e9)}
        if max_bytes:
            req["max_bytes"] = max_bytes
        return json.dumps(req).encode()

    def sent(self, batch: int) -> None:
        self._open.append([batch, time.monotonic()])
        self.messages += batch

    def delivered(self) -> bool:
        """A message of the oldest request arrived; True when that request is now fulfilled."""
        if not self._open:
            return False
        head = self._open[0]
        head[0] -= 1
        self.messages -= 1
        if head[0] <= 0:
            self._end_oldest()
            return True
        return False

    def ended(self) -> None:
        """A status (408/409) closed the oldest request; it delivers nothing more."""
        if self._open:
            self._end_oldest()

    def drop_expired(self) -> None:
        """Forget requests the server surely dropped (e.g. across a reconnect, no status came)."""
        limit = time.monotonic() - self.expires_s - 1.0
        while self._open and self._open[0][1] < limit:
            self._end_oldest()

    def _end_oldest(self) -> None:
        left = self._open.popleft()
        self.messages -= int(max(0, left[0]))


def status_of(msg: Msg) -> str | None:
    """The status of a pull-request status message (no reply subject, ``Status`` header)."""
    if msg.reply:
        return None
    headers = msg.headers or {}
    return headers.get("Status")


class PullConsumer:
    """Hands every message of a durable pull consumer to ``handler`` as soon as it arrives.

    At most ``max_messages`` are held at once (requested but not delivered, plus being handled);
    each ``handler`` task counts until it returns. The handler acks (or naks / terms) itself.
    """

    def __init__(self, nc: Any, stream: str, durable: str, handler: Callable[[Msg], Awaitable[None]], *,
                 max_messages: int = 256, expires_s: float = 5.0, api_prefix: str = JS_API_PREFIX,
                 on_error: Callable[[BaseException], None] | None = None) -> None:
        self.nc = nc
        self.handler = handler
        self.max_messages = max(1, max_messages)
        self.on_error = on_error
        self.requests = PullRequests(pull_subject(stream, durable, api_prefix), nc.new_inbox(), expires_s)
        self.handling = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._sub: Any = None
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.requests.inbox, cb=self._on_msg, pending_msgs_limit=-1,
                                            pending_bytes_limit=-1)
        self._loop_task = asyncio.create_task(self._request_loop(), name=f"pull:{self.requests.subject}")

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop asking for messages; wait up to ``drain_s`` for the handlers (the rest is cancelled:
        unacked, JetStream redelivers it)."""
        if self._loop_task is not None:
            await cancel_and_wait([self._loop_task])
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=drain_s)
            await cancel_and_wait(pending)

    async def _on_msg(self, msg: Msg) -> None:
        status = status_of(msg)
        if status is not None:
            if status in ENDING_STATUSES:
                self.requests.ended()
                self._wake.set()
            return
        if not msg.reply:
            return
        self.requests.delivered()
        self.handling += 1
        task = asyncio.create_task(self.handler(msg))
        self._tasks.add(task)
        task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.handling -= 1
        if not task.cancelled() and task.exception() is not None and self.on_error is not None:
            self.on_error(task.exception())  # type: ignore[arg-type]
        self._wake.set()

    async def _request_loop(self) -> None:
        requests = self.requests
        refill = max(1, self.max_messages // 2)  # ask again when half the window is free
        while True:
            requests.drop_expired()
            free = self.max_messages - requests.messages - self.handling
            # keep at least one request waiting, so a lone message is never held back
            if free >= refill or (free > 0 and len(requests) == 0):
                try:
                    await self.nc.publish(requests.subject, requests.body(free), reply=requests.inbox)
                    requests.sent(free)
                except Exception:  # noqa: BLE001 - disconnected: asked again once it reconnects
                    await asyncio.sleep(0.2)
                    continue
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=requests.expires_s / 2)
