"""From a stored event's JSON to the message a live consumer receives, and where it goes.

History keeps each event's published JSON; only its head (type, id, instrument, ``ts_event``) is
decoded here, to build the subject and the headers: the payload goes out untouched. The header
block is the one the live publisher sends for a single event (``Marketbus-Schema``,
``Marketbus-Type``, ``Nats-Msg-Id``; see ``marketbus.runtime.publisher.header_block``), so a
replayed message equals the live one byte for byte.

A sink takes the messages of a session: :class:`NatsSink` publishes them (core NATS, many
``HPUB`` commands written at once), :class:`QueueSink` hands chunks of payloads to an HTTP or
WebSocket response.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import msgspec

from marketbus.contracts import codec, subjects
from marketbus.contracts.base import SCHEMA_VERSION
from marketbus.contracts.market import MARKET_TYPES
from marketbus.contracts.reference import REFERENCE_TYPES
from marketbus.contracts.replay import PlaybackEnd

NAMESPACE: dict[str, str] = {
    **{str(t.__struct_config__.tag): subjects.MD for t in MARKET_TYPES},
    **{str(t.__struct_config__.tag): subjects.REF for t in REFERENCE_TYPES},
}
"""Kinds a session replays and their namespace; other stored kinds (``feed_status``) are skipped."""


class Head(msgspec.Struct, gc=False):
    """The fields of a stored event that route it (the rest of the JSON is not decoded)."""

    type: str
    id: str = ""
    source: str = ""
    venue: str = ""
    symbol: str = ""
    ts_event: int = 0


decode_head = msgspec.json.Decoder(Head).decode


def live_subject(head: Head) -> str | None:
    """The subject the event was published on live (None for a kind that is not md/ref)."""
    ns = NAMESPACE.get(head.type)
    if ns is None:
        return None
    return f"{ns}.{head.type}.{head.source}.{head.venue}.{head.symbol}"


def header_prefix(kind: str) -> bytes:
    """The header block of a single event of ``kind`` up to its ``Nats-Msg-Id`` value."""
    return b"NATS/1.0\r\n%s: %d\r\n%s: %s\r\n%s: " % (
        codec.HEADER_SCHEMA.encode(), SCHEMA_VERSION, codec.HEADER_TYPE.encode(), kind.encode(),
        codec.HEADER_MSG_ID.encode())


def header_block(kind: str, msg_id: str) -> bytes:
    """The NATS header block of a single event of ``kind`` (what the live publisher sends)."""
    return b"%s%s\r\n\r\n" % (header_prefix(kind), msg_id.encode())


class Sink:
    """Where a session's messages go. ``add`` is synchronous (the hot loop), ``flush`` sends what
    was added (and waits when the receiver is slow: back-pressure for ``max``)."""

    def add(self, head: Head, subject: str, payload: Any) -> None:
        raise NotImplementedError

    def add_chunk(self, chunk: list[Any]) -> tuple[int, int | None]:
        """Route and add every event of a chunk (``max``, nothing to merge in): (events added,
        the last one's ``ts_event``); kinds that are not md/ref are left out."""
        n, last = 0, None
        for raw in chunk:
            head = decode_head(raw)
            subject = live_subject(head)
            if subject is not None:
                self.add(head, subject, raw)
                n += 1
                last = head.ts_event
        return n, last

    async def flush(self) -> None:
        raise NotImplementedError

    async def end(self, marker: PlaybackEnd) -> None:
        raise NotImplementedError


class NatsSink(Sink):
    """Core NATS publishing under ``prefix`` (replay subjects are outside every stream: no acks).

    Frames are joined and handed to nats-py's write buffer in one call per flush, which writes
    them when its buffer fills or at the next flush: the pipelined path at ``max``.
    """

    def __init__(self, nc: Any, prefix: str) -> None:
        self.nc = nc
        self.prefix = prefix
        self._subject_bytes: dict[str, bytes] = {}
        self._routes: dict[tuple[str, str, str, str], tuple[bytes, bytes]] = {}  # -> (HPUB + subject, headers)
        self._frames: list[bytes] = []
        self.sent = 0

    def add(self, head: Head, subject: str, payload: Any) -> None:
        subj = self._subject_bytes.get(subject)
        if subj is None:
            subj = self._subject_bytes[subject] = subjects.playback_data(self.prefix, subject).encode()
        hdr = header_block(head.type, head.id)
        self._frames.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (subj, len(hdr), len(hdr) + len(payload), hdr, payload))

    def add_chunk(self, chunk: list[Any]) -> tuple[int, int | None]:
        # the hot loop at max: the start of each frame is cached per instrument and kind
        frames, routes = self._frames, self._routes
        n, last = 0, None
        for raw in chunk:
            head = decode_head(raw)
            key = (head.type, head.source, head.venue, head.symbol)
            route = routes.get(key)
            if route is None:
                subject = live_subject(head)
                if subject is None:
                    continue
                route = routes[key] = (b"HPUB %s " % subjects.playback_data(self.prefix, subject).encode(),
                                       header_prefix(head.type))
            hpub, headers = route
            hdr = b"%s%s\r\n\r\n" % (headers, head.id.encode())
            frames.append(b"%s%d %d\r\n%s%s\r\n" % (hpub, len(hdr), len(hdr) + len(raw), hdr, raw))
            n += 1
            last = head.ts_event
        return n, last

    async def flush(self) -> None:
        frames, self._frames = self._frames, []
        if not frames:
            return
        nc = self.nc
        send = getattr(nc, "_send_command", None)
        if send is None or not nc.is_connected:  # the public API (buffers while reconnecting)
            for frame in frames:
                await _publish_frame(nc, frame)
            return
        nc.stats["out_msgs"] += len(frames)
        await send(b"".join(frames))
        await nc._flush_pending()
        self.sent += len(frames)

    async def end(self, marker: PlaybackEnd) -> None:
        await self.flush()
        with contextlib.suppress(Exception):
            await self.nc.publish(
                subjects.playback_end(self.prefix), codec.encode(marker), headers=codec.headers_for(marker)
            )
            await self.nc.flush(timeout=5)


async def _publish_frame(nc: Any, frame: bytes) -> None:
    """One HPUB frame through ``nc.publish`` (slow path, only when the fast one is unavailable)."""
    head, rest = frame.split(b"\r\n", 1)
    _, subject, hlen, _total = head.split(b" ")
    hdr, payload = rest[: int(hlen)], rest[int(hlen):-2]
    lines = hdr.decode().split("\r\n")[1:]
    headers = dict(line.split(": ", 1) for line in lines if line)
    await nc.publish(subject.decode(), payload, headers=headers)


class QueueSink(Sink):
    """Payload chunks into a bounded queue read by an HTTP/WebSocket response (``None`` ends it)."""

    def __init__(self, max_chunks: int = 16) -> None:
        self.queue: asyncio.Queue[list[bytes] | bytes | None] = asyncio.Queue(maxsize=max_chunks)
        self._items: list[bytes] = []
        self.sent = 0
        self.closed = False  # the reader went away: drop everything

    def add(self, head: Head, subject: str, payload: Any) -> None:
        self._items.append(bytes(payload))

    def close(self) -> None:
        self.closed = True

    async def flush(self) -> None:
        items, self._items = self._items, []
        if items and not self.closed:
            await self.queue.put(items)
            self.sent += len(items)

    async def end(self, marker: PlaybackEnd) -> None:
        await self.flush()
        if not self.closed:
            await self.queue.put(codec.encode(marker))
            await self.queue.put(None)
