"""Pipelined JetStream publishing for the one-message-per-event path (raw nats-py).

The runtime's :class:`~marketbus.runtime.publisher.JetStreamPublisher` costs a future, a header
dict encoded per message and a latency observation per ack; at one message per trade that
overhead is most of the budget. Here one call publishes a whole artifact's events on one subject:
the header block (``Marketbus-Schema``, ``Marketbus-Type``, ``Nats-Msg-Id``) is built from a
prefix shared by every message, the ``HPUB`` command is written straight into the client's
pending buffer (exactly what ``nc.publish`` does, minus the per-message header validation), and
acks are counted by one wildcard subscription. Messages not acked within ``ack_timeout`` are
re-sent with the same ``Nats-Msg-Id`` (JetStream de-duplicates them). Falls back to
``nc.publish`` whenever the client is not connected or lacks the internals used here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nats.aio.client import Client as NatsClient

from marketbus.contracts.base import SCHEMA_VERSION
from marketbus.contracts.codec import HEADER_MSG_ID, HEADER_SCHEMA, HEADER_TYPE


class PublishFailed(RuntimeError):
    pass


class _Call:
    __slots__ = ("remaining", "done", "errors")

    def __init__(self, n: int) -> None:
        self.remaining = n
        self.done = asyncio.Event()
        self.errors: list[str] = []


class _Entry:
    __slots__ = ("call", "subject", "hdr", "payload", "sent_at", "attempts")

    def __init__(self, call: _Call, subject: str, hdr: bytes, payload: bytes) -> None:
        self.call = call
        self.subject = subject
        self.hdr = hdr
        self.payload = payload
        self.sent_at = 0.0
        self.attempts = 1


class PipelinedPublisher:
    def __init__(self, nc: NatsClient, *, window: int = 16384, ack_timeout: float = 5.0, max_attempts: int = 5) -> None:
        self.nc = nc
        self.window = window
        self.ack_timeout = ack_timeout
        self.max_attempts = max_attempts
        self._slots = asyncio.Semaphore(window)
        self._pending: dict[str, _Entry] = {}
        self._prefix = ""
        self._next = 0
        self._sub: Any = None
        self._fast = all(hasattr(nc, name) for name in ("_send_command", "_flush_queue", "_flush_pending", "stats"))
        self.published = 0
        self.duplicates = 0

    async def start(self) -> PipelinedPublisher:
        self._prefix = self.nc.new_inbox() + "."
        self._sub = await self.nc.subscribe(self._prefix + "*", cb=self._on_ack, pending_msgs_limit=-1,
                                            pending_bytes_limit=-1)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection is already gone
                pass
            self._sub = None

    async def _on_ack(self, msg: Any) -> None:
        entry = self._pending.pop(msg.subject, None)
        if entry is None:
            return  # a late ack of a message re-sent and acked already
        self._slots.release()
        data = msg.data
        call = entry.call
        if not data:
            call.errors.append(f"no stream for subject {entry.subject}")
        elif b'"error"' in data:
            call.errors.append(f"{entry.subject}: {data[:200].decode(errors='replace')}")
        else:
            self.published += 1
            if b'"duplicate":true' in data:
                self.duplicates += 1
        call.remaining -= 1
        if call.remaining == 0:
            call.done.set()

    async def _send(self, subject: str, reply: str, hdr: bytes, payload: bytes) -> None:
        nc = self.nc
        if self._fast and nc.is_connected:
            cmd = b"HPUB %s %s %d %d\r\n%s%s\r\n" % (
                subject.encode(), reply.encode(), len(hdr), len(hdr) + len(payload), hdr, payload)
            nc.stats["out_msgs"] += 1
            nc.stats["out_bytes"] += len(payload)
            await nc._send_command(cmd)  # noqa: SLF001 - what nc.publish does after its validation
            if nc._flush_queue is not None and nc._flush_queue.empty():  # noqa: SLF001
                await nc._flush_pending()  # noqa: SLF001
            return
        headers = _parse_headers(hdr)
        await nc.publish(subject, payload, reply=reply, headers=headers)

    async def publish(self, subject: str, type_tag: str, messages: list[tuple[str, bytes]]) -> None:
        """Publish ``(msg_id, payload)`` pairs on ``subject``; returns once every one is acked.
        Raises :class:`PublishFailed` on a JetStream error or when acks never come."""
        await self.wait(await self.send(subject, type_tag, messages))

    async def send(self, subject: str, type_tag: str, messages: list[tuple[str, bytes]]) -> _Call:
        """Send without waiting for the acks (only for a free slot in the window); :meth:`wait` them."""
        call = _Call(len(messages))
        if not messages:
            call.done.set()
            return call
        head = (f"NATS/1.0\r\n{HEADER_SCHEMA}: {SCHEMA_VERSION}\r\n{HEADER_TYPE}: {type_tag}\r\n"
                f"{HEADER_MSG_ID}: ").encode()
        prefix = self._prefix
        pending = self._pending
        acquire = self._slots.acquire
        send = self._send
        now = time.monotonic
        for msg_id, payload in messages:
            await acquire()
            self._next += 1
            reply = f"{prefix}{self._next}"
            entry = _Entry(call, subject, head + msg_id.encode() + b"\r\n\r\n", payload)
            entry.sent_at = now()
            pending[reply] = entry
            try:
                await send(subject, reply, entry.hdr, payload)
            except Exception:  # noqa: BLE001 - disconnected: re-sent once the ack is overdue
                entry.sent_at = 0.0
        return call

    async def wait(self, call: _Call) -> None:
        while not call.done.is_set():
            try:
                await asyncio.wait_for(call.done.wait(), self.ack_timeout)
            except TimeoutError:
                await self._resend(call)
        if call.errors:
            raise PublishFailed(f"{len(call.errors)} publishes failed, e.g. {call.errors[0]}")

    async def _resend(self, call: _Call) -> None:
        overdue = [(reply, e) for reply, e in self._pending.items()
                   if e.call is call and time.monotonic() - e.sent_at >= self.ack_timeout]
        for reply, entry in overdue:
            if entry.attempts >= self.max_attempts:
                for r, e in list(self._pending.items()):
                    if e.call is call:
                        del self._pending[r]
                        self._slots.release()
                raise PublishFailed(f"no ack for {entry.subject} after {entry.attempts} attempts")
            entry.attempts += 1
            entry.sent_at = time.monotonic()
            try:
                await self._send(entry.subject, reply, entry.hdr, entry.payload)
            except Exception:  # noqa: BLE001 - still disconnected: the next round retries
                entry.sent_at = 0.0


def _parse_headers(hdr: bytes) -> dict[str, str]:
    lines = hdr.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if ": " in line)
