"""Gap tracking: an interruption of a feed becomes a ``gap`` status (with its time range), and
the recovery a ``resynced`` status once the missing range was back-filled.

    tracker = GapTracker(service, "digitex", venue="DIGITEX", symbol="BTCUSD-PERP", kind="trade")
    tracker.interrupted()                      # an outage began (the time is noted once)
    ...
    await tracker.report(last_ts_ns, detail="API outage")        # -> gap status, if interrupted
    ...back-fill...
    await tracker.resynced(detail="back-filled from recent_trades")  # -> resynced status
    await tracker.lost((a, b), "ids beyond the depth")           # a gap that cannot be filled

Status events go through :meth:`Service.publish_feed_status` (``status.<service>.feed...``).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from marketbus.contracts.status import FeedState


class FeedStatusPublisher(Protocol):
    async def publish_feed_status(
        self, source: str, state: FeedState, *, venue: str = ..., symbol: str = ...,
        kind: str | None = ..., detail: str | None = ..., gap: tuple[int, int] | None = ...,
        feed: str | None = ...,
    ) -> None: ...


class GapTracker:
    def __init__(self, service: FeedStatusPublisher, source: str, *, venue: str, symbol: str,
                 kind: str | None = None, feed: str | None = None) -> None:
        self.service = service
        self.source = source
        self._where: dict[str, Any] = {"venue": venue, "symbol": symbol, "kind": kind}
        if feed is not None:
            self._where["feed"] = feed
        self.since_ns: int | None = None  # the interruption began then (None: no interruption)
        self.open_gap: tuple[int, int] | None = None  # reported, not resynced yet

    @property
    def interrupted_now(self) -> bool:
        return self.since_ns is not None

    def interrupted(self, at_ns: int | None = None) -> None:
        """Note that the feed stopped (the first call of an outage counts)."""
        if self.since_ns is None:
            self.since_ns = at_ns if at_ns is not None else time.time_ns()

    async def report(self, last_good_ns: int | None, end_ns: int | None = None,
                     detail: str | None = None) -> tuple[int, int] | None:
        """If interrupted, publish the ``gap`` from the last good event (or the interruption's
        start) to ``end_ns`` (now) and return it; it stays open until :meth:`resynced` (a new
        interruption before that extends it: the reported gap starts where the open one did)."""
        if self.since_ns is None:
            return None
        start = last_good_ns if last_good_ns is not None else self.since_ns
        if self.open_gap is not None:  # not resynced yet: the gap grows, it does not restart
            start = min(start, self.open_gap[0])
        gap = (start, end_ns if end_ns is not None else time.time_ns())
        self.since_ns = None
        self.open_gap = gap
        await self.service.publish_feed_status(self.source, "gap", gap=gap, detail=detail, **self._where)
        return gap

    def forget(self) -> None:
        """The interruption needs no report (nothing was published before it: nothing is missing)."""
        self.since_ns = None

    async def resynced(self, detail: str | None = None) -> tuple[int, int] | None:
        """The open gap was back-filled: publish ``resynced`` (nothing if no gap is open)."""
        gap, self.open_gap = self.open_gap, None
        if gap is not None:
            await self.service.publish_feed_status(self.source, "resynced", gap=gap, detail=detail, **self._where)
        return gap

    async def lost(self, gap: tuple[int, int], detail: str) -> None:
        """A gap that cannot be back-filled (beyond the vendor's depth): reported, never resynced."""
        self.since_ns = None
        self.open_gap = None
        await self.service.publish_feed_status(self.source, "gap", gap=gap, detail=detail, **self._where)
