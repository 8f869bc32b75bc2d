"""JetStream intake: raw nats-py pull requests into a callback subscription, batched writes,
acks after the batch is durable.

One :class:`StreamIntake` per stream (MD, REF, STATUS), each on a durable pull consumer shared
by every writer instance (JetStream splits the messages between them). Flow:

1. pull requests (``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``, ``batch`` messages,
   ``expires``) are answered into one inbox subscription; the stream sequence and delivery
   count come from the ack subject, so nothing is decoded on receipt;
2. every ``batch_max_wait_s`` (or ``batch_max_msgs`` messages, about ``batch_max_events`` events,
   ``batch_max_bytes`` bytes) the buffer is flushed:
   redeliveries already stored are dropped, the rest decoded (``schema.decode_messages``),
   undecodable ones dead-lettered, the rows written to the store (durably, atomically);
3. then, and only then, every message of the batch is acked (``+ACK``).

Failures (the consumer's policy: marketbus.contracts.consumers):

- the store is unavailable (PostgreSQL down, disk full: :func:`store_unavailable`): the batch is
  kept (``+WPI``) and written again with back-off until the store is back; meanwhile the writer
  reports itself unhealthy (``/healthz`` 503 with the reason). Nothing is acked, nothing lost;
- anything else (a value the store refuses): the batch is split in halves, each written on its
  own, down to the message(s) that fail; only those are dead-lettered (reason, payload,
  subject) and terminated (``+TERM``); an unexpected error (not a data error) on one message
  asks for a redelivery with the consumer's back-off instead, and is dead-lettered on the last;
- every message held longer than ``ack_wait / 2`` (buffered behind a slow write, or in a long
  write) is kept with ``+WPI``, so the ack wait can be short: the messages a killed writer held
  are redelivered to the others within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

import asyncpg
import msgspec
import pyarrow as pa

from marketbus.contracts.consumers import ConsumerSpec, bind_consumer
from marketbus.runtime import natsprivate
from marketbus.runtime.publisher import JetStreamPublisher
from marketbus.runtime.pull import ENDING_STATUSES, MaxDeliveriesWatch, PullRequests, fit_for_dead_letter, pull_subject
from marketbus.runtime.service import FeedTracker

from .intake_client import IntakeClient, status_of
from .metrics import HistoryMetrics
from .schema import Message, decode_messages
from .settings import HistoryWriterSettings
from .store import HistoryStore

_TYPE_HEADER = b"\r\nMarketbus-Type:"
_TYPE_HEADER_LEN = len(_TYPE_HEADER)
_TYPE_NAMES: dict[bytes, str] = {}  # raw header value -> type name (a few dozen kinds)

Item = tuple[Message, bytes, int]  # (message, ack subject, delivery count)

# errors that mean "the store cannot write now", not "this data cannot be written"
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # connection refused/reset, timeouts, ENOSPC, EIO (pyarrow's ArrowIOError is one)
    asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.PostgresSystemError,
    asyncpg.exceptions.TransactionRollbackError,
)
# errors that mean "this data cannot be stored": the message that raises it is dead-lettered at once
_BAD_DATA: tuple[type[BaseException], ...] = (
    ArithmeticError, ValueError, TypeError, UnicodeError, RecursionError, msgspec.MsgspecError, pa.ArrowException,
    asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
)


class SettleFailed(Exception):
    """Acking, terminating or dead-lettering failed (NATS is unreachable): nothing to split,
    the messages come back after the ack wait."""


def store_unavailable(exc: BaseException) -> bool:
    """True for an outage of the store (retry the same batch later), False for a data problem."""
    return isinstance(exc, _UNAVAILABLE)

class IntakeHost(Protocol):
    """What a :class:`StreamIntake` uses of the service that runs it (the history writer): the
    connections, the store, the service's loops, health and dead letters, nothing else."""

    settings: HistoryWriterSettings
    metrics: HistoryMetrics
    feeds: FeedTracker
    store: HistoryStore
    intake_nc: IntakeClient  # the intake connection: pull requests, replies, acks
    publisher: JetStreamPublisher | None

    @property
    def log(self) -> logging.Logger | logging.LoggerAdapter[Any]: ...

    @property
    def js(self) -> Any: ...  # JetStreamContext: consumer info and creation

    @property
    def nc(self) -> Any: ...  # the service's connection: max-deliveries advisories

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...

    def store_failed(self, reason: str) -> None: ...

    def store_recovered(self) -> None: ...

    async def dead_letter(self, source: str, reason: str, payload: bytes | str, subject: str | None = None) -> None: ...


def parse_ack_subject(reply: bytes) -> tuple[int, int]:
    """``$JS.ACK...`` -> (stream sequence, delivery count)."""
    tokens = reply.split(b".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[4])
    # v2: $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>[.<token>]
    return int(tokens[7]), int(tokens[6])


async def ack_all(nc: Any, replies: list[bytes], body: bytes = b"+ACK") -> None:
    """``+ACK`` (or ``body``: ``+WPI``, ``+TERM``) every message: one write of all the PUB commands
    (nats-py's per-call publish costs more than the acks themselves); falls back to ``publish`` (natsprivate)
    if the client changes."""
    if not replies:
        return
    if not natsprivate.fast_path(nc):
        for reply in replies:
            await nc.publish(reply.decode(), body)
        return
    head = b"PUB %s " + str(len(body)).encode() + b"\r\n" + body + b"\r\n"
    for i in range(0, len(replies), 4096):
        await natsprivate.write_frame(nc, b"".join([head % r for r in replies[i:i + 4096]]))
    await natsprivate.flush(nc)


async def nak(nc: Any, reply: bytes, delay_s: float) -> None:
    """Ask for a redelivery of one message after ``delay_s``."""
    await nc.publish(reply.decode(), b"-NAK " + msgspec.json.encode({"delay": int(delay_s * 1e9)}))


class Held:
    """Messages a flush holds (not yet acked), kept alive with ``+WPI`` while it works.

    Until a part of them is settled on its own (a dead letter, a split batch), they are the
    flush's list as given: the common flush, stored and acked whole, builds no index of 20k
    ack subjects."""

    def __init__(self, items: list[Item], since: float) -> None:
        self._all: list[Item] | None = items  # every one still held, in order
        self._left: dict[bytes, Item] = {}  # by ack subject (one per delivery), once a part is settled
        self.reset_at = since  # when their ack timers were last (re)started

    def __len__(self) -> int:
        return len(self._all) if self._all is not None else len(self._left)

    def replies(self) -> list[bytes]:
        if self._all is not None:
            return [reply for _, reply, _ in self._all]
        return list(self._left)

    def done(self, items: list[Item]) -> None:
        """``items`` (all still held) are settled."""
        if self._all is not None:
            if len(items) == len(self._all):  # all of them (items are distinct deliveries)
                self._all = []
                return
            self._left = {item[1]: item for item in self._all}
            self._all = None
        for item in items:
            self._left.pop(item[1], None)

    def remaining(self, items: list[Item]) -> list[Item]:
        if self._all is not None:
            return items if self._all else []  # nothing settled yet, or everything
        return [item for item in items if item[1] in self._left]


class StreamIntake:
    """The intake of one stream: pulls, buffers, flushes (module docstring)."""

    def __init__(self, service: IntakeHost, spec: ConsumerSpec) -> None:
        self.svc = service
        self.spec = spec
        self.stream = spec.stream
        self.durable = spec.durable
        self.filter_subject = spec.filter_subject
        s = service.settings
        self.pull_batch = s.pull_batch
        self.batch_max = s.batch_max_msgs
        self.batch_max_bytes = s.batch_max_bytes
        self._buffer_bytes = 0
        # events of batch envelopes, counted without decoding: their bytes, at the bytes per event
        # the last flushes decoded (a first guess until then)
        self.batch_max_events = s.batch_max_events
        self._bytes_per_event = 200.0
        self._batch_bytes = 0  # payload bytes of the buffered batch envelopes
        self._batch_bytes_max = int(self.batch_max_events * self._bytes_per_event)
        # flushes in flight: while one writes (in a thread, GIL released), the next decodes
        self._inflight = asyncio.Semaphore(max(1, s.flush_concurrency))
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._held: set[Held] = set()  # the messages of the flushes in flight
        self._stopped = False
        self.max_wait = s.batch_max_wait_s
        self._buffer: list[Item] = []
        self._first_at = 0.0
        self._buffer_reset_at = 0.0  # the buffered messages arrived or were last kept (+WPI) after this
        self._wake = asyncio.Event()
        self._pull_wake = asyncio.Event()
        self.pull_max_bytes = s.pull_max_bytes
        self._requests: PullRequests | None = None  # the outstanding pull requests of the inbox
        self._sub: Any = None
        self._watch: MaxDeliveriesWatch | None = None
        self._inbox = ""
        self.flushing = False
        self.stored = 0
        self.acked = 0
        self.duplicates = 0
        self.bad = 0
        self.retried = 0
        self.last_flush_ts = 0
        self._written_at = 0.0  # when the store last took a write (it works)

    # --- setup ------------------------------------------------------------------------------
    async def ensure_consumer(self) -> Any:
        return await bind_consumer(self.svc.js, self.spec)

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
        self.svc.spawn(self._progress_loop(), f"progress-{self.stream}")
        # a message every writer holding it crashed on (max_deliver times): dead-lettered, not lost silently
        self._watch = await MaxDeliveriesWatch(self.svc.nc, self.spec, self._dropped).start()

    async def _dropped(self, subject: str, payload: bytes, reason: str) -> None:
        await self._dead_letter([(Message(self.stream, 0, subject, payload, None), reason)])
        self.bad += 1

    async def stop(self) -> None:
        if self._watch is not None:
            await self._watch.stop()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        self._stopped = True
        tasks = list(self._flush_tasks)
        for task in tasks:  # unacked messages are redelivered (and de-duplicated)
            task.cancel()
        if tasks:  # before the store closes under them
            await asyncio.wait(tasks, timeout=5.0)

    # --- receive ----------------------------------------------------------------------------
    def _on_msg(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        """One delivered message, raw from the protocol parser (intake_client): no decoding here.
        The hot path of a single-event message: the ack subject and the type header are read
        inline (``parse_ack_subject``, ``header_value``), type names come from a small cache."""
        requests = self._requests
        assert requests is not None
        if not reply:
            # a pull status: 408 request expired, 409 max bytes reached / other end of a request
            if status_of(headers) in ENDING_STATUSES:
                requests.ended()
                self._pull_wake.set()
            return
        tokens = reply.split(b".")
        try:
            if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
                seq, delivered = int(tokens[5]), int(tokens[4])
            else:  # v2: $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<sseq>...
                seq, delivered = int(tokens[7]), int(tokens[6])
        except (ValueError, IndexError):
            return
        kind = None
        if headers:
            i = headers.find(_TYPE_HEADER)
            if i >= 0:
                i += _TYPE_HEADER_LEN
                raw = headers[i:headers.find(b"\r\n", i)]
                kind = _TYPE_NAMES.get(raw)
                if kind is None:
                    kind = raw.strip().decode("utf-8", "replace")
                    if len(_TYPE_NAMES) < 1024:
                        _TYPE_NAMES[raw] = kind
        buffer = self._buffer
        if not buffer:
            self._first_at = self._buffer_reset_at = time.monotonic()
        buffer.append((Message(self.stream, seq, subject.decode(), data, kind), reply, delivered))
        self._buffer_bytes += len(data)
        if kind == "batch":
            self._batch_bytes += len(data)
        if requests.delivered():  # that request is fulfilled (no status message follows)
            self._pull_wake.set()
        if len(buffer) >= self.batch_max or self._buffer_bytes >= self.batch_max_bytes or (
                self._batch_bytes >= self._batch_bytes_max):  # (self._full(), inline: the hot path)
            self._wake.set()

    def _full(self) -> bool:
        """The buffer holds a flush: ``batch_max_msgs`` messages, ``batch_max_bytes``, or about
        ``batch_max_events`` events of batch envelopes (estimated from their bytes)."""
        return (len(self._buffer) >= self.batch_max or self._buffer_bytes >= self.batch_max_bytes
                or self._batch_bytes >= self._batch_bytes_max)

    def _learn_event_size(self, msgs: list[Message], events: int) -> None:
        """The bytes per event of batch envelopes, from a decoded flush (a moving average)."""
        batch_bytes = batch_msgs = 0
        for m in msgs:
            if m.type == "batch":
                batch_bytes += len(m.data)
                batch_msgs += 1
        batch_events = events - (len(msgs) - batch_msgs)  # (single events count one each)
        if batch_bytes and batch_events > 0:
            size = min(max(batch_bytes / batch_events, 16.0), float(1 << 20))
            self._bytes_per_event = 0.5 * self._bytes_per_event + 0.5 * size
            self._batch_bytes_max = int(self.batch_max_events * self._bytes_per_event)

    async def _pull_loop(self) -> None:
        """Keep two pull requests outstanding (double buffering): the server never holds more
        than ``2 * pull_max_bytes`` for us, so it never flags this connection a slow consumer."""
        requests = self._requests
        assert requests is not None
        request = requests.body(self.pull_batch, self.pull_max_bytes)
        while True:
            requests.drop_expired()  # lost (a reconnect): asked again
            backlog = (len(self._buffer) >= 2 * self.batch_max or self._buffer_bytes >= 2 * self.batch_max_bytes
                       or self._batch_bytes >= 2 * self._batch_bytes_max)
            while not backlog and len(requests) < 2:
                try:
                    await self.nc.publish(requests.subject, request, reply=requests.inbox)
                except Exception:
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
            if not self._full() and age < self.max_wait:
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.max_wait - age)
                continue
            await self._inflight.acquire()  # at most flush_concurrency flushes at once
            if self._stopped:
                self._inflight.release()
                return
            since = self._buffer_reset_at  # every buffered message arrived or was kept alive since
            batch, self._buffer = self._buffer[: self.batch_max], self._buffer[self.batch_max:]
            self._buffer_bytes = sum(len(m.data) for m, _, _ in self._buffer) if self._buffer else 0
            self._batch_bytes = sum(len(m.data) for m, _, _ in self._buffer if m.type == "batch") if self._buffer else 0
            if self._buffer:
                self._first_at = time.monotonic()
            self._pull_wake.set()
            # concurrent flushes never store a message twice: each holds different messages, a
            # redelivery of an in-flight one is caught by the store (partition ids / ON CONFLICT)
            task = asyncio.create_task(self._flush_one(batch, since), name=f"flush-{self.stream}-batch")
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)

    async def _flush_one(self, batch: list[Item], since: float) -> None:
        held = Held(batch, since)
        self._held.add(held)
        try:
            await self.flush(batch, held)
        except Exception as exc:
            self.svc.log.error("flush of %d %s messages failed: %r (will be redelivered)", len(batch), self.stream, exc)
            self.svc.metrics.flush_errors.labels(self.stream).inc()
            await asyncio.sleep(1.0)
        finally:
            self._held.discard(held)
            self._inflight.release()

    @property
    def feed_name(self) -> str:
        return f"{self.svc.store.backend}/{self.stream}"

    async def _progress_loop(self) -> None:
        """``+WPI`` for every message held longer than the progress interval (buffered behind a
        slow or failing write, or in one), so that a short ack wait only ever expires for a dead writer."""
        every = self.spec.progress_interval
        while True:
            await asyncio.sleep(every / 4)
            now = time.monotonic()
            keep: list[bytes] = []
            if self._buffer and now - self._buffer_reset_at >= every:
                keep.extend(reply for _, reply, _ in self._buffer)
                self._buffer_reset_at = now
            for held in list(self._held):
                if len(held) and now - held.reset_at >= every:
                    keep.extend(held.replies())
                    held.reset_at = now
            if keep:
                with contextlib.suppress(Exception):  # disconnected: the ack wait decides
                    await ack_all(self.nc, keep, b"+WPI")

    async def flush(self, batch: list[Item], held: Held | None = None) -> None:
        """Store ``batch`` and settle every message of it: acked when stored (or already stored),
        dead-lettered + terminated when it cannot be stored; retried while the store is down."""
        held = held if held is not None else Held(batch, time.monotonic())
        svc = self.svc
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                await self._isolate(held.remaining(batch), held)
                break
            except Exception as exc:
                if not store_unavailable(exc):
                    raise
                attempt += 1
                delay = min(svc.settings.store_retry_max_s, 0.25 * 2 ** attempt)
                svc.store_failed(f"store unavailable: {type(exc).__name__}: {exc}")
                svc.log.warning(
                    "store unavailable (%s: %s): %d %s messages kept, retry %d in %.1f s",
                    type(exc).__name__,
                    exc,
                    len(held),
                    self.stream,
                    attempt,
                    delay,
                )
                svc.feeds.set_state(self.feed_name, "disconnected")
                svc.metrics.flush_errors.labels(self.stream).inc()
                await asyncio.sleep(delay)
        if attempt:
            svc.log.info("store available again: %s batch stored after %d retries", self.stream, attempt)
        if self._written_at >= started:  # (a batch with nothing to write says nothing about the store)
            svc.store_recovered()
        svc.metrics.flush_seconds.labels(self.stream).observe(time.monotonic() - started)
        svc.feeds.set_state(self.feed_name, "connected")

    async def _isolate(self, items: list[Item], held: Held) -> None:
        """Write ``items``; on a data error write each half on its own, down to the culprits.
        A store outage is raised (the caller retries what is still held)."""
        items = held.remaining(items)
        if not items:
            return
        try:
            await self._write(items, held)
            return
        except Exception as exc:
            if store_unavailable(exc) or isinstance(exc, SettleFailed):
                raise
            if not isinstance(exc, _BAD_DATA):
                if await self._retry_later(items, exc, held):
                    await self._isolate(items, held)  # what is left is on its last delivery: once more
                if not held.remaining(items):
                    return
            if len(items) == 1:
                await self._culprit(items[0], exc, held)
                return
            self.svc.log.warning("%s batch of %d failed (%s: %s): splitting it", self.stream, len(items),
                                 type(exc).__name__, str(exc)[:200])
        mid = len(items) // 2
        await self._isolate(items[:mid], held)
        await self._isolate(items[mid:], held)

    async def _retry_later(self, items: list[Item], exc: BaseException, held: Held) -> bool:
        """An error that says nothing about the data (a bug, a table gone): splitting the batch
        would only fail message by message. The messages go back with the back-off of their
        delivery (NAK with delay) and the writer reports the error; those on their last delivery
        stay, to be split and settled one by one. True when some went back and some stay."""
        spec = self.spec
        self.svc.store_failed(f"store error: {type(exc).__name__}: {exc}"[:500])
        later = [item for item in items if not spec.last_delivery(item[2])]
        if later:
            self.svc.log.warning("%s batch of %d failed (%s: %s): redelivered after the back-off", self.stream,
                                 len(later), type(exc).__name__, str(exc)[:200])
            by_delay: dict[float, list[bytes]] = {}
            for _, reply, delivered in later:
                by_delay.setdefault(spec.retry_delay(delivered), []).append(reply)
            for delay, replies in by_delay.items():
                body = b"-NAK " + msgspec.json.encode({"delay": int(delay * 1e9)})
                await self._settle(ack_all(self.nc, replies, body))
            held.done(later)
            self.retried += len(later)
        return bool(later) and bool(held.remaining(items))

    async def _culprit(self, item: Item, exc: BaseException, held: Held) -> None:
        """One message that cannot be written: dead-lettered when it is the data (or on its last
        delivery), else redelivered after the back-off."""
        msg, reply, delivered = item
        if isinstance(exc, _BAD_DATA) or self.spec.last_delivery(delivered):
            await self._dead_letter([(msg, f"not storable: {type(exc).__name__}: {exc}"[:1000])])
            await self._settle(ack_all(self.nc, [reply], b"+TERM"))
            self.bad += 1
            self.acked += 1
        else:
            self.svc.log.warning("%s seq %d failed on delivery %d (%r): redelivered later", self.stream, msg.seq,
                                 delivered, exc)
            await self._settle(nak(self.nc, reply, self.spec.retry_delay(delivered)))
            self.retried += 1
        held.done([item])

    @staticmethod
    async def _settle(action: Awaitable[None]) -> None:
        try:
            await action
        except Exception as exc:
            raise SettleFailed(repr(exc)) from exc

    async def _dead_letter(self, letters: list[tuple[Message, str]]) -> None:
        svc = self.svc
        for m, reason in letters:
            parts = m.subject.split(".")
            source = (
                parts[2]
                if len(parts) > 2 and parts[0] in ("md", "ref")
                else (parts[3] if len(parts) > 3 else "unknown")
            )
            payload, why = fit_for_dead_letter(m.data, reason, self.nc.max_payload)
            await self._settle(svc.dead_letter(source, why, payload, m.subject))
        if svc.publisher is not None:
            # the dead letters are stored before their messages are settled
            await self._settle(svc.publisher.flush())

    async def _write(self, batch: list[Item], held: Held) -> None:
        """One attempt: decode, dead-letter what does not decode, write the rest, ack them all."""
        svc = self.svc
        redelivered = [m.seq for m, _, d in batch if d > 1]
        skip: set[int] = set()
        if redelivered:
            skip = await svc.store.stored_seqs(self.stream, redelivered)
        msgs = [m for m, _, _ in batch if m.seq not in skip] if skip else [m for m, _, _ in batch]
        # in a worker thread: Arrow's JSON reader releases the GIL, so the receive loop keeps
        # taking in the next batch meanwhile (inline, a 20k-message decode stalls it ~100 ms)
        decoded = await asyncio.to_thread(decode_messages, msgs, self.stream)
        self._learn_event_size(msgs, decoded.events + len(decoded.bad))
        if decoded.bad:
            await self._dead_letter(decoded.bad)
            bad_seqs = {m.seq for m, _ in decoded.bad}
            undecodable = [item for item in batch if item[0].seq in bad_seqs]
            await self._settle(ack_all(self.nc, [reply for _, reply, _ in undecodable]))
            held.done(undecodable)
            self.acked += len(undecodable)
            self.bad += len(undecodable)
            batch = [item for item in batch if item[0].seq not in bad_seqs]
        result = None
        if decoded.events:
            result = await svc.store.write(self.stream, decoded)
            self._written_at = time.monotonic()
        if svc.settings.debug_ack_delay_s:
            await asyncio.sleep(svc.settings.debug_ack_delay_s)  # widen the written-but-not-acked window
        # durable: ack every message of the batch (stored, skipped as already stored)
        await self._settle(ack_all(self.nc, [reply for _, reply, _ in batch]))
        held.done(batch)
        self.acked += len(batch)
        rows = result.rows if result else 0
        dups = (result.duplicates if result else 0) + (sum(1 for m, _, _ in batch if m.seq in skip) if skip else 0)
        self.stored += rows
        self.duplicates += dups
        self.last_flush_ts = time.time_ns()
        m = svc.metrics
        m.events_stored.labels(self.stream).inc(rows)
        m.duplicates.labels(self.stream).inc(dups)
        m.messages_acked.labels(self.stream).inc(len(batch))
        svc.feeds.count(self.feed_name, rows)

    @property
    def buffered(self) -> int:
        return len(self._buffer)
