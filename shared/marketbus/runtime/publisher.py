"""Pipelined JetStream publishing on the raw nats-py client (the ingestors' hot path).

Publishes with a reply inbox and one wildcard subscription for the acks, so thousands of
messages are in flight at once (~100k msgs/s, vs ~5k/s when awaiting each ack). Every message
carries ``Nats-Msg-Id``; a publish that times out is re-sent with the same id, which JetStream
de-duplicates, so a retry never duplicates an event.

Transient failures are retried with back-off for ``retry_for_s`` (default 60 s): no ack in time,
an empty "no responders" reply (on a cluster: the stream has no leader for a moment) and a 503
JetStream error. Only after that does a message fail with :class:`PublishError`; meanwhile
:attr:`JetStreamPublisher.blocked` says why publishing is stuck, so a service can report it.
A failure is also remembered until the next :meth:`JetStreamPublisher.flush`, which raises it:
a caller that commits a cursor after ``flush()`` never commits past a lost event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient

from marketbus.contracts import codec, subjects
from marketbus.contracts.base import Event, MarketEvent
from marketbus.runtime import natsprivate


class PublishError(RuntimeError):
    pass


class TransientPublishError(PublishError):
    """Still failing for a transient reason (no stream leader, no responders, no ack) after the
    publisher's whole retry period: the bus is down or has no leader; retry later."""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, Any] | None = None


_ack_decoder = msgspec.json.Decoder(PubAck)
LATENCY_SAMPLE_EVERY = 16
# Longest a published message waits, within a burst that gives the event loop no turn, before the
# publisher yields one so the client's flusher writes it (bench/RESULTS.md, issue #16: without it,
# publish -> socket write p50 0.11-0.72 ms against 0.03-0.28 ms for a bare nats-py publish).
MAX_WRITE_DELAY_S = 0.0005


class _Group:
    """Messages acknowledged together: one future for all of them (no future per message)."""

    __slots__ = ("future", "last_ack", "remaining")

    def __init__(self, n: int, future: asyncio.Future[PubAck]) -> None:
        self.remaining = n
        self.future = future
        self.last_ack: PubAck | None = None

    def acked(self, ack: PubAck) -> None:
        self.remaining -= 1
        self.last_ack = ack
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(ack)

    def failed(self, error: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class _Pending:
    __slots__ = (
        "attempts",
        "first_sent_at",
        "future",
        "group",
        "header_block",
        "headers",
        "last_error",
        "payload",
        "retry_at",
        "sent_at",
        "subject",
    )

    def __init__(self, subject: str, payload: bytes, headers: dict[str, str] | None, future: asyncio.Future[PubAck],
                 header_block: bytes | None = None, group: _Group | None = None) -> None:
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.header_block = header_block
        self.future = future
        self.group = group
        self.sent_at = 0.0
        self.attempts = 0
        self.first_sent_at = 0.0
        self.retry_at = 0.0  # > 0: a transient failure; re-send at this time
        self.last_error = ""

    def resolve(self, ack: PubAck) -> None:
        if self.group is not None:
            self.group.acked(ack)
        elif not self.future.done():
            self.future.set_result(ack)

    def fail(self, error: Exception) -> None:
        if self.group is not None:
            self.group.failed(error)
        elif not self.future.done():
            self.future.set_exception(error)


_HEADER_PREFIX: dict[type, bytes] = {}
_ID_HEAD: dict[type, bytes] = {}  # the prefix + "Nats-Msg-Id: ": an event's header block is that + id + CRLF CRLF
_TAIL = b"\r\n\r\n"


def _prefix_of(event: Event) -> bytes:
    cls = type(event)
    prefix = _HEADER_PREFIX.get(cls)
    if prefix is None:
        static = {k: v for k, v in codec.headers_for(event, "").items() if k != codec.HEADER_MSG_ID}
        prefix = _HEADER_PREFIX[cls] = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in static.items())
        _ID_HEAD[cls] = prefix + b"Nats-Msg-Id: "
    return prefix


def header_block(event: Event, msg_id: str | None) -> bytes:
    """The encoded NATS header block of an event (what nats-py would build from the dict, but
    with the constant part encoded once per type: header encoding is the costliest part of a
    publish in nats-py)."""
    prefix = _prefix_of(event)
    if msg_id:
        return _ID_HEAD[type(event)] + msg_id.encode() + _TAIL
    return prefix + b"\r\n"


class EventWire:
    """What the publisher sends for market events: (subject, payload, header block) of each.

    The subject and the header block's constant head are computed once per instrument and kind
    (bounded cache), and looked up once per run of events of the same instrument (the normalizers
    give the events of a page the same ``source``/``venue``/``symbol`` objects: an identity check
    is enough to know the run goes on). The per-event work is the encoding, the id's header line
    and the tuple."""

    MAX_INSTRUMENTS = 10_000

    def __init__(self) -> None:
        self._parts: dict[tuple[type, str, str, str], tuple[str, bytes]] = {}
        self._by_symbol: dict[str, tuple[type, str, str, str, bytes]] = {}

    def _lookup(self, event: MarketEvent) -> tuple[str, bytes]:
        if len(self._parts) >= self.MAX_INSTRUMENTS:
            self._parts.clear()
        _prefix_of(event)
        parts = self._parts[(type(event), event.source, event.venue, event.symbol)] = (
            subjects.for_event(event), _ID_HEAD[type(event)])
        return parts

    def message(self, event: MarketEvent) -> tuple[str, bytes, bytes]:
        """(subject, payload, header block) of one event (``publish_event``). The last instrument
        of each symbol is looked up by the symbol alone (no key tuple), and its kind, source and
        venue checked by identity (a normalizer gives its events the same objects)."""
        last = self._by_symbol.get(event.symbol)
        if last is not None and last[0] is type(event) and last[1] is event.source and last[2] is event.venue:
            subject, head = last[3], last[4]
        else:
            parts = self._parts.get((type(event), event.source, event.venue, event.symbol))
            subject, head = self._lookup(event) if parts is None else parts
            if len(self._by_symbol) >= self.MAX_INSTRUMENTS:
                self._by_symbol.clear()
            self._by_symbol[event.symbol] = (type(event), event.source, event.venue, subject, head)
        return subject, _encode(event), head + event.id.encode() + _TAIL

    def messages(self, events: Iterable[MarketEvent]) -> Iterator[tuple[str, bytes, bytes]]:
        """``message(e) for e in events``, the hot path of ``publish_group`` (a generator: each
        payload is sent before the next is encoded, as the publisher does)."""
        encode, tail = _encode, _TAIL
        cls: type | None = None
        source = venue = symbol = subject = ""
        head = b""
        for event in events:
            if type(event) is not cls or event.symbol is not symbol or event.venue is not venue \
                    or event.source is not source:
                cls, source, venue, symbol = type(event), event.source, event.venue, event.symbol
                parts = self._parts.get((cls, source, venue, symbol))
                subject, head = self._lookup(event) if parts is None else parts
            yield subject, encode(event), head + event.id.encode() + tail


_encode = codec._encoder.encode


async def _last_of(futures: list[asyncio.Future[PubAck]]) -> PubAck:
    acks = await asyncio.gather(*futures)
    return acks[-1]


def _parse_header_block(block: bytes) -> dict[str, str]:
    lines = block.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if line)


class JetStreamPublisher:
    def __init__(self, nc: NatsClient, *, max_inflight: int = 8192, ack_timeout: float = 5.0,
                 retry_for_s: float = 60.0, latency_histogram: Any = None) -> None:
        self.nc = nc
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        self.retry_for_s = retry_for_s
        self.latency = latency_histogram
        self._pending: dict[str, _Pending] = {}
        self._room = asyncio.Event()  # set while fewer than max_inflight messages await their ack
        self._room.set()
        self._next = 0
        self._prefix = ""
        self._sub: Any = None
        self._sweeper: asyncio.Task[None] | None = None
        self.published = 0
        self.duplicates = 0
        self.retries = 0
        self.failed = 0  # messages given up on (their futures failed)
        self._acks = 0
        self._flush_kicked_at = 0.0  # when the client's flusher was last asked to write
        self._unreported: PublishError | None = None  # a message failed since the last flush()
        self._blocked_since: float | None = None
        self._blocked_reason = ""
        self._wire = EventWire()  # subjects and header heads per instrument

    async def start(self) -> JetStreamPublisher:
        self._loop = asyncio.get_running_loop()
        self._prefix = self.nc.new_inbox() + "."
        self._prefix_b = self._prefix.encode()
        self._sub = await self.nc.subscribe(
            self._prefix + "*", cb=self._on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        self._sweeper = asyncio.create_task(self._sweep())
        return self

    async def close(self) -> None:
        self._unreported = None  # whoever cared about a failure has seen its future
        await self.flush()
        if self._sweeper:
            self._sweeper.cancel()
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _on_ack(self, msg: Any) -> None:
        token = msg.subject[len(self._prefix):]
        pending = self._pending.pop(token, None)
        if pending is None:
            return  # a late ack of a message already re-sent and acked
        self._room.set()
        self._acks += 1
        if self.latency is not None and self._acks % LATENCY_SAMPLE_EVERY == 0:
            # a sample is enough for a histogram, and observing every ack costs ~10% at 100k msg/s
            self.latency.observe(time.monotonic() - pending.sent_at)
        if pending.future.done():
            return
        if not msg.data:
            # "no responders": no stream captured the subject, or (a cluster) the stream has no
            # leader for a moment. Both look the same: retry until retry_for_s, then fail.
            self._retry_later(token, pending, f"no stream for subject {pending.subject} (no responders)")
            return
        ack = _ack_decoder.decode(msg.data)
        if ack.error:
            if ack.error.get("code") == 503:  # JetStream temporarily unavailable (no leader)
                self._retry_later(token, pending, f"{pending.subject}: {ack.error}")
                return
            self._fail(pending, PublishError(f"{pending.subject}: {ack.error}"))
            return
        self._unblocked()
        self.published += 1
        if ack.duplicate:
            self.duplicates += 1
        pending.resolve(ack)

    def _fail(self, pending: _Pending, error: PublishError) -> None:
        self.failed += 1
        self._unreported = self._unreported or error
        pending.fail(error)
        if pending.future.done() and not pending.future.cancelled():
            # flush() reports it: no "Future exception was never retrieved" for fire-and-forget
            pending.future.exception()

    def _retry_later(self, token: str, pending: _Pending, reason: str) -> None:
        """A transient failure: back in the queue, re-sent by the sweeper after a back-off."""
        now = time.monotonic()
        if now - pending.first_sent_at >= self.retry_for_s:
            self._fail(pending, TransientPublishError(f"{reason}; still failing after {self.retry_for_s:.0f}s"))
            return
        self._pending[token] = pending
        if len(self._pending) >= self.max_inflight:
            self._room.clear()
        ceiling = min(2.0, 0.1 * 2 ** min(pending.attempts, 5))
        pending.retry_at = now + random.uniform(ceiling / 2, ceiling)
        pending.last_error = reason
        self._blocked(reason)

    def _blocked(self, reason: str) -> None:
        if self._blocked_since is None:
            self._blocked_since = time.monotonic()
        self._blocked_reason = reason

    def _unblocked(self) -> None:
        self._blocked_since = None
        self._blocked_reason = ""

    @property
    def blocked(self) -> str | None:
        """Why publishing is stuck (a transient failure or a message unacked for longer than
        ``ack_timeout``), or None while acks flow."""
        if self._blocked_since is not None:
            return self._blocked_reason
        now = time.monotonic()
        for pending in self._pending.values():  # the oldest first (insertion order)
            if pending.first_sent_at and now - pending.first_sent_at > self.ack_timeout:
                return f"no ack for {pending.subject} for {now - pending.first_sent_at:.0f}s"
            break
        return None

    async def _send(self, token: str, pending: _Pending) -> None:
        pending.attempts += 1
        pending.sent_at = time.monotonic()
        pending.retry_at = 0.0
        if not pending.first_sent_at:
            pending.first_sent_at = pending.sent_at
        nc = self.nc
        if pending.header_block is None or not natsprivate.fast_path(nc):
            # the public API (it also buffers while reconnecting)
            headers = pending.headers
            if headers is None and pending.header_block is not None:
                headers = _parse_header_block(pending.header_block)
            await nc.publish(pending.subject, pending.payload, reply=self._prefix + token, headers=headers)
            return
        # Fast path: an HPUB frame with a pre-encoded header block, queued like nats-py does it.
        hdr = pending.header_block
        payload = pending.payload
        cmd = b"HPUB %s %s%s %d %d\r\n%s%s\r\n" % (
            pending.subject.encode(), self._prefix_b, token.encode(), len(hdr), len(hdr) + len(payload), hdr, payload,
        )
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(payload)
        await natsprivate.write_frame(nc, cmd)  # nats-py's own publish path, minus header encoding
        if not natsprivate.flush_queued(nc):
            await natsprivate.flush(nc)
            self._flush_kicked_at = pending.sent_at
        elif pending.sent_at - self._flush_kicked_at > MAX_WRITE_DELAY_S:
            # The flusher was kicked but has not run: the caller publishes a burst without giving
            # the event loop a turn (e.g. frames that were late, handled back to back), and each
            # message would wait on the socket for the rest of the burst to be normalized and
            # encoded. One turn lets the flusher write what is queued.
            # (At most one turn per MAX_WRITE_DELAY_S: a flusher held up by the socket's back
            # pressure does not cost a turn per message.)
            await asyncio.sleep(0)
            self._flush_kicked_at = time.monotonic()
            if not natsprivate.flush_queued(nc):
                await natsprivate.flush(nc)

    async def _sweep(self) -> None:
        """Re-send messages whose ack did not come in time, and those a transient failure sent
        back (same Msg-Id: de-duplicated); fail those retried for ``retry_for_s``."""
        while True:
            await asyncio.sleep(min(0.25, self.ack_timeout / 4))
            now = time.monotonic()
            for token, pending in list(self._pending.items()):
                if pending.future.done():
                    continue
                expired = now - pending.first_sent_at >= self.retry_for_s
                if expired:
                    pass
                elif pending.retry_at:
                    if now < pending.retry_at:
                        continue
                elif now - pending.sent_at < self.ack_timeout:
                    continue
                else:
                    self._blocked(f"no ack for {pending.subject} within {self.ack_timeout:.0f}s")
                if expired:
                    self._pending.pop(token, None)
                    self._room.set()
                    reason = pending.last_error or f"no ack for {pending.subject}"
                    self._fail(pending, TransientPublishError(
                        f"{reason} after {pending.attempts} attempts in {self.retry_for_s:.0f}s"))
                    continue
                self.retries += 1
                try:
                    await self._send(token, pending)
                except Exception:
                    pending.sent_at = now

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None,
                      *, header_block_: bytes | None = None, group_: _Group | None = None) -> asyncio.Future[PubAck]:
        """Send one message; returns a future resolved by its ack (await it, or ``flush()``)."""
        while len(self._pending) >= self.max_inflight:
            self._room.clear()
            await self._room.wait()
        self._next += 1
        token = str(self._next)
        future: asyncio.Future[PubAck] = group_.future if group_ is not None else self._loop.create_future()
        pending = _Pending(subject, payload, headers, future, header_block_, group_)
        self._pending[token] = pending
        if len(payload) + len(header_block_ or b"") > (self.nc.max_payload or 1 << 20):
            # the server would refuse it (and close the connection): fail it now, never retry
            self._pending.pop(token, None)
            self._fail(
                pending, PublishError(f"{subject}: {len(payload)}-byte message exceeds the server's max payload")
            )
            return future
        with contextlib.suppress(Exception):
            await self._send(token, pending)
        return future

    async def publish_event(self, event: Event, subject: str | None = None) -> asyncio.Future[PubAck]:
        if subject is None:
            if not isinstance(event, MarketEvent):
                raise ValueError(f"a subject is needed for {type(event).__name__}")
            subject, payload, block = self._wire.message(event)
            return await self.publish(subject, payload, header_block_=block)
        return await self.publish(
            subject, codec.encode(event), header_block_=header_block(event, getattr(event, "id", None))
        )

    async def publish_group(self, events: list[MarketEvent]) -> asyncio.Future[PubAck]:
        """Publish events as single messages (one per event) acknowledged as a group: the
        returned future resolves when every one is acked. The hot path for one message per
        event: no future per message, the subject and header prefix computed once per instrument."""
        future: asyncio.Future[PubAck] = self._loop.create_future()
        if not events:
            future.set_result(PubAck())
            return future
        group = _Group(len(events), future)
        publish = self.publish
        for subject, payload, block in self._wire.messages(events):
            await publish(subject, payload, header_block_=block, group_=group)
        return future

    async def publish_batch(self, events: list[MarketEvent], replay: bool | None = None) -> asyncio.Future[PubAck]:
        """Publish events of one kind and instrument as batch envelopes.

        An envelope larger than the server's max payload is split in halves (recursively): the
        server would refuse it. The returned future resolves when every part is acked.
        """
        batch = codec.make_batch(events, replay)
        payload = codec.encode(batch)
        limit = (self.nc.max_payload or 1 << 20) - 1024  # room for the headers
        if len(payload) > limit and len(events) > 1:
            half = len(events) // 2
            parts = [await self.publish_batch(events[:half], replay), await self.publish_batch(events[half:], replay)]
            return asyncio.ensure_future(_last_of(parts))
        subject = subjects.for_event(events[0])
        return await self.publish(subject, payload, header_block_=header_block(batch, batch.id))

    @property
    def inflight(self) -> int:
        return len(self._pending)

    async def flush(self, timeout: float = 30.0) -> None:
        """Wait until every message sent so far is acked; raises the first publish error, including
        one of a message that failed since the previous flush (nobody else may have seen it)."""
        futures = list({id(p.future): p.future for p in self._pending.values()}.values())
        if futures:
            done, not_done = await asyncio.wait(futures, timeout=timeout)
            if not_done:
                reason = self.blocked or "no ack"
                raise TransientPublishError(f"{len(not_done)} messages not acked within {timeout}s: {reason}")
            for fut in done:
                if not fut.cancelled() and fut.exception():
                    self._unreported = None
                    raise fut.exception()  # type: ignore[misc]
        if self._unreported is not None:
            error, self._unreported = self._unreported, None
            raise error
