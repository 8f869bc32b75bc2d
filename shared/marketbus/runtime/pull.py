"""Continuous delivery from a durable JetStream pull consumer.

``PullSubscription.fetch(n, timeout)`` (nats-py) returns once ``n`` messages arrived or the
timeout passed, so a message that arrives alone waits for the batch. Newer NATS clients have
``consume()``: pull requests are kept outstanding on one inbox and each message is handed over
as it arrives. :class:`PullRequests` is that bookkeeping (what each outstanding request may still
deliver, when it expires); :class:`PullConsumer` puts it together with an inbox subscription and
a bound on the messages held (requested + being handled), for services that handle messages one
by one (the order router). The history writer uses :class:`PullRequests` with its raw inbox.

:class:`PullConsumer` also applies the redelivery policy of its :class:`ConsumerSpec`
(contracts/consumers.py), so no handler can stall its consumer: a handler still running keeps its
message with ``+WPI``; a handler that raises gets its message redelivered after the spec's
back-off (``NAK`` with delay) and, on the last delivery, dead-lettered with the reason and
terminated (``+TERM``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

from marketbus.contracts.consumers import ConsumerSpec

from .tasks import cancel_and_wait

log = logging.getLogger("marketbus.runtime.pull")

DeadLetter = Callable[[Msg, str], Awaitable[None]]

JS_API_PREFIX = "$JS.API"


def pull_subject(stream: str, durable: str, api_prefix: str = JS_API_PREFIX) -> str:
    """The JetStream API subject a pull request for ``durable`` of ``stream`` is published to."""
    return f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"


# Statuses that end a pull request: 408 expired, 409 max bytes/waiting exceeded, leadership change,
# consumer deleted; 404 is "no messages" (only for no_wait requests, never sent here).
ENDING_STATUSES = frozenset({"404", "408", "409"})


def fit_for_dead_letter(payload: bytes, reason: str, max_payload: int) -> tuple[bytes, str]:
    """The payload and reason to dead-letter so that the letter still fits in one message: a
    :class:`DeadLetter` carries the payload base64-encoded (4/3 larger), so a payload near the
    server's max_payload is cut to half of it, and the reason says so."""
    limit = max(1024, max_payload // 2)
    if len(payload) <= limit:
        return payload, reason
    return payload[:limit], f"{reason} (payload cut to its first {limit} of {len(payload)} bytes)"


MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"
# (subject, payload, reason) of a message the server gave up on
DroppedHandler = Callable[[str, bytes, str], Awaitable[None]]


class MaxDeliveriesWatch:
    """Dead-letters what the server stopped delivering without anyone settling it.

    A handler that fails settles its message itself (NAK with back-off, dead letter + TERM on the
    last delivery). A message that never gets settled (its consumer crashed or hung, every
    time) is delivered ``max_deliver`` times and then silently skipped by the server, which only
    publishes an advisory; this watch turns the advisory into a dead letter (the message is read
    back from the stream by its sequence). One instance of a shared consumer handles each
    advisory (queue group)."""

    def __init__(self, nc: Any, spec: ConsumerSpec, on_dropped: DroppedHandler) -> None:
        self.nc = nc
        self.spec = spec
        self.on_dropped = on_dropped
        self.subject = MAX_DELIVERIES_ADVISORY.format(stream=spec.stream, durable=spec.durable)
        self.dropped = 0
        self._sub: Any = None

    async def start(self) -> MaxDeliveriesWatch:
        self._sub = await self.nc.subscribe(self.subject, queue=f"{self.spec.durable}-max-deliveries",
                                            cb=self._on_advisory)
        return self

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_advisory(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            deliveries = advisory.get("deliveries", self.spec.max_deliver)
            stored = await self.nc.jetstream().get_msg(self.spec.stream, seq)
            reason = (f"delivered {deliveries} times, never settled (its consumer crashed or hung each time): "
                      f"{self.spec.stream} seq {seq}")
            await self.on_dropped(stored.subject or "", stored.data or b"", reason)
            self.dropped += 1
        except Exception as exc:
            log.error("could not dead-letter a message the server gave up on (%s): %r", msg.data[:200], exc)


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
    each ``handler`` task counts until it returns. The handler acks (or naks / terms) itself; if
    it raises, the consumer's policy (``spec``) applies: a redelivery after the back-off, or on
    the last delivery ``dead_letter(msg, reason)`` and ``+TERM``. Without ``dead_letter`` the
    message is logged and terminated. Without ``spec`` the default policy of
    :class:`ConsumerSpec` is used. ``on_dropped(subject, payload, reason)`` gets what the server
    stopped delivering unsettled (:class:`MaxDeliveriesWatch`).
    """

    def __init__(self, nc: Any, stream: str, durable: str, handler: Callable[[Msg], Awaitable[None]], *,
                 max_messages: int = 256, expires_s: float = 5.0, api_prefix: str = JS_API_PREFIX,
                 on_error: Callable[[BaseException], None] | None = None, spec: ConsumerSpec | None = None,
                 dead_letter: DeadLetter | None = None, on_dropped: DroppedHandler | None = None) -> None:
        self.nc = nc
        self.handler = handler
        self.max_messages = max(1, max_messages)
        self.on_error = on_error
        self.spec = spec if spec is not None else ConsumerSpec(stream, durable, "")
        self.dead_letter = dead_letter
        # what the server gives up on (never settled: crashes, hangs) -> on_dropped (a dead letter)
        self.watch = MaxDeliveriesWatch(nc, self.spec, on_dropped) if on_dropped is not None else None
        self.requests = PullRequests(pull_subject(stream, durable, api_prefix), nc.new_inbox(), expires_s)
        self.handling = 0
        self.dead_lettered = 0
        self.retried = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # id(message being handled) -> [message, when its ack timer was last reset]
        self._held: dict[int, list[Any]] = {}
        self._wake = asyncio.Event()
        self._sub: Any = None
        self._loop_task: asyncio.Task[None] | None = None
        self._progress_task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, nc: Any, spec: ConsumerSpec, handler: Callable[[Msg], Awaitable[None]], **kw: Any) -> PullConsumer:
        """The consumer of ``spec`` (stream, durable and policy from the spec)."""
        return cls(nc, spec.stream, spec.durable, handler, spec=spec, **kw)

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.requests.inbox, cb=self._on_msg, pending_msgs_limit=-1,
                                            pending_bytes_limit=-1)
        self._loop_task = asyncio.create_task(self._request_loop(), name=f"pull:{self.requests.subject}")
        self._progress_task = asyncio.create_task(self._progress_loop(), name=f"wpi:{self.requests.subject}")
        if self.watch is not None:
            await self.watch.start()

    async def stop(self, drain_s: float = 5.0) -> None:
        """Stop asking for messages; wait up to ``drain_s`` for the handlers (the rest is cancelled:
        unacked, JetStream redelivers it)."""
        await cancel_and_wait([t for t in (self._loop_task, self._progress_task) if t is not None])
        if self.watch is not None:
            await self.watch.stop()
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
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._handled)

    async def _handle(self, msg: Msg) -> None:
        self._held[id(msg)] = [msg, time.monotonic()]
        try:
            await self.handler(msg)
        except Exception as exc:
            if not msg.is_acked:
                await self._failed(msg, exc)
            raise
        finally:
            self._held.pop(id(msg), None)

    async def _failed(self, msg: Msg, exc: BaseException) -> None:
        """The handler raised: redeliver after the back-off, or dead-letter on the last delivery."""
        try:
            delivered = msg.metadata.num_delivered
        except Exception:
            return
        spec = self.spec
        try:
            if not spec.last_delivery(delivered):
                self.retried += 1
                await msg.nak(delay=spec.retry_delay(delivered))
                return
            reason = f"failed on each of {delivered} deliveries, last: {exc!r}"[:1000]
            if self.dead_letter is not None:
                await self.dead_letter(msg, reason)  # (a service's dead_letter fits the payload: fit_for_dead_letter)
            else:
                log.error("terminating a message of %s: %s", msg.subject, reason)
            self.dead_lettered += 1
            await msg.term()
        except Exception as settle_exc:
            log.warning("could not settle a failed message of %s: %r", msg.subject, settle_exc)

    async def _progress_loop(self) -> None:
        """``+WPI`` for every message handled longer than the spec's progress interval."""
        every = self.spec.progress_interval
        while True:
            await asyncio.sleep(every / 2)
            now = time.monotonic()
            for held in list(self._held.values()):
                msg, since = held
                if now - since >= every and not msg.is_acked:
                    with contextlib.suppress(Exception):  # disconnected: nothing to keep
                        await msg.in_progress()
                    held[1] = now

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
                except Exception:
                    await asyncio.sleep(0.2)
                    continue
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=requests.expires_s / 2)
