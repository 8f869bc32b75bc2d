"""JetStream intake: raw nats-py pull requests into a callback subscription, batched writes,
acks after the batch is durable.

One :class:`StreamIntake` per stream (MD, REF, STATUS), each on a durable pull consumer shared
by every writer instance (JetStream splits the messages between them). Flow:

1. pull requests (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``, ``batch`` messages,
   ``expires``) are answered into one inbox subscription; the stream sequence and delivery
   count come from the ack subject, so nothing is decoded on receipt;
2. every ``batch_max_wait_s`` (or ``batch_max_msgs`` messages) the buffer is flushed:
   redeliveries already stored are dropped, the rest decoded (``schema.decode_messages``),
   undecodable ones dead-lettered, the rows written to the store (durably, atomically);
3. then, and only then, every message of the batch is acked (``+ACK``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

from marketbus.runtime.pull import ENDING_STATUSES, PullRequests, pull_subject

from .intake_client import header_value, status_of
from .schema import Message, decode_messages

_TYPE_HEADER = b"\r\nMarketbus-Type:"

if TYPE_CHECKING:
    from .app import HistoryWriter


def parse_ack_subject(reply: bytes) -> tuple[int, int]:
    """``$JS.ACK...`` -> (stream sequence, delivery count)."""
    tokens = reply.split(b".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[4])
    # v2: $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    return int(tokens[7]), int(tokens[6])


async def ack_all(nc: Any, replies: list[bytes]) -> None:
    """``+ACK`` every message: one write of all the PUB commands (nats-py's per-call publish
    costs more than the acks themselves); falls back to ``publish`` if the client changes."""
    send = getattr(nc, "_send_command", None)
    if send is None or not nc.is_connected:
        for reply in replies:
            await nc.publish(reply.decode(), b"+ACK")
        return
    for i in range(0, len(replies), 4096):
        await send(b"".join([b"PUB %s 4\r\n+ACK\r\n" % r for r in replies[i:i + 4096]]))
    await nc._flush_pending()


class StreamIntake:
    def __init__(self, service: HistoryWriter, stream: str, durable: str, filter_subject: str | None) -> None:
        self.svc = service
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        s = service.settings
        self.pull_batch = s.pull_batch
        self.batch_max = s.batch_max_msgs
        self.batch_max_bytes = s.batch_max_bytes
        self._buffer_bytes = 0
        # flushes in flight: while one writes (in a thread, GIL released), the next decodes
        self._inflight = asyncio.Semaphore(max(1, s.flush_concurrency))
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._stopped = False
        self.max_wait = s.batch_max_wait_s
        self._buffer: list[tuple[Message, bytes, int]] = []  # (message, ack subject, delivered)
        self._first_at = 0.0
        self._wake = asyncio.Event()
        self._pull_wake = asyncio.Event()
        self.pull_max_bytes = s.pull_max_bytes
        self._requests: PullRequests | None = None  # the outstanding pull requests of the inbox
        self._sub: Any = None
        self._inbox = ""
        self.flushing = False
        self.stored = 0
        self.acked = 0
        self.duplicates = 0
        self.bad = 0
        self.last_flush_ts = 0

    # --- setup ------------------------------------------------------------------------------
    async def ensure_consumer(self) -> Any:
        s = self.svc.settings
        config = ConsumerConfig(
            durable_name=self.durable, deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait_s, max_deliver=-1, max_ack_pending=s.max_ack_pending,
            filter_subject=self.filter_subject, max_waiting=512,
            description="marketbus history writer (durable, shared by every writer instance)",
        )
        js = self.svc.js
        with contextlib.suppress(NotFoundError):  # provisioned: bind (a service may not create it)
            return await js.consumer_info(self.stream, self.durable)
        try:
            return await js.add_consumer(self.stream, config)
        except BadRequestError:
            with contextlib.suppress(NotFoundError):
                return await js.consumer_info(self.stream, self.durable)
            raise

    async def start(self) -> None:
        info = await self.ensure_consumer()
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        await self.svc.store.prepare_stream(self.stream, floor or 0)
        nc = self.nc = self.svc.intake_nc  # the intake connection: pull requests, replies, acks
        self._inbox = nc.new_inbox()
        self._requests = PullRequests(pull_subject(self.stream, self.durable), self._inbox, expires_s=2.0)
        self._sub = await nc.subscribe_raw(self._inbox, self._on_msg)
        self.svc.spawn(self._pull_loop(), f"pull-{self.stream}")
        self.svc.spawn(self._flush_loop(), f"flush-{self.stream}")

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        self._stopped = True
        for task in list(self._flush_tasks):  # unacked messages are redelivered (and de-duplicated)
            task.cancel()

    # --- receive ----------------------------------------------------------------------------
    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """One delivered message, raw from the protocol parser (intake_client): no decoding here."""
        now = time.monotonic()
        requests = self._requests
        assert requests is not None
        if not reply:
            # a pull status: 408 request expired, 409 max bytes reached / other end of a request
            if status_of(headers) in ENDING_STATUSES:
                requests.ended()
                self._pull_wake.set()
            return
        try:
            seq, delivered = parse_ack_subject(reply)
        except (ValueError, IndexError):
            return
        if not self._buffer:
            self._first_at = now
        self._buffer.append((Message(self.stream, seq, subject.decode(), data, header_value(headers, _TYPE_HEADER)),
                             reply, delivered))
        self._buffer_bytes += len(data)
        if requests.delivered():  # that request is fulfilled (no status message follows)
            self._pull_wake.set()
        if len(self._buffer) >= self.batch_max or self._buffer_bytes >= self.batch_max_bytes:
            self._wake.set()

    async def _pull_loop(self) -> None:
        """Keep two pull requests outstanding (double buffering): the server never holds more
        than ``2 * pull_max_bytes`` for us, so it never flags this connection a slow consumer."""
        requests = self._requests
        assert requests is not None
        request = requests.body(self.pull_batch, self.pull_max_bytes)
        while True:
            requests.drop_expired()  # lost (a reconnect): asked again
            backlog = len(self._buffer) >= 2 * self.batch_max or self._buffer_bytes >= 2 * self.batch_max_bytes
            while not backlog and len(requests) < 2:
                try:
                    await self.nc.publish(requests.subject, request, reply=requests.inbox)
                except Exception:  # noqa: BLE001 - disconnected: retried below
                    break
                requests.sent(self.pull_batch)
            self._pull_wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._pull_wake.wait(), timeout=0.05 if backlog else 0.5)

    # --- flush ------------------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        while True:
            if not self._buffer:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.max_wait)
                continue
            age = time.monotonic() - self._first_at
            if len(self._buffer) < self.batch_max and self._buffer_bytes < self.batch_max_bytes and age < self.max_wait:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.max_wait - age)
                continue
            await self._inflight.acquire()  # at most flush_concurrency flushes at once
            if self._stopped:
                self._inflight.release()
                return
            batch, self._buffer = self._buffer[: self.batch_max], self._buffer[self.batch_max:]
            self._buffer_bytes = sum(len(m.data) for m, _, _ in self._buffer) if self._buffer else 0
            if self._buffer:
                self._first_at = time.monotonic()
            self._pull_wake.set()
            # concurrent flushes never store a message twice: each holds different messages, a
            # redelivery of an in-flight one is caught by the store (partition ids / ON CONFLICT)
            task = asyncio.create_task(self._flush_one(batch), name=f"flush-{self.stream}-batch")
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)

    async def _flush_one(self, batch: list[tuple[Message, bytes, int]]) -> None:
        try:
            await self.flush(batch)
        except Exception as exc:  # noqa: BLE001 - not acked: redelivered after ack_wait
            self.svc.log.error("flush of %d %s messages failed: %r (will be redelivered)", len(batch), self.stream, exc)
            self.svc.feeds.set_state(self.feed_name, "disconnected")
            self.svc.metrics.flush_errors.labels(self.stream).inc()
            await asyncio.sleep(1.0)
        finally:
            self._inflight.release()

    @property
    def feed_name(self) -> str:
        return f"{self.svc.store.backend}/{self.stream}"

    async def flush(self, batch: list[tuple[Message, bytes, int]]) -> None:
        svc = self.svc
        started = time.monotonic()
        redelivered = [m.seq for m, _, d in batch if d > 1]
        skip: set[int] = set()
        if redelivered:
            skip = await svc.store.stored_seqs(self.stream, redelivered)
        msgs = [m for m, _, _ in batch if m.seq not in skip]
        # in a worker thread: Arrow's JSON reader releases the GIL, so the receive loop keeps
        # taking in the next batch meanwhile (inline, a 20k-message decode stalls it ~100 ms)
        decoded = await asyncio.to_thread(decode_messages, msgs, self.stream)
        for m, reason in decoded.bad:
            parts = m.subject.split(".")
            source = parts[2] if len(parts) > 2 and parts[0] in ("md", "ref") else (parts[3] if len(parts) > 3 else "unknown")
            await svc.dead_letter(source, reason, m.data, m.subject)
        if decoded.bad:
            if svc.publisher is not None:
                await svc.publisher.flush()  # the dead letters are stored before their messages are acked
            bad_seqs = {m.seq for m, _ in decoded.bad}
            await ack_all(self.nc, [reply for m, reply, _ in batch if m.seq in bad_seqs])
            batch = [item for item in batch if item[0].seq not in bad_seqs]
        if decoded.events:
            result = await svc.store.write(self.stream, decoded)
        else:
            result = None
        if svc.settings.debug_ack_delay_s:
            await asyncio.sleep(svc.settings.debug_ack_delay_s)  # widen the written-but-not-acked window
        # durable: ack every message of the batch (stored, skipped as already stored, dead-lettered)
        await ack_all(self.nc, [reply for _, reply, _ in batch])
        self.acked += len(batch) + len(decoded.bad)
        self.bad += len(decoded.bad)
        rows = result.rows if result else 0
        dups = (result.duplicates if result else 0) + sum(1 for m, _, _ in batch if m.seq in skip)
        self.stored += rows
        self.duplicates += dups
        self.last_flush_ts = time.time_ns()
        m = svc.metrics
        m.events_stored.labels(self.stream).inc(rows)
        m.duplicates.labels(self.stream).inc(dups)
        m.messages_acked.labels(self.stream).inc(len(batch))
        m.flush_seconds.labels(self.stream).observe(time.monotonic() - started)
        svc.feeds.count(self.feed_name, rows)
        svc.feeds.set_state(self.feed_name, "connected")

    @property
    def buffered(self) -> int:
        return len(self._buffer)
