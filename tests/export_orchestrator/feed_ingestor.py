"""The ingestor's side of feed control (``marketbus.contracts.feeds``) for the export API tests:
answers ``feeds.ctl.<vendor>`` and keeps the ``Feed`` records and their collection periods in
the real ``feeds`` KV bucket, validating instruments against a catalog as an ingestor does.

It stands in for the ingestors' own feed control, which lands on another branch (wt/feeds):
the export API only talks to the contract (the KV bucket and the request subject), so these
tests run unchanged against a real ingestor.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from marketbus.contracts import codec, feeds, streams
from marketbus.contracts.errors import ErrorReply
from marketbus.contracts.feeds import Feed, FeedCommand, FeedReply, Period


class FeedIngestor:
    def __init__(self, nc: Any, vendor: str, catalog: dict[str, tuple[str, str, str]]) -> None:
        self.nc = nc
        self.vendor = vendor
        self.catalog = catalog  # vendor instrument -> (venue, symbol, kind)
        self.kv: Any = None
        self.sub: Any = None
        self.commands: list[tuple[str, str]] = []

    async def start(self) -> FeedIngestor:
        self.kv = await streams.ensure_bucket(self.nc.jetstream(), streams.FEEDS)
        self.sub = await self.nc.subscribe(feeds.control(self.vendor), queue=feeds.ingestor_of(self.vendor), cb=self._on)
        return self

    async def stop(self) -> None:
        if self.sub is not None:
            await self.sub.unsubscribe()

    async def _on(self, msg: Any) -> None:
        cmd = codec.decode_as(msg.data, FeedCommand)
        self.commands.append((cmd.op, cmd.instrument))
        try:
            reply: Any = await self._apply(cmd)
        except LookupError as exc:
            reply = ErrorReply(code="not_found" if isinstance(exc, KeyError) else "bad_request", message=str(exc))
        await msg.respond(codec.encode(reply))

    async def _apply(self, cmd: FeedCommand) -> FeedReply:
        key = feeds.feed_key(cmd.vendor, cmd.instrument)
        now = time.time_ns() // 1000 * 1000
        try:
            entry = await self.kv.get(key)
            feed: Feed | None = codec.decode_as(entry.value, Feed)
        except Exception:
            feed = None
        if feed is None:
            if cmd.op != "add":
                raise KeyError(f"no feed {cmd.vendor} {cmd.instrument}")
            if cmd.instrument not in self.catalog:
                raise LookupError(f"{cmd.instrument} is not in the {cmd.vendor} catalog")
            venue, symbol, kind = self.catalog[cmd.instrument]
            feed = Feed(key=key, vendor=cmd.vendor, instrument=cmd.instrument, venue=venue, symbol=symbol,  # type: ignore[arg-type]
                        kind=kind, state="active", periods=[Period(start_ns=now)], created_ts=now, updated_ts=now,
                        updated_by=cmd.by)
            await self.kv.put(key, codec.encode(feed))
            return FeedReply(feed=feed, changed=True)
        target = {"add": "active", "resume": "active", "pause": "paused", "remove": "removed"}[cmd.op]
        if cmd.op == "resume" and feed.state == "removed":
            raise LookupError("a removed feed is added, not resumed")
        if feed.state == target:
            return FeedReply(feed=feed, changed=False)
        periods = list(feed.periods)
        if target == "active":
            periods.append(Period(start_ns=max(now, (periods[-1].end_ns or 0) if periods else 0)))
        elif feed.state == "active" and periods and periods[-1].end_ns is None:
            periods[-1] = Period(start_ns=periods[-1].start_ns, end_ns=max(now, periods[-1].start_ns + 1000))
        feed = msgspec.structs.replace(feed, state=target, periods=periods, updated_ts=now, updated_by=cmd.by)
        await self.kv.put(key, codec.encode(feed))
        return FeedReply(feed=feed, changed=True)
