"""The client of feed control: which instruments each ingestor collects, changed at runtime.

Reads come from the KV bucket ``feeds`` (the source of truth, readable while an ingestor is
down); changes are requests to the vendor's ingestor on ``feeds.ctl.<vendor>``, which validates
the instrument against the vendor's catalog (see :mod:`marketbus.contracts.feeds`)::

    feeds = FeedClient(nc)
    reply = await feeds.add("digitex", "FS:ETHUSD")       # FeedReply(feed=Feed(...), changed=True)
    await feeds.pause("digitex", "FS:ETHUSD")
    for feed in await feeds.list("digitex"):               # Feed records, by key
        print(feed.key, feed.state, feed.periods)
    async for feed in feeds.watch("digitex"):              # every change as it happens
        ...

A refusal raises :class:`~marketbus.clients.RequestError`: ``bad_request`` (an instrument the
vendor's catalog does not list, a bad vendor), ``not_found`` (no such feed), ``no_responders``
(the vendor's ingestor is not running), ``timeout``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from nats.js.api import DeliverPolicy
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from marketbus.contracts import codec
from marketbus.contracts import errors as codes
from marketbus.contracts import feeds as contract
from marketbus.contracts.feeds import Feed, FeedCommand, FeedReply
from marketbus.runtime import kv as kv_snapshot
from marketbus.runtime.kv import KvEntry

from .errors import RequestError, decode_reply, request

log = logging.getLogger("marketbus.clients.feeds")

# The watch's limits (FeedClient(..., watch_buffer=, watch_pending_msgs=, watch_pending_bytes=)).
# The subscription's callback only moves each change into the watch's buffer, so nats-py's pending
# queue stays near empty while the loop runs; its limits bound it when the loop is held up (a user
# that blocks it). Past either limit a change would be lost: the watch resyncs instead (below).
WATCH_BUFFER = 1024
"""Changes held for a slow user of :meth:`FeedClient.watch`, beyond the bucket's current values
(one per feed, read whole at the start and at each resync: the bucket is small). Past it the watch
stops buffering and resyncs."""
WATCH_PENDING_MSGS = 4096
"""nats-py's pending message limit on the watch's subscription (its default, 512k, is a memory
balloon); beyond it nats-py drops messages (SlowConsumerError to the connection's error callback).
It must stay above the number of feeds: a resync reads one value per key in a burst."""
WATCH_PENDING_BYTES = 16 * 1024 * 1024
"""nats-py's pending byte limit on the watch's subscription (its default: 256 MiB)."""
WATCH_CHECK_S = 5.0
"""A watch idle this long asks the server how many changes its consumer delivered: the last changes
of a burst that nats-py dropped show no gap in the ones after them (there are none)."""
WATCH_HEARTBEAT_S = 5.0
"""The watch consumer's idle heartbeat: nats-py recreates an ordered consumer that misses two."""

_DELETED = ("DEL", "PURGE")
_MARKER_REASON = "Nats-Marker-Reason"  # nats-server 2.11+'s own delete markers (TTL, max age)


class _Resync(Exception):
    """The watch missed or could not hold a change: it reads the bucket again."""


class _WatchFeed:
    """One ordered consumer on the feeds bucket, its changes in a buffer of at most ``limit`` (beyond
    the bucket's current values, which it starts with and holds whole: one per key).

    A change is never dropped silently: when the buffer is full (the user is slower than the
    changes) or a change did not reach the callback (nats-py dropped it past its pending limits:
    the consumer's delivery sequence jumps), the buffer ends with a resync marker."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.broken: str | None = None
        self.consumer: str | None = None
        self.delivered = 0
        self.reading_state = True  # the first messages: the last value of each key (until none is pending)
        self.sub: Any = None

    async def on_msg(self, msg: Any) -> None:
        if self.broken is not None:
            return
        meta = msg.metadata
        # an ordered consumer delivers 1, 2, 3... ; nats-py recreates it (a new name) from 1
        expected = self.delivered + 1 if meta.consumer == self.consumer else 1
        if meta.sequence.consumer != expected:
            self._break(f"change(s) lost before the watch saw them (delivery {meta.sequence.consumer}, "
                        f"expected {expected}): nats-py's pending limits overflowed (slow consumer)")
            return
        self.consumer, self.delivered = meta.consumer, meta.sequence.consumer
        if self.reading_state:  # the bucket's current values (one per key) are held whole: a resync ends
            self.reading_state = meta.num_pending > 0
        elif self.queue.qsize() >= self.limit:
            self._break(f"more than {self.limit} changes waiting for the watch's user (slow consumer)")
            return
        self.queue.put_nowait(msg)

    async def check(self) -> None:
        """When idle: whether the server delivered more than reached the callback (nats-py dropped
        the last changes of a burst; no later one shows the gap)."""
        if self.broken is not None or not self.queue.empty() or self.sub.pending_msgs:
            return
        try:
            info = await self.sub.consumer_info()
        except Exception as exc:
            log.debug("feeds watch: no consumer info (%s)", exc)
            return
        if info.name == self.consumer and info.delivered.consumer_seq > self.delivered:
            self._break(f"{info.delivered.consumer_seq - self.delivered} change(s) delivered but lost before the "
                        "watch saw them: nats-py's pending limits overflowed (slow consumer)")

    def _break(self, why: str) -> None:
        self.broken = why
        self.queue.put_nowait(None)  # after what is buffered: those changes are good, in order


def decode_feed(data: bytes) -> Feed:
    return codec.decode_as(data, Feed)  # type: ignore[no-any-return]


class FeedClient:
    """Feed control over one NATS connection (``timeout`` for each request)."""

    def __init__(self, nc: Any, *, timeout: float = 10.0, by: str = "api", watch_buffer: int = WATCH_BUFFER,
                 watch_pending_msgs: int = WATCH_PENDING_MSGS, watch_pending_bytes: int = WATCH_PENDING_BYTES) -> None:
        self.nc = nc
        self.timeout = timeout
        self.by = by
        self.watch_buffer = watch_buffer
        self.watch_pending_msgs = watch_pending_msgs
        self.watch_pending_bytes = watch_pending_bytes
        self.watch_resyncs = 0
        """How many times a watch of this client missed (or could not hold) changes and read the bucket again."""
        self._kv: Any = None

    async def bucket(self) -> Any:
        if self._kv is None:
            try:
                self._kv = await self.nc.jetstream().key_value(contract.BUCKET)
            except (BucketNotFoundError, NotFoundError):
                raise RequestError(codes.UNAVAILABLE, f"KV bucket {contract.BUCKET} not provisioned: "
                                   "run `marketbus provision`") from None
        return self._kv

    # --- reads ---------------------------------------------------------------------------------
    async def list(self, vendor: str | None = None, *, include_removed: bool = False) -> builtins.list[Feed]:
        """The feeds of ``vendor`` (every vendor when None), by key; removed ones only when asked."""
        vendors = [contract.check_vendor(vendor)] if vendor else list(contract.VENDORS)
        await self.bucket()
        out: builtins.list[Feed] = []
        for v in vendors:
            for entry in await self._latest(contract.vendor_filter(v)):
                feed = _feed_of(entry)
                if feed is not None and (include_removed or feed.state != "removed"):
                    out.append(feed)
        return sorted(out, key=lambda f: f.key)

    async def _latest(self, key_filter: str) -> builtins.list[KvEntry]:
        """The last value of every key matching ``key_filter`` (a complete read: not
        ``KeyValue.watch``, whose initial values can end early, see marketbus.runtime.kv)."""
        return await kv_snapshot.latest(self.nc.jetstream(), contract.BUCKET, key_filter, timeout=self.timeout)

    async def get(self, vendor: str, instrument: str) -> Feed:
        """The feed, or RequestError ``not_found``."""
        kv = await self.bucket()
        key = contract.feed_key(vendor, instrument)
        try:
            entry = await kv.get(key)
        except (KeyNotFoundError, NotFoundError):
            raise RequestError(codes.NOT_FOUND, f"no feed {vendor} {instrument}") from None
        feed = _feed_of(entry)
        if feed is None:
            raise RequestError(codes.NOT_FOUND, f"no feed {vendor} {instrument}")
        return feed

    async def watch(self, vendor: str | None = None, *, initial: bool = True) -> AsyncIterator[Feed]:
        """Every feed as it changes (first the current ones when ``initial``), until cancelled.

        A slow user misses no change: at most ``watch_buffer`` changes wait for it, and nats-py's
        pending limits on the subscription are ``watch_pending_msgs`` / ``watch_pending_bytes``.
        When a change could not be held (the buffer is full, or nats-py dropped one past its
        limits), the watch logs it, counts it (``watch_resyncs``) and reads the bucket again: each
        feed whose last value it has not given yet comes next (its latest value; the changes in
        between are gone from a resync, the state is not)."""
        await self.bucket()
        pattern = contract.vendor_filter(vendor) if vendor else ">"
        prefix = f"$KV.{contract.BUCKET}."
        js = self.nc.jetstream()
        # changes only: what the bucket holds now ends at its last sequence, read before the watch
        # starts (not the watch's end marker, which can come before values already delivered:
        # see marketbus.runtime.kv)
        now = 0 if initial else (await js.stream_info(f"KV_{contract.BUCKET}")).state.last_seq
        given: dict[str, int] = {}  # the revision of each key's value given last (a resync skips those)
        while True:
            watch = _WatchFeed(self.watch_buffer)
            watch.sub = await js.subscribe(
                prefix + pattern, stream=f"KV_{contract.BUCKET}", cb=watch.on_msg, ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, idle_heartbeat=WATCH_HEARTBEAT_S,
                inactive_threshold=5 * 60, pending_msgs_limit=self.watch_pending_msgs,
                pending_bytes_limit=self.watch_pending_bytes)
            try:
                while True:
                    try:
                        msg = await asyncio.wait_for(watch.queue.get(), WATCH_CHECK_S)
                    except TimeoutError:
                        await watch.check()
                        continue
                    if msg is None:
                        raise _Resync(watch.broken)
                    headers = msg.headers or {}
                    if headers.get("KV-Operation") in _DELETED or _MARKER_REASON in headers:
                        continue
                    key, revision = msg.subject[len(prefix):], msg.metadata.sequence.stream
                    if revision <= now or revision <= given.get(key, 0):
                        continue
                    given[key] = revision
                    feed = _feed_of(KvEntry(key, msg.data, revision))
                    if feed is not None:
                        yield feed
            except _Resync as why:
                self.watch_resyncs += 1
                log.warning("feeds watch (%s): %s; reading the bucket again (resync %d)", pattern, why,
                            self.watch_resyncs)
            finally:
                with contextlib.suppress(Exception):
                    await watch.sub.unsubscribe()

    # --- changes -------------------------------------------------------------------------------
    async def command(self, op: str, vendor: str, instrument: str) -> FeedReply:
        if op not in contract.FEED_OPS:
            raise ValueError(f"unknown feed operation {op!r}: one of {', '.join(contract.FEED_OPS)}")
        contract.check_vendor(vendor)
        contract.escape_instrument(instrument)  # ValueError when empty
        cmd = FeedCommand(op=op, vendor=vendor, instrument=instrument, by=self.by)  # type: ignore[arg-type]
        data = await request(self.nc, contract.control(vendor), codec.encode(cmd), timeout=self.timeout,
                             what=f"{vendor} ingestor")
        return decode_reply(data, FeedReply)

    async def add(self, vendor: str, instrument: str) -> FeedReply:
        """Start collecting ``instrument`` (validated against the vendor's catalog)."""
        return await self.command("add", vendor, instrument)

    async def remove(self, vendor: str, instrument: str) -> FeedReply:
        """Stop collecting it; its record (and periods) stay, state ``removed``."""
        return await self.command("remove", vendor, instrument)

    async def pause(self, vendor: str, instrument: str) -> FeedReply:
        return await self.command("pause", vendor, instrument)

    async def resume(self, vendor: str, instrument: str) -> FeedReply:
        return await self.command("resume", vendor, instrument)


def _feed_of(entry: Any) -> Feed | None:
    """The feed in a KV entry (None for a marker key, a deletion or an undecodable value)."""
    if not entry.value or entry.key.partition(".")[2].startswith("_"):
        return None
    try:
        return decode_feed(entry.value)
    except msgspec.DecodeError:
        return None
