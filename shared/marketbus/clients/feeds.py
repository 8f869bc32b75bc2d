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

import builtins
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from marketbus.contracts import codec
from marketbus.contracts import errors as codes
from marketbus.contracts import feeds as contract
from marketbus.contracts.feeds import Feed, FeedCommand, FeedReply
from marketbus.runtime import kv as kv_snapshot
from marketbus.runtime.kv import KvEntry

from .errors import RequestError, decode_reply, request


def decode_feed(data: bytes) -> Feed:
    return codec.decode_as(data, Feed)  # type: ignore[no-any-return]


class FeedClient:
    """Feed control over one NATS connection (``timeout`` for each request)."""

    def __init__(self, nc: Any, *, timeout: float = 10.0, by: str = "api") -> None:
        self.nc = nc
        self.timeout = timeout
        self.by = by
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
        """Every feed as it changes (first the current ones when ``initial``), until cancelled."""
        kv = await self.bucket()
        pattern = contract.vendor_filter(vendor) if vendor else ">"
        # changes only: what the bucket holds now ends at its last sequence, read before the watch
        # starts (not the watch's end marker, which can come before values already delivered:
        # see marketbus.runtime.kv)
        now = 0 if initial else (await self.nc.jetstream().stream_info(f"KV_{contract.BUCKET}")).state.last_seq
        watcher = await kv.watch(pattern, ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None or entry.revision <= now:
                    continue
                feed = _feed_of(entry)
                if feed is not None:
                    yield feed
        finally:
            await watcher.stop()

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
